"""Lightning's loggers, with the epoch-level curves drawn against the epoch and runs named by what they vary.

Lightning writes what a LightningModule logs at its count of training fetches (with blocks of several
batches a fetch, data.steps_per_fetch, not even the optimizer steps). What the Tagger logs through
Lightning is epoch-level (val/*, test/*, train/*_epoch, train/lr) and carries the epoch it describes
(`epoch`, 1 after the first: Tagger.log_epoch); these loggers write it at step = that epoch, so a
curve reads per epoch whatever the batch size or block, as the report's figures do. The step loss
(train/loss_step) comes with its optimizer step.

Names (docs/dashboards.md): a sweep's job is named by its overrides of the keys the sweep varies
(`model=fc,init=xavier`, `run_name`), a single run by its experiment (or the task). TensorBoard names a
run by its folder under --logdir, so a sweep job's events go into `<sweep dir>/<name>/` (`tensorboard_dir`,
with a JOB file naming the job's dir), a single run's into `<run dir>/tensorboard/<name>/`; MLflow gets
the same name as its run name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pytorch_lightning import loggers
from pytorch_lightning.utilities import rank_zero_only

JOB_FILE = "JOB"  # in a sweep's TensorBoard folder: the job dir it belongs to, relative to the sweep dir


class EpochAxis:
    """A logger whose metrics that carry an `epoch` are written at step = that epoch."""

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if "epoch" in metrics:
            metrics = dict(metrics)
            step = int(metrics.pop("epoch"))
        super().log_metrics(metrics, step)


# ---- names
def _parsed(lines) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(lines))


def sweep_space(sweep_dir: str | os.PathLike) -> dict[str, list[str] | None]:
    """What a sweep varies, from the multirun.yaml Hydra's sweepers (and aer's Optuna one) write into the
    sweep dir: key -> its values as override strings (None for an interval: no list of values)."""
    from omegaconf import OmegaConf

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return {}
    cfg = OmegaConf.load(path)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
    space: dict[str, list[str] | None] = {}
    for o in _parsed(lines):
        if o.is_sweep_override():
            try:
                space[o.key_or_group] = list(o.sweep_string_iterator())
            except Exception:  # noqa: BLE001 — an interval (Optuna's float ranges) lists no values
                space[o.key_or_group] = None
    return space


def swept() -> dict[str, list[str] | None]:
    """What the multirun this job belongs to varies (sweep_space); nothing outside one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    return sweep_space(HydraConfig.get().sweep.dir)


def run_name(default: str) -> str:
    """This job's name: in a multirun its overrides of the keys the sweep varies, as given (`model=fc,init=xavier`;
    `job N` when it varies none); else the experiment it runs (experiment=NAME), else `default`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return default
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        space = swept()
        varied = [o.input_line for o in _parsed(hc.overrides.task) if o.key_or_group in space]
        return ",".join(varied) or f"job {hc.job.num}"
    return hc.runtime.choices.get("experiment") or default


def tensorboard_dir(output_dir: str, default: str) -> str:
    """Where this run's TensorBoard events go: `<sweep dir>/<run_name>` for a sweep's job (that folder is
    the job's: claimed with a JOB file naming its dir; a name another job holds gets ` (job N)` after it),
    else `<output_dir>/tensorboard/<run_name>`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    name = run_name(default).replace(os.sep, "_")
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return str(Path(output_dir) / "tensorboard" / name)
    hc = HydraConfig.get()
    sweep = Path(hc.sweep.dir)
    job = Path(hc.runtime.output_dir).resolve().relative_to(sweep.resolve()).as_posix()
    for folder in (sweep / name, sweep / f"{name} (job {hc.job.num})"):
        try:
            folder.mkdir(parents=True)
            (folder / JOB_FILE).write_text(job + "\n")
            return str(folder)
        except FileExistsError:
            if job_of(folder) == job:  # this job's own (resolved again, or resumed)
                return str(folder)
    raise ValueError(f"{sweep / name}: held by job {job_of(sweep / name)} and another: give a new hydra.sweep.dir")


def job_of(folder: Path) -> str | None:
    """The job dir (relative to its sweep dir) that a sweep's TensorBoard folder belongs to."""
    try:
        return (folder / JOB_FILE).read_text().strip()
    except OSError:
        return None


# ---- TensorBoard's HParams tab
def _hparams_summary(tag: str, **plugin_data):
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **plugin_data)
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)])


def hparams_experiment(hparams: dict, varied: dict[str, list[str] | None], metrics: list[str]):
    """The HParams tab's config: in a sweep a column a key it varies, outside one a column a key of `hparams`
    (flat, each value a str, a bool or a number, the same kind in every run), then the `metrics`' columns in
    their order; string and bool keys with their values (varied: all the sweep's). A sweep's other keys are
    the same in all its runs, and TensorBoard ticks only the first five columns: so the metrics come next."""
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    infos = []
    for key in [k for k in hparams if k in varied] if varied else hparams:
        value = hparams[key]
        info = api_pb2.HParamInfo(name=key, differs=key in varied)
        if isinstance(value, bool):
            info.type = api_pb2.DATA_TYPE_BOOL
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[struct_pb2.Value(bool_value=b)
                                                                       for b in (False, True)]))
        elif isinstance(value, (int, float)):
            info.type = api_pb2.DATA_TYPE_FLOAT64
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            values = list(dict.fromkeys([*(varied.get(key) or []), str(value)]))
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[struct_pb2.Value(string_value=v)
                                                                       for v in values]))
        infos.append(info)
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=[hp.Metric(m).as_proto() for m in metrics],
                                    time_created_secs=time.time())
    return _hparams_summary("_hparams_/experiment", experiment=experiment)


class TensorBoardLogger(EpochAxis, loggers.TensorBoardLogger):
    """Lightning's, with the HParams tab's config and sessions written by `declare` (no placeholder metric
    values: Lightning's log_hyperparams(params, metrics) writes the metrics' given values as points)."""

    @rank_zero_only  # as Lightning's log_hyperparams: DDP's other ranks write nothing
    def declare(self, hparams: dict, varied: dict, metrics: list[str]) -> None:
        """The run's hyper-parameters (hparams.yaml, and the HParams tab's session) and the tab's config."""
        from tensorboard.plugins.hparams import summary_v2 as hp

        super().log_hyperparams(hparams)  # hparams.yaml only (default_hp_metric=false: no metric)
        self.write_summaries(hparams_experiment(hparams, varied, metrics),
                             hp.hparams_pb(hparams, trial_id=Path(self.log_dir).name, start_time_secs=time.time()))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status == "success" and self.declared and not self.ended:  # fit's end (test or validate may follow)
            self.ended = True
            from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

            end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
            self.write_summaries(_hparams_summary("_hparams_/session_end_info", session_end_info=end))
        super().finalize(status)

    declared = ended = False

    def write_summaries(self, *summaries) -> None:
        """Summaries into the run's one event file, through the writer's public file writer (as torch's own
        add_hparams does): a second file beside it would be skipped by TensorBoard's live reload."""
        for s in summaries:
            self.experiment.file_writer.add_summary(s, 0)
        self.declared = True


class CSVLogger(EpochAxis, loggers.CSVLogger):
    pass


def check_tracking_server(uri: str) -> None:
    """An http(s) MLflow tracking URI must answer as a tracking server (its /health), else one line naming it:
    MLflow's client would retry for minutes and fail in the middle of training."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            if r.status == 200:
                return
            problem = f"HTTP {r.status} at {url}"
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code} at {url}: not an MLflow tracking server, or the wrong path"
    except (OSError, ValueError) as e:
        problem = f"{getattr(e, 'reason', None) or e}"
    raise ValueError(f"logger.mlflow.tracking_uri={uri}: no MLflow tracking server answers there ({problem}): "
                     f"start one (mlflow server --host HOST --port PORT) or keep the default sqlite:/// store")


class MLFlowLogger(EpochAxis, loggers.MLFlowLogger):
    """Lightning's; a tracking server that does not answer is refused before training (check_tracking_server)."""

    def __init__(self, *args, tracking_uri: str | None = None, **kwargs) -> None:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri and uri.startswith(("http://", "https://")):
            check_tracking_server(uri)
        super().__init__(*args, tracking_uri=tracking_uri or uri, **kwargs)

    @property
    def experiment(self):
        """Lightning's, when another process (a worker of the same study, on one tracking server) created the
        experiment between this one's lookup and its own create: then it is found by name."""
        from mlflow.exceptions import MlflowException

        try:
            return super().experiment
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return super().experiment


class WandbLogger(EpochAxis, loggers.WandbLogger):
    pass

"""The `logger` group: tensorboard (default), csv, mlflow, wandb (offline) and several at once; what
they store is read back with their own readers (MLflow's client, TensorBoard's event reader)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from aer.train import run
from conftest import compose_cfg, config, train_overrides


@pytest.mark.parametrize("overrides,keys", [([], ["tensorboard"]), (["logger=[tensorboard,mlflow]"],
                                                                     ["tensorboard", "mlflow"]),
                                            (["logger=many"], ["tensorboard", "csv", "mlflow"]),
                                            (["logger=wandb"], ["wandb"]), (["~logger"], None)])
def test_logger_choices_compose(overrides, keys, tmp_path):
    cfg = compose_cfg("train", [f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", *overrides])
    assert (list(cfg.logger) if cfg.get("logger") else None) == keys


def _csv_series(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def _tensorboard_series(run_dir: Path, key: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    ea = EventAccumulator(str(run_dir / "tensorboard" / "train"), size_guidance={SCALARS: 0})  # named by the task
    ea.Reload()
    points = ea.Scalars(key)
    assert [e.step for e in points] == list(range(1, len(points) + 1))  # one a epoch, from 1: nothing made up
    return [e.value for e in points]


def _mlflow_run(log_dir: Path):
    mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed: pip install -e '.[track]'")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{log_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return out


@pytest.mark.slow  # MLflow's store and three epochs
def test_many_loggers_store_the_same_val_map_series(demo_root, tmp_path):
    pytest.importorskip("mlflow", reason="MLflow is not installed: pip install -e '.[track]'")
    out = tmp_path / "run"
    result = run(config("train", train_overrides(demo_root, out, "logger=many", f"paths.log_dir={tmp_path}",
                                                      "trainer.max_epochs=3")))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 == result["epochs"]

    client, mlrun = _mlflow_run(tmp_path)
    ml = [m.value for m in sorted(client.get_metric_history(mlrun.info.run_id, "val/mAP"), key=lambda m: m.step)]
    series = {"mlflow": ml, "csv": _csv_series(out, "val/mAP"), "tensorboard": _tensorboard_series(out, "val/mAP")}
    for name, values in series.items():
        assert len(values) == metrics["epochs"], (name, values)
        assert values[-1] == pytest.approx(metrics["val/mAP"], abs=1e-6), name
        assert values == pytest.approx(series["csv"], abs=1e-6), name  # tensorboard stores float32
    assert max(ml) == pytest.approx(metrics["val/mAP_best"], abs=1e-6)

    params = mlrun.data.params
    assert (params["model"], params["optim.lr"], params["data.batch_size"]) == ("fc", "0.001", "100")
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["run_dir"] == str(out)
    assert mlrun.info.run_name == "train"  # as TensorBoard names it: the task, outside a sweep or experiment
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt"} <= set(_artifacts(client, mlrun.info.run_id))


def _service_log(run_log: Path) -> str:
    """The tail of the W&B service's own account of a run, read only when a check on the run fails."""
    internal = run_log.parent / "logs" / "debug-internal.log"
    return internal.read_text()[-2000:] if internal.exists() else f"no {internal}"


@pytest.mark.slow  # wandb runs a service process
def test_wandb_offline_writes_each_run_its_own_log(demo_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed: pip install -e '.[track]'")
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache")):
        monkeypatch.setenv(var, str(tmp_path / sub))  # wandb's own settings and caches, off the home dir
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # wandb and pytest would both redirect stdout
    logs = []
    for name in ("a", "b"):  # two runs in one process, as a sweep's jobs: the first must not absorb the second
        out = tmp_path / name
        run(config("train", train_overrides(demo_root, out, "logger=wandb")))
        found = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(found) == 1, found
        logs.append(found[0])
    assert logs[0].name != logs[1].name
    for path in logs:
        data = path.read_bytes()
        assert data.startswith(b":W&B")  # wandb's transaction log; its records hold the logged keys
        assert b"val/mAP" in data and b"optim.lr" in data, (path, len(data), _service_log(path))


def _hparams_plugin_data(tb: Path) -> tuple[dict, set]:
    """(tag -> the HParams plugin's data, the scalar tags) of a run's event files, read with TensorBoard's parsers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    ea = EventAccumulator(str(tb))
    ea.Reload()
    out = {}
    for tag, content in ea.PluginTagToContent(metadata.PLUGIN_NAME).items():
        parse = {metadata.EXPERIMENT_TAG: metadata.parse_experiment_plugin_data,
                 metadata.SESSION_START_INFO_TAG: metadata.parse_session_start_info_plugin_data,
                 metadata.SESSION_END_INFO_TAG: metadata.parse_session_end_info_plugin_data}[tag]
        out[tag] = parse(content)
    return out, set(ea.Tags()["scalars"])


def test_hparams_tab_declares_metrics_without_values(trained_run):
    from tensorboard.plugins.hparams import api_pb2, metadata

    data, scalars = _hparams_plugin_data(trained_run / "tensorboard" / "train")
    exp = data[metadata.EXPERIMENT_TAG]
    # the split it scored (dev mode: val), main metrics first; no test/* where no test split was scored
    assert [m.name.tag for m in exp.metric_infos] == ["val/mAP", "val/mAUC", "val/dprime", "val/loss",
                                                      "train/loss_epoch"]
    assert not any(t.startswith("test/") for t in scalars) and "hp_metric" not in scalars
    infos = {h.name: h for h in exp.hparam_infos}
    assert infos["model"].type == api_pb2.DATA_TYPE_STRING and list(infos["model"].domain_discrete) == ["fc"]
    assert infos["model.hidden"].type == api_pb2.DATA_TYPE_STRING  # a list: text, as for every network
    assert infos["optim.lr"].type == api_pb2.DATA_TYPE_FLOAT64 and not any(h.differs for h in infos.values())
    start = data[metadata.SESSION_START_INFO_TAG]
    assert start.hparams["model"].string_value == "fc" and start.hparams["model.hidden"].string_value == "[500]"
    assert data[metadata.SESSION_END_INFO_TAG].status == api_pb2.STATUS_SUCCESS


def test_a_sweeps_hparams_columns_are_the_keys_it_varies_then_the_metrics():
    from tensorboard.plugins.hparams import metadata

    from aer.loggers import hparams_experiment

    hparams = {"augment.mixup_alpha": 0.0, "init": "xavier", "model": "fc", "data.batch_size": 100}
    summary = hparams_experiment(hparams, {"init": ["xavier", "kaiming"], "data.batch_size": None}, ["val/mAP"])
    exp = metadata.parse_experiment_plugin_data(summary.value[0].metadata.plugin_data.content)
    assert [h.name for h in exp.hparam_infos] == ["init", "data.batch_size"]
    assert all(h.differs for h in exp.hparam_infos)
    assert [v.string_value for v in exp.hparam_infos[0].domain_discrete.values] == ["xavier", "kaiming"]
    alone = metadata.parse_experiment_plugin_data(hparams_experiment(hparams, {}, ["val/mAP"]).value[0].metadata
                                                  .plugin_data.content)
    assert [h.name for h in alone.hparam_infos] == list(hparams)  # a single run: every key


def test_dashboard_values_have_one_kind_per_key_across_networks(demo_root, tmp_path):
    from aer.train import hparams_for_dashboard

    fc = hparams_for_dashboard(config("train", train_overrides(demo_root, tmp_path, "model=fc")))
    lstm = hparams_for_dashboard(config("train", train_overrides(demo_root, tmp_path, "model=skiplstm")))
    assert (fc["model.hidden"], lstm["model.hidden"]) == ("[500]", "128")  # an int for skiplstm, a list for fc
    assert isinstance(fc["optim.lr"], float) and isinstance(lstm["model.bidirectional"], bool)
    assert isinstance(fc["model.dropout"], float) and isinstance(lstm["model.dropout"], float)


def test_a_tracking_server_that_does_not_answer_is_one_line_naming_it(tmp_path):
    import http.server
    import socket
    import threading

    from aer.loggers import check_tracking_server

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ValueError, match=rf"^logger.mlflow.tracking_uri=http://127.0.0.1:{port}: no MLflow tracking "
                                         r"server answers there \(.*refused\)"):
        check_tracking_server(f"http://127.0.0.1:{port}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)  # not MLflow
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/mlflow"
    try:
        with pytest.raises(ValueError, match=f"HTTP 404 at {url}/health: not an MLflow tracking server"):
            check_tracking_server(url)
    finally:
        server.shutdown()


@pytest.fixture
def sweep_job(tmp_path):
    """Makes this process look like job `num` of a multirun `model=fc,skiplstm init=xavier,kaiming` (Hydra's
    own config of a job, with the multirun.yaml its sweeper writes); undone after."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from conftest import CONF

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose(config_name="train", overrides=["model=fc", "init=xavier"], return_hydra_config=True)
    multirun = OmegaConf.create({"hydra": {"overrides": {"task": ["model=fc,skiplstm", "init=xavier,kaiming",
                                                                  "seed=3"]}}})
    OmegaConf.save(multirun, sweep / "multirun.yaml")

    def job(num: int, overrides: list[str]):
        cfg = base.copy()
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = str(sweep)
            cfg.hydra.runtime.output_dir = str(sweep / str(num))
            cfg.hydra.job.num = num
            cfg.hydra.overrides.task = overrides
        HydraConfig.instance().set_config(cfg)
        return sweep

    yield job
    HydraConfig.instance().cfg = None


def test_a_sweep_job_is_named_by_what_the_sweep_varies_in_a_folder_of_its_own(sweep_job):
    from aer.loggers import run_name, swept, tensorboard_dir

    sweep = sweep_job(0, ["model=fc", "init=xavier", "seed=3"])
    assert swept() == {"model": ["fc", "skiplstm"], "init": ["xavier", "kaiming"]}
    assert run_name("train") == "model=fc,init=xavier"  # seed=3 is the same in every job: not in the name
    first = tensorboard_dir("unused", "train")
    assert first == str(sweep / "model=fc,init=xavier") and (sweep / first / "JOB").read_text() == "0\n"
    assert tensorboard_dir("unused", "train") == first  # resolved again: the same folder, still job 0's
    sweep_job(5, ["model=fc", "init=xavier", "seed=3"])  # another job with the same values (a study's re-sample)
    assert tensorboard_dir("unused", "train") == str(sweep / "model=fc,init=xavier (job 5)")

"""Training: one TrainConfig in, one run dir out (checkpoints, TensorBoard events, metrics.json)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, StochasticWeightAveraging

from aer.callbacks import EMA, BestMetric, Divergence, FrozenHeap, ProgressBar, StopsRun, Throughput
from aer.checkpoint import AtomicCheckpointIO, Checkpoint
from aer.data.datamodule import AudioSetDataModule
from aer.files import remove_stale_partials, write_json
from aer.launch import ddp_launch, job_state
from aer.metrics import too_few
from aer.module import Tagger
from aer.settings import TrainConfig
from aer.timing import JobTiming

log = logging.getLogger(__name__)

# trainer.* keys the Tagger takes itself (Lightning refuses them under manual optimization: Tagger.configure_steps)
STEP_KEYS = ("gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches")


def resolve_ckpt_path(ckpt_path: str | None, ckpt_dir: Path) -> str | None:
    """`last` resumes from this run dir's last.ckpt when there is one, else starts fresh."""
    if ckpt_path in (None, "", "none"):
        return None
    if ckpt_path == "last":
        last = ckpt_dir / "last.ckpt"
        if last.exists():
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last but %s does not exist yet: starting fresh", last)
        return None
    return ckpt_path


def check_resume(path: str, dm: AudioSetDataModule, model: Tagger) -> None:
    """The checkpoint must be an aer one (read by the one safe loader) of this network and its settings,
    that trained on and held out the same clips."""
    ckpt = Checkpoint.load(path)
    for key in ("model", "model_kwargs", "normalize", "num_classes"):
        theirs, ours = ckpt.hparams.get(key), model.hparams.get(key)
        if key == "model_kwargs" and isinstance(theirs, dict):
            changed = [k for k in theirs if theirs[k] != ours.get(k)]
            if changed:
                raise ValueError(f"ckpt_path={path}: it holds a {ckpt.model_name} with model.{changed[0]}="
                                 f"{theirs[changed[0]]!r}, this run has model.{changed[0]}={ours[changed[0]]!r}: "
                                 f"resume with the settings it was trained with, or start a new run")
        elif theirs is not None and theirs != ours:
            name = {"model": "model", "normalize": "data.normalize", "num_classes": "data.num_classes"}[key]
            raise ValueError(f"ckpt_path={path}: it was trained with {name}={theirs!r}, this run has {name}={ours!r}: "
                             f"resume with the settings it was trained with, or start a new run")
    differs = ckpt.differs(dm)
    if differs:
        raise ValueError(f"ckpt_path={path}: {differs}; resuming would train or validate on other clips: use the "
                         f"same data, or start a new run")


def no_steps_reason(trainer: pl.Trainer, dm: AudioSetDataModule) -> str:
    """Why fit ran no optimizer step, in words a user can act on."""
    dm.setup("fit")
    n = len(dm.split_info("train")["labels"])
    if dm.drop_last and dm.batch_size > n:
        return f"data.batch_size={dm.batch_size} is above the {n} training clips and data.drop_last=true"
    return f"{n} training clips, data.batch_size={dm.batch_size}, trainer.max_epochs={trainer.max_epochs}"


def _kind(value) -> type:
    """How a dashboard shows a value: a bool, a number, or text (lists and None as text)."""
    return bool if isinstance(value, bool) else float if isinstance(value, (int, float)) else str


def _kinds(registry: dict) -> dict[str, type]:
    """key -> its one kind across the options of a choice (model=NAME): text where two options' defaults differ
    in kind (fc's model.hidden, a list, is an int for skiplstm), so that every run shows the key the same way."""
    kinds: dict[str, set] = {}
    for cls in registry.values():
        for k, v in cls().as_dict().items():
            kinds.setdefault(k, set()).add(_kind(v))
    return {k: ks.pop() if len(ks) == 1 else str for k, ks in kinds.items()}


def hparams_for_dashboard(config: TrainConfig) -> dict:
    """The values a sweep compares, flat, for the dashboards: each key one kind in every run (a number, a bool,
    or text: lists as text)."""
    from aer.settings import INITS, MODELS

    flat = {"model": config.model.name, "init": config.init.name, "seed": config.seed, "data.mode": config.data.mode,
            "data.batch_size": config.data.batch_size, "data.normalize": config.data.normalize,
            "tags": ",".join(map(str, config.tags))}
    sections = {"model": config.model.settings, "init": config.init.settings, "optim": config.optim,
                "augment": config.augment, "distill": config.distill}
    kinds = {"model": _kinds(MODELS), "init": _kinds(INITS)}
    for name, section in sections.items():
        own = kinds.get(name) or {k: _kind(v) for k, v in type(section)().as_dict().items()}  # by the defaults
        for k, v in section.as_dict().items():
            kind = own.get(k, str)
            flat[f"{name}.{k}"] = v if kind is _kind(v) and kind is not str else str(v)
    return flat


def dashboard_metrics(config: TrainConfig) -> list[str]:
    """The metrics the HParams tab shows, main ones first: those of the split the run scores (val in dev
    mode, test in final mode), then the training loss."""
    split = "test" if config.data.mode == "final" else "val"
    return [f"{split}/mAP", f"{split}/mAUC", f"{split}/dprime", f"{split}/loss", "train/loss_epoch"]


def make_loggers(config: TrainConfig) -> list:
    """The `logger` group's loggers, one per key (`logger=[tensorboard,mlflow]`, `logger=many`), hparams logged
    (TensorBoard's HParams tab: what the sweep varies first, the split's metrics; aer.loggers)."""
    from aer.loggers import TensorBoardLogger, swept

    node = config.lightning.get("logger") or {}
    nodes = [node] if "_target_" in node else [c for c in node.values() if c]  # one logger's config, as before
    loggers = [hydra.utils.instantiate(c) for c in nodes]
    hparams = hparams_for_dashboard(config)
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.declare(hparams, swept(), dashboard_metrics(config))
        else:
            lg.log_hyperparams(hparams)
    return loggers


def log_checkpoints(loggers: list, paths: list[str | None]) -> None:
    """The run's result checkpoints as MLflow artifacts (checkpoints/best.ckpt, last.ckpt, swa.ckpt).

    Not Lightning's log_model: it logs the checkpoints of whichever ModelCheckpoint saved last,
    which is aer's last-epoch one (see last_epoch_checkpoint), so best.ckpt would be missing.
    """
    from pytorch_lightning.loggers import MLFlowLogger

    for lg in loggers:
        if isinstance(lg, MLFlowLogger):
            for p in dict.fromkeys(p for p in paths if p):
                lg.experiment.log_artifact(lg.run_id, p, "checkpoints")


def last_epoch_checkpoint(callbacks: list) -> list[pl.Callback]:
    """A callback that writes last.ckpt after every epoch, where the monitored checkpoint would not.

    Since Lightning 2.6 `save_last=True` writes last.ckpt only at the steps where a top-k
    checkpoint is written, so with save_top_k=1 it holds the best epoch, not the last one (a
    resume would restart from the best epoch, and last_ckpt would not be the final weights).
    The monitored checkpoint's own last.ckpt is turned off (save_last=False): in an epoch that
    improves, it would write last.ckpt at validation's end only for this one to write it again at
    the epoch's end (a third checkpoint write, 11 MB for report_fc, in most epochs).
    """
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last is True and cb.monitor and cb.dirpath:
            cb.save_last = False
            # save_on_train_epoch_end: Lightning's default moves it to validation's end, and so to every
            # Nth epoch only, where trainer.check_val_every_n_epoch=N > 1
            return [ModelCheckpoint(dirpath=cb.dirpath, filename=cb.CHECKPOINT_NAME_LAST, monitor=None,
                                    save_top_k=1, save_last=False, enable_version_counter=False,
                                    save_on_train_epoch_end=True)]
    return []


def tagger(config: TrainConfig) -> Tagger:
    """The Tagger a train config trains (its arguments are the config's sections)."""
    return Tagger(model=config.model.name, model_kwargs=config.model.settings, init=config.init.name,
                  init_kwargs=config.init.settings, normalize=config.data.normalize, optim=config.optim,
                  augment=config.augment, distill=config.distill, num_classes=config.data.num_classes)


def build(config: TrainConfig, timing: JobTiming | None = None) -> tuple:
    """(data module, Tagger, Lightning trainer, aer's own callbacks and checkpoint writer by name) for a train
    config; `timing`, when given, is one of the trainer's callbacks and times the data's loading here."""
    timing = timing or JobTiming()
    dm = AudioSetDataModule(config.data)
    dm.check_layout()
    model = tagger(config)
    trainer_kwargs = dict(config.lightning.get("trainer") or {})
    model.configure_steps(**{k: trainer_kwargs.pop(k, None) for k in STEP_KEYS})
    if config.compile:
        model.net.compile()
    ours = {"throughput": Throughput(), "best": BestMetric("val/mAP"), "divergence": Divergence()}
    callbacks = [hydra.utils.instantiate(c) for c in (config.lightning.get("callbacks") or {}).values() if c]
    last = last_epoch_checkpoint(callbacks)
    callbacks += last
    if config.swa.enabled:
        callbacks.append(StochasticWeightAveraging(swa_lrs=config.swa.lr or config.optim.lr,
                                                   swa_epoch_start=config.swa.epoch_start,
                                                   annealing_epochs=config.swa.annealing_epochs))
    if config.ema.enabled:  # validated and checkpointed with the averaged weights, which the model holds after fit
        callbacks.append(EMA(config.ema.decay, config.ema.start_step))
    callbacks += [*ours.values(), FrozenHeap(), timing]
    if trainer_kwargs.get("enable_progress_bar", True):
        callbacks.append(ProgressBar())
    ckpt_io = AtomicCheckpointIO(background=True)  # written while training goes on
    ours.update(last=last[0] if last else None, checkpoint_io=ckpt_io)
    trainer: pl.Trainer = hydra.utils.instantiate(trainer_kwargs, callbacks=callbacks,
                                                  logger=make_loggers(config) or False, plugins=[ckpt_io])
    hand_over(dm, model, trainer, timing)
    return dm, model, trainer, ours


def hand_over(dm: AudioSetDataModule, model: Tagger, trainer: pl.Trainer, timing: JobTiming) -> None:
    """What the Tagger takes from the training data before fit: the input statistics (stored in its
    checkpoint), the ontology's ancestor matrix and the teachers' probabilities (neither stored: a
    resumed run is handed them again)."""
    if model.augment.ontology_targets:  # read first: a missing ontology.json is reported before any conversion
        import torch

        from aer.data.ontology import root_ancestors

        dm.ensure_demo()  # a demo set brings its ontology.json
        model.set_ancestors(torch.from_numpy(root_ancestors(dm.root, dm.num_classes)))
    if dm.normalize != "standardize" and not model.distill.enabled:
        return
    with timing.phase("data"):
        dm.prepare_data()
        dm.setup("fit")
        if model.distill.enabled:
            from aer.distill import teacher_targets

            model.set_teacher_targets(teacher_targets(model.distill, dm, trainer.strategy.root_device))
    if dm.normalize == "standardize":
        model.set_input_stats(*dm.input_stats())


def run(config: TrainConfig) -> dict:
    """Trains (and, in final mode, tests) one model; returns what it writes to metrics.json (and
    writes where its time went to timing.json: aer.timing)."""
    timing = JobTiming()
    with job_state(config.threads):
        return _run(config, timing)


def _run(config: TrainConfig, timing: JobTiming) -> dict:
    t0 = time.time()
    out_dir = Path(config.output_dir)
    with timing.phase("build"):
        pl.seed_everything(config.seed, workers=True)
        dm, model, trainer, ours = build(config, timing)
    final = dm.mode == "final"
    ckpt_cb = trainer.checkpoint_callback
    for folder in (out_dir, Path(ckpt_cb.dirpath)):
        remove_stale_partials(folder)
    ckpt_path = resolve_ckpt_path(config.ckpt_path, Path(ckpt_cb.dirpath))
    if ckpt_path:
        check_resume(ckpt_path, dm, model)
    with ddp_launch(trainer):
        timing.fit(trainer, model, datamodule=dm, ckpt_path=ckpt_path)
    timing.push("finish")
    if trainer.global_step == 0:
        raise ValueError(f"the run trained no step ({no_steps_reason(trainer, dm)}): nothing to report")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    metrics = {k: v for k, v in metrics.items() if not k.endswith("_step")}
    best_path = ckpt_cb.best_model_path or None
    last_path = (ours["last"] and ours["last"].best_model_path) or ckpt_cb.last_model_path or None
    if config.swa.enabled:  # the model now holds the averaged weights: they are the run's result
        best_path = str(Path(ckpt_cb.dirpath) / "swa.ckpt")
        trainer.save_checkpoint(best_path)
    # Validate the weights the model holds after fit when the last epoch's metrics do not describe
    # them: SWA's averaged weights; a resume from a checkpoint that had already finished training
    # (a run killed after its last epoch was saved, before metrics.json), where fit ran no epoch; a
    # last epoch that trainer.check_val_every_n_epoch skipped.
    validated = ours["best"].validated_epoch  # fit's last validation (0-based); the weights are current_epoch - 1's
    resumed_finished = "val/mAP" not in metrics and ckpt_path is not None
    skipped = not resumed_finished and (validated is None or validated < trainer.current_epoch - 1)
    if not final and (config.swa.enabled or trainer.limit_val_batches and (resumed_finished or skipped)):
        if resumed_finished:
            log.info("the checkpoint had finished training (epoch %d): validating its weights", trainer.current_epoch)
            last = {"train/loss_epoch": ours["divergence"].epoch_losses, "train/clips_per_s_epoch":
                    ours["throughput"].epoch_rates}  # its last epoch's, as a run that ends there reports them
            metrics.update({k: v[-1] for k, v in last.items() if v})
        elif skipped:
            log.info("fit did not validate the last epoch (%d; trainer.check_val_every_n_epoch=%d): validating the "
                     "final weights", trainer.current_epoch, trainer.check_val_every_n_epoch)
        trainer.validate(model, datamodule=dm, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    if final:
        trainer.test(model, datamodule=dm, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    else:
        metrics["val/mAP_best"] = ours["best"].best
    metrics["train/clips_per_s"] = ours["throughput"].clips_per_s
    stopped = next((cb.stopped for cb in trainer.callbacks if isinstance(cb, StopsRun) and cb.stopped), None)
    diverged = None if stopped else ours["divergence"].verdict(metrics, trainer.current_epoch, trainer.global_step)
    scored = [too_few(p, metrics.get(f"{p}/classes_scored"), metrics.get(f"{p}/clips")) for p in ("val", "test")]
    warnings = [w for w in (ours["divergence"].stalled(), *scored) if w]
    for w in warnings:
        log.warning("%s", w)
    result = {
        **metrics, "status": stopped or ("diverged" if diverged else "ok"), "diverged": diverged,
        "warnings": warnings,
        "epochs": trainer.current_epoch, "global_step": trainer.global_step,
        "best_ckpt": best_path, "last_ckpt": last_path,
        "seconds": round(time.time() - t0, 2),
    }
    ours["checkpoint_io"].teardown()  # the checkpoints written after fit (swa.ckpt) are on disk
    if trainer.is_global_zero:
        log_checkpoints(trainer.loggers, [best_path, result["last_ckpt"]])
        write_json(out_dir / "timing.json", timing.summary())
        write_json(out_dir / "metrics.json", result)
    return result

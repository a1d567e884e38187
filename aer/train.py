"""Training: one Hydra config in, one run dir out (checkpoints, TensorBoard events, metrics.json)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from aer.callbacks import BestMetric, Throughput
from aer.ckpt_io import AtomicCheckpointIO
from aer.config import check_train_config, module_kwargs
from aer.module import Tagger
from aer.utils import write_json

log = logging.getLogger(__name__)


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
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return ckpt_path


def hparams_for_dashboard(cfg: DictConfig) -> dict:
    """The values a sweep compares, flat, for TensorBoard's HParams tab."""
    flat = {"model": cfg.model.name, "init": cfg.init.name, "seed": cfg.seed, "data.mode": cfg.data.mode,
            "data.batch_size": cfg.data.batch_size, "data.normalize": cfg.data.get("normalize", "unit")}
    for section in ("model", "init", "optim", "augment"):
        for k, v in (OmegaConf.to_container(cfg.get(section) or {}, resolve=True)).items():
            if k != "name":
                flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def run(cfg: DictConfig) -> dict:
    """Trains (and, in final mode, tests) one model; returns what it writes to metrics.json."""
    t0 = time.time()
    check_train_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")  # plain values: checkpoints load weights_only
    dm.check_layout()
    final = dm.mode == "final"
    with open_dict(cfg):
        if final:  # no validation split: keep the last epoch's weights, as the report's final models
            cfg.trainer.limit_val_batches = 0
            cfg.callbacks.model_checkpoint.monitor = None
            cfg.callbacks.model_checkpoint.filename = "final"
    model = Tagger(**module_kwargs(cfg))
    throughput, best = Throughput(), BestMetric("val/mAP")
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks + [throughput, best],
                                                  logger=logger, plugins=[AtomicCheckpointIO()])
    if logger:
        logger.log_hyperparams(hparams_for_dashboard(cfg),
                               {"val/mAP": 0.0, "val/mAUC": 0.0, "test/mAP": 0.0, "test/mAUC": 0.0})
    if model.hparams.input_norm == "standardize":
        dm.prepare_data()
        dm.setup("fit")
        model.set_input_stats(*dm.input_stats())
    ckpt_cb = trainer.checkpoint_callback
    trainer.fit(model, datamodule=dm, ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), Path(ckpt_cb.dirpath)))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    metrics = {k: v for k, v in metrics.items() if not k.endswith("_step")}
    if final:
        for k, v in trainer.test(model, datamodule=dm, verbose=False)[0].items():
            metrics[k] = float(v)
    else:
        metrics["val/mAP_best"] = best.best
    metrics["train/clips_per_s"] = throughput.clips_per_s
    result = {
        **metrics, "status": "ok", "epochs": trainer.current_epoch, "global_step": trainer.global_step,
        "best_ckpt": ckpt_cb.best_model_path or None, "last_ckpt": ckpt_cb.last_model_path or None,
        "seconds": round(time.time() - t0, 2),
    }
    if trainer.is_global_zero:
        write_json(out_dir / "metrics.json", result)
    return result

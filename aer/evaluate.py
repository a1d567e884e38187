"""`python evaluate.py ckpt=PATH [split=val]`: one checkpoint's mAP, mAUC, d′ on the eval split (or the dev 20%),
per class, with its predictions (the files: aer.scoring.write_report)."""

from __future__ import annotations

import time
from pathlib import Path

from aer.launch import job_state
from aer.paths import resolved_path
from aer.scoring import format_scores, write_report
from aer.settings import EvaluateConfig


def run(config: EvaluateConfig) -> dict:
    """Scores config.ckpt on config.split; returns what it writes to metrics.json."""
    t0 = time.time()
    from aer.checkpoint import Checkpoint
    from aer.inference import predict_split

    ckpt_path = resolved_path(config.ckpt)
    ckpt = Checkpoint.load(ckpt_path)
    model = ckpt.tagger()
    dm = ckpt.datamodule(config.split, config.data)
    if config.split == "val":
        ckpt.check_dev_split(dm, "split=val")
    thresholds = ckpt.decision_thresholds(config.threshold)
    del ckpt  # the weights now live in the model
    with job_state(config.threads):
        probs, labels, video_ids = predict_split(model, dm)
    out_dir = Path(config.output_dir)
    info = {"split": config.split, "ckpt": str(ckpt_path), "model": model.hparams.model, "data_root": str(dm.root),
            "seconds": round(time.time() - t0, 2)}
    metrics, _ = write_report(out_dir, probs, labels, video_ids, dm, info, thresholds, config.bootstrap)
    print(f"{ckpt_path} on split={config.split} ({len(probs)} clips from {dm.root})\n"
          f"{format_scores(metrics, probs.shape[1])}\nwrote {out_dir}/metrics.json, per_class.csv, predictions.h5",
          flush=True)
    return metrics

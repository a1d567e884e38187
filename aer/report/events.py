"""Training curves from the TensorBoard event files a run writes (so a killed run still has its
epochs up to then), attached to aer.runs' runs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from aer.runs import Run, find_runs

log = logging.getLogger(__name__)

EVENT_GLOB = "events.out.tfevents.*"
# tag -> panel title; the epoch-level scalars train.py logs (train/loss_step is too noisy to compare)
CURVES = {"train/loss_epoch": "train loss", "val/loss": "val loss", "val/mAP": "val mAP", "val/mAUC": "val mAUC"}

Curves = dict[str, tuple[np.ndarray, np.ndarray]]  # tag -> (epochs, values)


@dataclass
class Traced:
    """A run and its curves."""

    run: Run
    curves: Curves


def _epochs_by_step(ea) -> dict[int, list[tuple[float, float]]]:
    """step -> [(wall time, epoch)] of the `epoch` scalar that Lightning logged beside every metric in the runs
    of an aer before the epoch-level curves were written at step = epoch (aer.module.Tagger.log_epoch)."""
    epoch_at: dict[int, list[tuple[float, float]]] = {}
    if "epoch" in ea.Tags().get("scalars", []):
        for e in ea.Scalars("epoch"):
            epoch_at.setdefault(e.step, []).append((e.wall_time, e.value))
    return epoch_at


def read_curves(tb_dirs: list[Path]) -> Curves:
    """Epoch-level curves from the event files in `tb_dirs`, x = epochs completed (1 = after the first).

    aer writes them at step = that epoch. An older run's came at Lightning's batch count, with an `epoch`
    scalar beside each, read from there; points with no `epoch` beside them (log_hyperparams' placeholder
    0.0 at step 0) are dropped.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    merged: dict[str, dict[float, float]] = {}
    for tb in tb_dirs:
        # size_guidance 0 keeps every point: the default samples long runs down to 1000
        ea = EventAccumulator(str(tb), size_guidance={SCALARS: 0})
        ea.Reload()
        tags = set(ea.Tags().get("scalars", []))
        epoch_at = _epochs_by_step(ea)
        for tag in (t for t in CURVES if t in tags):
            points = merged.setdefault(tag, {})
            for e in ea.Scalars(tag):
                if epoch_at:
                    cands = epoch_at.get(e.step)
                    if not cands:
                        continue
                    # a step where two epochs meet (val end of one, train start of the next): nearest in time
                    epoch = min(cands, key=lambda c: abs(c[0] - e.wall_time))[1] + 1
                elif e.step >= 1:
                    epoch = e.step
                else:
                    continue
                points[epoch] = e.value  # a resumed run re-logs epochs: the later value wins
    return {tag: (np.array(sorted(p)), np.array([p[k] for k in sorted(p)])) for tag, p in merged.items() if p}


def event_dirs(run: Run) -> list[Path]:
    """The folders that hold the run's event files: under its dir, and for a sweep's job the sweep's folder
    named after what it varied, whose JOB file names the job (aer.loggers.tensorboard_dir)."""
    from aer.loggers import JOB_FILE, job_of

    own = {ev.parent for ev in run.dir.rglob(EVENT_GLOB)}
    named = {f.parent for f in run.dir.parent.glob(f"*/{JOB_FILE}") if job_of(f.parent) == run.dir.name}
    return sorted(d for d in own | named if any(d.glob(EVENT_GLOB)))


def with_logged_hparams(run: Run, tb_dirs: list[Path]) -> Run:
    """A run made without Hydra's CLI (no .hydra/) compared by the flat hparams its logger saved."""
    if run.recorded:
        return run
    for tb in tb_dirs:
        hp = tb / "hparams.yaml"
        if hp.exists():
            flat = OmegaConf.to_container(OmegaConf.load(hp))
            if isinstance(flat, dict):
                params = {str(k): str(v) for k, v in flat.items()}
                return replace(run, overrides=tuple(f"{k}={v}" for k, v in params.items()), params=params)
    return run


def traced_runs(root: str | os.PathLike, exclude: Path | None = None) -> list[Traced]:
    """Every run under `root` (or `root` itself, aer.runs.find_runs) that logged curves, in job order."""
    root = Path(root)
    found = [(run, event_dirs(run)) for run in find_runs(root, exclude)]
    found = [(run, tbs) for run, tbs in found if tbs]
    if not found:
        raise FileNotFoundError(
            f"{root}: no TensorBoard event files ({EVENT_GLOB}) found: expected a run dir from train.py "
            f"(with tensorboard/) or a sweep dir holding such runs")
    traced = []
    for run, tbs in found:
        curves = read_curves(tbs)
        if not curves:
            log.warning("%s: its event files hold none of %s (killed before the first epoch ended?): skipped",
                        run.dir, ", ".join(CURVES))
            continue
        traced.append(Traced(with_logged_hparams(run, tbs), curves))
    if not traced:
        raise FileNotFoundError(f"{root}: event files found, but no run logged any of {', '.join(CURVES)}")
    return traced

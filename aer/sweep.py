"""Hydra callbacks of a multirun: its summary table when it ends (SweepSummary; the table: aer.runs.write_summary),
and the ensemble of its jobs (EnsembleSweep, for experiment=best_ensemble)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aer.runs import write_summary

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Hydra callback: writes summary.md / summary.csv into the sweep dir when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        rows = write_summary(sweep_dir)
        failed = sum(r.get("status") not in ("ok", "pruned") for r in rows)
        log.info("sweep summary: %s (%d jobs, %d failed)", sweep_dir / "summary.md", len(rows), failed)
        print((sweep_dir / "summary.md").read_text())


class EnsembleSweep(Callback):
    """Hydra callback: when a multirun ends, ensembles its finished jobs (`ensemble.py sweep=DIR`) into
    DIR/ensemble/: scored on the dev split (split=val) for a data.mode=dev sweep, on eval for a final one.

    The members are the sweep's jobs, which the experiment that adds this callback chose on the dev split
    (experiment=best_ensemble); `select=greedy` weighs them by forward selection on the dev split, which
    only a dev sweep has (a final sweep averages them uniformly). The ensemble runs in a process of its
    own, as `python ensemble.py` would, after the summary; a failure is reported and fails the command.
    """

    def __init__(self, select: str, replicates: int | None) -> None:
        self.select, self.replicates = select, replicates

    def command(self, config: DictConfig) -> list[str]:
        sweep_dir = Path(config.hydra.sweep.dir)
        final = config.data.mode == "final"
        args = [f"sweep={sweep_dir}", f"split={'eval' if final else 'val'}",
                f"select={'none' if final else self.select}", f"hydra.run.dir={sweep_dir / 'ensemble'}",
                f"paths.log_dir={config.paths.log_dir}"]
        for key in ("root", "cache_dir"):  # where this sweep read its data, whatever its checkpoints recorded
            if config.data.get(key):
                args.append(f"data.{key}={config.data[key]}")
        if self.replicates is not None:
            args.append(f"bootstrap.replicates={self.replicates}")
        return [sys.executable, "-c", "from aer.cli import ensemble; ensemble()", *args]

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        log.info("ensembling the sweep's jobs into %s", sweep_dir / "ensemble")
        proc = subprocess.run(self.command(config), text=True, capture_output=True)
        print(proc.stdout, end="", flush=True)
        if proc.returncode != 0:
            last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), f"exit code {proc.returncode}")
            raise RuntimeError(f"the ensemble of sweep {sweep_dir} failed: {last}")

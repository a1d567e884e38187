"""Hydra callbacks: a run's dir claimed before Hydra writes into it (RunDirGuard), a multirun's summary table
when it ends (SweepSummary; the table: aer.runs.write_summary) and the ensemble of its jobs (EnsembleSweep, for
experiment=best_ensemble).

Hydra turns a callback's Exception into a warning and goes on, so a refusal is an aer.errors.Refused, and what
went wrong at a multirun's end is kept in OUTCOME, which aer.cli reads when Hydra returns: the command then
ends with status 1.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from aer.errors import Refused, one_line
from aer.runs import claim_run_dir, find_runs, render, write_summary

log = logging.getLogger(__name__)


# what went wrong in this process's multirun, for aer.cli: {"failed": "N of M jobs failed ...", "ensemble": ...}
OUTCOME: dict[str, str] = {}
# the jobs this process's Optuna sweeper launched: workers of one study share its sweep dir, each answers for its own
LAUNCHED: set[str] = set()


def _ddp_rank(config: DictConfig) -> bool:
    """A DDP rank > 0, which Lightning starts in rank 0's run dir (aer.launch)."""
    return config.hydra.output_subdir is None or os.environ.get("LOCAL_RANK", "0") != "0"


class RunDirGuard(Callback):
    """Hydra callback: claims a run's dir before Hydra writes into it (aer.runs.claim_run_dir): a dir that holds
    another run is refused unless the command resumes it (ckpt_path=last) (for a command that does not train,
    one that holds a training run), as is one another process is
    writing or one in a data folder; a sweep's dir that holds runs already is refused (an Optuna sweep's,
    continued by the same command, is its sweeper's); each job holds a lock on its own dir."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if _ddp_rank(config):
            return
        given = any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)
        run_dir, tries = str(config.hydra.run.dir), 0
        while True:
            try:
                claimed = claim_run_dir(run_dir, resume=config.get("ckpt_path") == "last",
                                        data_root=OmegaConf.select(config, "data.root"),
                                        trains=config.hydra.job.config_name == "train")
                break
            except ValueError as e:
                # the default dir (its time, to the second) taken by a run started in the same second: the next
                if given or tries >= 100 or not Path(run_dir).name.startswith(Path(config.hydra.run.dir).name):
                    raise Refused(one_line(e)) from None
                tries += 1
                run_dir = f"{config.hydra.run.dir}-{tries}"
            except OSError as e:
                raise Refused(one_line(e)) from None
        if tries:
            with read_write(config.hydra):  # Hydra makes the run dir from this node, after this callback
                config.hydra.run.dir = str(claimed)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from aer.launch import SWEEP_PID, sweep_process

        os.environ[SWEEP_PID] = sweep_process()  # jobs in worker processes end with this one (end_with_sweep)
        sweep_dir = Path(config.hydra.sweep.dir)
        optuna = str(config.hydra.sweeper.get("_target_", "")).endswith("AerOptunaSweeper")
        if not optuna and sweep_dir.is_dir() and find_runs(sweep_dir):
            raise Refused(f"{sweep_dir} holds the runs of another sweep: give a new hydra.sweep.dir")

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and not _ddp_rank(config):
            from aer.launch import end_with_sweep

            end_with_sweep()
            try:
                claim_run_dir(config.hydra.runtime.output_dir, resume=True)
            except (ValueError, OSError) as e:
                raise Refused(one_line(e)) from None


class SweepSummary(Callback):
    """Hydra callback: writes summary.md / summary.csv into the sweep dir when a multirun ends; the command
    fails when one of the jobs it ran did (those of an Optuna study's earlier commands are not its own)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self.before = {r.name for r in find_runs(sweep_dir)} if sweep_dir.is_dir() else set()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        rows = write_summary(sweep_dir)
        failed = sum(r.get("status") not in ("ok", "pruned") for r in rows)
        log.info("sweep summary: %s (%d jobs, %d failed)", sweep_dir / "summary.md", len(rows), failed)
        print((sweep_dir / "summary.md").read_text())
        ours = [r for r in rows if r["job"] in LAUNCHED] if LAUNCHED else \
            [r for r in rows if r["job"] not in getattr(self, "before", ())]
        if failed := sum(r.get("status") not in ("ok", "pruned") for r in ours):
            OUTCOME["failed"] = f"{failed} of {len(ours)} jobs failed (see {sweep_dir / 'summary.md'})"


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
        args = [f"sweep={render(sweep_dir)}", f"split={'eval' if final else 'val'}",
                f"select={'none' if final else self.select}", f"hydra.run.dir={render(sweep_dir / 'ensemble')}",
                f"paths.log_dir={render(config.paths.log_dir)}"]
        for key in ("root", "cache_dir"):  # where this sweep read its data, whatever its checkpoints recorded
            if config.data.get(key):
                args.append(f"data.{key}={render(config.data[key])}")
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
            OUTCOME["ensemble"] = f"the ensemble of sweep {sweep_dir} failed: {last.removeprefix('error: ')}"

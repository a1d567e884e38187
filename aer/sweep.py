"""Sweep summaries: one table (markdown and CSV) of every job's metrics.json and overrides, with each
trial's Optuna state and value in an Optuna sweep (its trials.json, written by aer.search); and the
ensemble of a sweep's jobs when it ends (EnsembleSweep, for experiment=best_ensemble)."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aer.runs import find_runs, swept_keys
from aer.utils import atomic_write_text

log = logging.getLogger(__name__)

COLUMNS = ("val/mAP", "val/mAP_best", "val/mAUC", "test/mAP", "test/mAUC", "test/dprime", "train/clips_per_s")


def collect(sweep_dir: str | Path) -> list[dict]:
    """One row per run under `sweep_dir` (aer.runs.find_runs), in job order: its metrics.json, `job`
    (its dir relative to the sweep's), `overrides` (a list, as Hydra recorded them) and `swept`
    (those of the keys that differ between the jobs: all of them when nothing does, as in a one-job sweep)."""
    runs = find_runs(sweep_dir)
    keys = set(swept_keys(runs)) or {k for r in runs for k in r.params}
    rows = []
    for run in runs:
        # metrics.json of a failed job carries its overrides too: .hydra's are the ones shown
        rows.append({**run.metrics, "status": run.status, "error": run.error, "job": run.name,
                     "overrides": list(run.overrides), "swept": run.overrides_of(keys)})
    return merge_trials(rows, sweep_dir)


def merge_trials(rows: list[dict], sweep_dir: str | Path) -> list[dict]:
    """Adds trial, state and value to the jobs of an Optuna sweep; other sweeps' rows are returned as they are."""
    path = Path(sweep_dir) / "trials.json"
    if not path.exists():
        return rows
    trials = {t["job"]: t for t in json.loads(path.read_text())}
    for r in rows:
        t = trials.get(r["job"])
        if t:
            r.update(trial=t["trial"], state=t["state"], value=t["value"])
            if t.get("note"):
                r["error"] = "; ".join(filter(None, [r.get("error"), t["note"]]))
    return rows


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4f}"
    if isinstance(v, list):  # overrides: one cell, each as Hydra recorded it
        return " ".join(map(str, v))
    return "" if v is None else str(v)


def _cell(v):
    """A CSV cell: numbers at full precision, lists as fmt joins them."""
    return fmt(v) if isinstance(v, list) else "" if v is None else v


def summary_tables(rows: list[dict]) -> tuple[str, str]:
    """(summary.md: the swept values only, summary.csv: with the full overrides) of collect's rows."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    head = ["job", "swept", "status", *[c for c in ("state", "value") if any(c in r for r in rows)], *cols, "error"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*head, "overrides"])
    for r in rows:
        vals = [fmt(r.get(h)) for h in head]
        md.append("| " + " | ".join(v.replace("|", "\\|").replace("\n", " ") for v in vals) + " |")
        w.writerow([*(_cell(r.get(h)) for h in head), fmt(r["overrides"])])
    return "\n".join(md) + "\n", buf.getvalue()


def write_summary(sweep_dir: str | Path, out_dir: str | Path | None = None) -> list[dict]:
    """Writes summary.md and summary.csv of the sweep into `out_dir` (default: the sweep dir); returns the rows."""
    rows = collect(sweep_dir)
    out = Path(out_dir if out_dir is not None else sweep_dir)
    md, table = summary_tables(rows)
    atomic_write_text(out / "summary.md", md)
    atomic_write_text(out / "summary.csv", table)
    return rows


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

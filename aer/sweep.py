"""Sweep summaries: one table (markdown and CSV) of every job's metrics.json and overrides, with each
trial's Optuna state and value in an Optuna sweep (its trials.json, written by aer.search)."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aer.utils import atomic_write_text

log = logging.getLogger(__name__)

COLUMNS = ("val/mAP", "val/mAP_best", "val/mAUC", "test/mAP", "test/mAUC", "test/dprime", "train/clips_per_s")


def collect(sweep_dir: str | Path) -> list[dict]:
    """One row per job dir (a folder holding .hydra/), in job order."""
    rows = []
    for hydra_dir in sorted(Path(sweep_dir).glob("**/.hydra"), key=lambda p: job_key(p.parent)):
        job = hydra_dir.parent
        overrides = read_overrides(hydra_dir / "overrides.yaml")
        mfile = job / "metrics.json"
        if mfile.exists():
            m = json.loads(mfile.read_text())
        else:
            m = {"status": "failed", "error": "no metrics.json (killed or still running)"}
        # metrics.json of a failed job carries its overrides as a list: .hydra's are the ones shown
        rows.append({**m, "job": str(job.relative_to(sweep_dir)) if job != Path(sweep_dir) else ".",
                     "overrides": " ".join(overrides)})
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


def job_key(path: Path) -> list[tuple]:
    """Sorts job folders as Hydra numbers them: 2 before 10, numbers before names."""
    return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in Path(path).parts]


def read_overrides(path: Path) -> list[str]:
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4f}"
    return "" if v is None else str(v)


def swept(rows: list[dict]) -> list[str]:
    """Override keys whose values differ between jobs: what the sweep compares."""
    values: dict[str, set] = {}
    for r in rows:
        for o in r["overrides"].split():
            key, _, val = o.partition("=")
            values.setdefault(key, set()).add(val)
    keys = [k for k, v in values.items() if len(v) > 1]
    return keys or list(values)


def write_summary(sweep_dir: str | Path) -> list[dict]:
    """Writes summary.md (swept values only) and summary.csv (full overrides); returns the rows."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    keys = set(swept(rows))
    for r in rows:
        r["swept"] = " ".join(o for o in r["overrides"].split() if o.partition("=")[0] in keys)
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    head = ["job", "swept", "status", *[c for c in ("state", "value") if any(c in r for r in rows)], *cols, "error"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*head, "overrides"])
    for r in rows:
        vals = [fmt(r.get(h)) for h in head]
        md.append("| " + " | ".join(v.replace("|", "\\|").replace("\n", " ") for v in vals) + " |")
        w.writerow([r.get(h) if r.get(h) is not None else "" for h in head] + [r["overrides"]])
    atomic_write_text(sweep_dir / "summary.md", "\n".join(md) + "\n")
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
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

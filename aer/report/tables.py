"""The report's markdown tables: a run's metrics, and per run the epochs and mAP its curves show."""

from __future__ import annotations

import numpy as np

from aer.report.events import Traced
from aer.runs import NO_METRICS, Run, fmt


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def metrics_table(run: Run) -> list[str]:
    """metrics.json of one run as a two-column table."""
    if not run.metrics:
        return [f"_{run.problem or NO_METRICS}_"]
    return ["| metric | value |", "|---|---|", *(_row([k, fmt(v)]) for k, v in run.metrics.items())]


def curves_table(traced: list[Traced], labels: list[str]) -> list[str]:
    """Per run, from its curves: epochs logged, last and best val mAP (and its epoch), last val mAUC."""
    lines = ["| run | overrides | epochs | last val/mAP | best val/mAP | at epoch | last val/mAUC |",
             "|---|---|---|---|---|---|---|"]
    for t, label in zip(traced, labels):
        cells = [t.run.name, label if label != t.run.name else "", "", "", "", "", ""]
        if "val/mAP" in t.curves:
            x, y = t.curves["val/mAP"]
            best = int(np.nanargmax(y))
            cells[2:6] = [f"{x[-1]:g}", fmt(float(y[-1])), fmt(float(y[best])), f"{x[best]:g}"]
        if "val/mAUC" in t.curves:
            cells[6] = fmt(float(t.curves["val/mAUC"][1][-1]))
        lines.append(_row(cells))
    return lines

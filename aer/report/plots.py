"""The report's figures: training curves per run and one figure per swept key; the panel and legend
layout that aer.compare's figures share."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from aer.files import atomic_path
from aer.report.events import CURVES, Traced

SWEEP_PANELS = ("val/mAP", "val/mAUC", "train/loss_epoch")
TITLES = {"data.batch_size": "batch size", "init": "initialization", "model": "model", "optim.lr": "learning rate",
          "data.normalize": "input normalization", "seed": "seed", "optim.scheduler": "LR schedule",
          "data.balanced": "balanced sampling", "optim.weight_decay": "weight decay"}
LINESTYLES = ("-", "--", ":", "-.")


def save_png(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def panel(ax, tag: str) -> None:
    """Title, axis labels and grid of the panel showing `tag`; a log axis for a loss that falls far."""
    ax.set_title(CURVES[tag])
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    if "loss" in tag:
        lo, hi = ax.dataLim.y0, ax.dataLim.y1
        # BCE falls by an order of magnitude in the first epochs: a log axis keeps the later ones readable
        if lo > 0 and math.isfinite(hi) and hi / lo > 5:
            ax.set_yscale("log")
            _plain_log_labels(ax.yaxis)
    ax.xaxis.get_major_locator().set_params(integer=True)


def _plain_log_labels(axis) -> None:
    """Keeps the log axis' choice of which ticks to label, but writes 0.04 rather than 4×10⁻²."""
    for get, put in ((axis.get_major_formatter, axis.set_major_formatter),
                     (axis.get_minor_formatter, axis.set_minor_formatter)):
        default = get()
        fmt = FuncFormatter(lambda v, pos, d=default: f"{v:g}" if d(v, pos) else "")
        fmt.set_locs = default.set_locs  # the default decides from the visible range which ticks get a label
        put(fmt)


def _label_values(values: list[str | None]) -> list[str | None]:
    """Distinct values in a sensible order: numeric ascending when all are numbers, else as they come."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=lambda v: float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return distinct


def colors(n: int) -> list:
    cmap = colormaps["tab10"] if n <= 10 else colormaps["viridis"]
    return [cmap(i) if n <= 10 else cmap(i / max(1, n - 1)) for i in range(n)]


def _legend_cols(width_in: float, labels: list[str]) -> int:
    """As many legend columns as `width_in` inches hold: ~0.075 in per character at fontsize small,
    plus the line sample and spacing."""
    per_col = 0.075 * max((len(s) for s in labels), default=1) + 0.7
    return max(1, min(len(labels), int(width_in / per_col)))


def legend_height(width_in: float, labels: list[str]) -> float:
    """Inches the legend below the panels takes."""
    rows = -(-len(labels) // _legend_cols(width_in, labels))
    return 0.3 + 0.22 * rows


def legend(fig: Figure, ax, title: str | None = None) -> None:
    """One legend for all panels, below them."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ncol = _legend_cols(fig.get_figwidth(), labels)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize="small", frameon=False, title=title)


def plot_curves(traced: list[Traced], path: Path, labels: list[str] | None = None) -> Path:
    """Train loss, val loss, val mAP and val mAUC per epoch; one line per run."""
    labels = labels or [t.run.name for t in traced]
    fig = Figure(figsize=(10, 7 + (legend_height(10, labels) if len(traced) > 1 else 0)), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, tag in zip(axes, CURVES):
        for t, label, color in zip(traced, labels, colors(len(traced))):
            if tag in t.curves:
                ax.plot(*t.curves[tag], marker="o", markersize=3, color=color, label=label)
        panel(ax, tag)
    if len(traced) == 1 and "val/mAP" in traced[0].curves:
        x, y = traced[0].curves["val/mAP"]
        best = int(np.nanargmax(y))
        axes[2].set_title(f"val mAP (best {y[best]:.4f} at epoch {x[best]:g})")
        axes[2].plot([x[best]], [y[best]], marker="*", markersize=12, color="tab:red", linestyle="none")
    shown = traced[0].run.dir if len(traced) == 1 else traced[0].run.dir.parent
    fig.suptitle(f"training curves: {'/'.join(shown.resolve().parts[-2:])}")
    if len(traced) > 1:
        legend(fig, axes[0])
    return save_png(fig, path)


def _styles(params: list[dict], key: str, varying: list[str]) -> tuple[dict, dict]:
    """(colour per value of `key`, line style per combination of the other varying keys)."""
    values = _label_values([p.get(key) for p in params])
    others = [k for k in varying if k != key]
    rest = list(dict.fromkeys(tuple(p.get(k) for k in others) for p in params))
    return dict(zip(values, colors(len(values)))), {r: LINESTYLES[i % len(LINESTYLES)] for i, r in enumerate(rest)}


def plot_swept_key(traced: list[Traced], key: str, varying: list[str], path: Path) -> Path:
    """val mAP, val mAUC and train loss per epoch, one line per run, coloured by `key`'s value.

    When other keys vary too, runs sharing a value of `key` share its colour, differ in line style,
    and are labelled with all their varying overrides.
    """
    params = [t.run.params for t in traced]
    color_of, style_of = _styles(params, key, varying)
    others = [k for k in varying if k != key]

    def label(p: dict) -> str:
        if not others:
            return str(p.get(key, "(default)"))
        return " ".join(f"{k}={p[k]}" if k in p else f"{k}=(default)" for k in varying)

    legend_labels = list(dict.fromkeys(label(p) for p in params))
    fig = Figure(figsize=(14, 4.4 + legend_height(14, legend_labels)), layout="constrained")
    axes = fig.subplots(1, len(SWEEP_PANELS))
    # runs in value order, so the legend reads in the same order as the values
    values = list(color_of)
    order = sorted(range(len(traced)), key=lambda i: (values.index(params[i].get(key)), i))
    for ax, tag in zip(axes, SWEEP_PANELS):
        seen = set()
        for i in (i for i in order if tag in traced[i].curves):
            p, lab = params[i], label(params[i])
            ax.plot(*traced[i].curves[tag], marker="o", markersize=3, color=color_of[p.get(key)],
                    linestyle=style_of[tuple(p.get(k) for k in others)],
                    label=lab if lab not in seen else "_nolegend_")
            seen.add(lab)
        panel(ax, tag)
    fig.suptitle(title(key))
    legend(fig, axes[0], title=None if others else key)
    return save_png(fig, path)


def title(key: str) -> str:
    name = TITLES.get(key, key)
    return key if name == key else f"{name} ({key})"


def safe_name(key: str) -> str:
    """`key` as a file name part."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)

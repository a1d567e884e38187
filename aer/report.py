"""`python -m aer.report DIR [DIR ...]`: a run's or a sweep's training curves as PNGs, plus a markdown report.

The curves come from the TensorBoard event files each run writes (so a run that was killed still
has its epochs up to then), the job table from `aer.sweep`. For a sweep, every override whose value
differs across jobs (model, init, data.batch_size, ...) gets a figure of its own: validation mAP,
mAUC and training loss per epoch, one line per job, coloured by that key's value.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from omegaconf import OmegaConf

from aer.sweep import collect, fmt, job_key, read_overrides, write_summary
from aer.utils import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

EVENT_GLOB = "events.out.tfevents.*"
# tag -> panel title; the epoch-level scalars train.py logs (train/loss_step is too noisy to compare)
CURVES = {"train/loss_epoch": "train loss", "val/loss": "val loss", "val/mAP": "val mAP", "val/mAUC": "val mAUC"}
SWEEP_PANELS = ("val/mAP", "val/mAUC", "train/loss_epoch")
TITLES = {"data.batch_size": "batch size", "init": "initialization", "model": "model", "optim.lr": "learning rate",
          "data.normalize": "input normalization", "seed": "seed", "optim.scheduler": "LR schedule",
          "data.balanced": "balanced sampling", "optim.weight_decay": "weight decay"}
LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class Run:
    dir: Path
    name: str  # relative to the report's root; "." when the root is the run
    overrides: list[str]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # tag -> (epochs, values)

    def params(self) -> dict[str, str]:
        out = {}
        for o in self.overrides:
            key, _, value = o.partition("=")
            out[key.lstrip("+")] = value  # `+key=v` in one job and `key=v` in another are the same key
        return out


# ---- reading
def read_curves(tb_dirs: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Epoch-level curves from the event files in `tb_dirs`, x = epochs completed (1 = after the first).

    Lightning logs an `epoch` scalar at the same step as every metric it logs, so each point's
    epoch is read from there. Points with no `epoch` beside them are not from the training loop
    (log_hyperparams' placeholder 0.0 at step 0) and are dropped.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    merged: dict[str, dict[float, float]] = {}
    for tb in tb_dirs:
        # size_guidance 0 keeps every point: the default samples long runs down to 1000
        ea = EventAccumulator(str(tb), size_guidance={SCALARS: 0})
        ea.Reload()
        tags = set(ea.Tags().get("scalars", []))
        epoch_at: dict[int, list[tuple[float, float]]] = {}
        if "epoch" in tags:
            for e in ea.Scalars("epoch"):
                epoch_at.setdefault(e.step, []).append((e.wall_time, e.value))
        for tag in CURVES:
            if tag not in tags:
                continue
            points = merged.setdefault(tag, {})
            for i, e in enumerate(ea.Scalars(tag)):
                if epoch_at:
                    cands = epoch_at.get(e.step)
                    if not cands:
                        continue
                    # a step where two epochs meet (val end of one, train start of the next): nearest in time
                    epoch = min(cands, key=lambda c: abs(c[0] - e.wall_time))[1] + 1
                else:  # another logger: no epoch scalar, so one point per epoch in order
                    epoch = i + 1
                points[epoch] = e.value  # a resumed run re-logs epochs: the later value wins
    return {tag: (np.array(sorted(p)), np.array([p[k] for k in sorted(p)])) for tag, p in merged.items() if p}


def _run_dir(tb_dir: Path, root: Path) -> Path:
    """The run an event folder belongs to: the nearest folder up to `root` that looks like a run dir."""
    for d in (tb_dir, *tb_dir.parents):
        if (d / ".hydra").is_dir() or (d / "metrics.json").is_file() or (d / "checkpoints").is_dir():
            return d
        if d == root:
            break
    return tb_dir.parent if tb_dir.name == "tensorboard" and tb_dir != root else tb_dir


def _run_overrides(run: Path, tb_dirs: list[Path]) -> list[str]:
    """The run's Hydra overrides; for a run made without the CLI, the flat hparams its logger saved."""
    hydra_file = run / ".hydra" / "overrides.yaml"
    if hydra_file.exists():
        return read_overrides(hydra_file)
    for tb in tb_dirs:
        hp = tb / "hparams.yaml"
        if hp.exists():
            flat = OmegaConf.to_container(OmegaConf.load(hp))
            if isinstance(flat, dict):
                return [f"{k}={v}" for k, v in flat.items()]
    return []


def find_runs(root: str | os.PathLike, exclude: Path | None = None) -> list[Run]:
    """Every run under `root` (or `root` itself) that has event files, in job order, curves loaded."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected a run or sweep dir from train.py)")
    by_run: dict[Path, set[Path]] = {}
    skip = exclude.resolve() if exclude is not None else None
    for ev in root.rglob(EVENT_GLOB):
        if skip is not None and skip in ev.resolve().parents:
            continue
        by_run.setdefault(_run_dir(ev.parent, root), set()).add(ev.parent)
    if not by_run:
        raise FileNotFoundError(
            f"{root}: no TensorBoard event files ({EVENT_GLOB}) found: expected a run dir from train.py "
            f"(with tensorboard/) or a sweep dir holding such runs")
    runs = []
    for run_dir in sorted(by_run, key=job_key):
        tbs = sorted(by_run[run_dir])
        name = "." if run_dir == root else str(run_dir.relative_to(root))
        run = Run(run_dir, name, _run_overrides(run_dir, tbs), read_curves(tbs))
        if not run.curves:
            log.warning("%s: its event files hold none of %s (killed before the first epoch ended?): skipped",
                        run_dir, ", ".join(CURVES))
            continue
        runs.append(run)
    if not runs:
        raise FileNotFoundError(f"{root}: event files found, but no run logged any of {', '.join(CURVES)}")
    return runs


def swept_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value differs across runs, in the order they first appear."""
    params = [r.params() for r in runs]
    keys = list(dict.fromkeys(k for p in params for k in p))
    return [k for k in keys if len({p.get(k) for p in params}) > 1]


# ---- plotting
def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _panel(ax, tag: str) -> None:
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


def _colors(n: int) -> list:
    cmap = colormaps["tab10"] if n <= 10 else colormaps["viridis"]
    return [cmap(i) if n <= 10 else cmap(i / max(1, n - 1)) for i in range(n)]


def _legend_cols(width_in: float, labels: list[str]) -> int:
    """As many legend columns as `width_in` inches hold: ~0.075 in per character at fontsize small,
    plus the line sample and spacing."""
    per_col = 0.075 * max((len(s) for s in labels), default=1) + 0.7
    return max(1, min(len(labels), int(width_in / per_col)))


def _legend_height(width_in: float, labels: list[str]) -> float:
    """Inches the legend below the panels takes."""
    rows = -(-len(labels) // _legend_cols(width_in, labels))
    return 0.3 + 0.22 * rows


def _legend(fig: Figure, ax, title: str | None = None) -> None:
    """One legend for all panels, below them."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ncol = _legend_cols(fig.get_figwidth(), labels)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize="small", frameon=False, title=title)


def plot_curves(runs: list[Run], path: Path, labels: list[str] | None = None) -> Path:
    """Train loss, val loss, val mAP and val mAUC per epoch; one line per run."""
    labels = labels or [r.name for r in runs]
    fig = Figure(figsize=(10, 7 + (_legend_height(10, labels) if len(runs) > 1 else 0)), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    colors = _colors(len(runs))
    for ax, tag in zip(axes, CURVES):
        for run, label, color in zip(runs, labels, colors):
            if tag in run.curves:
                ax.plot(*run.curves[tag], marker="o", markersize=3, color=color, label=label)
        _panel(ax, tag)
    if len(runs) == 1 and "val/mAP" in runs[0].curves:
        x, y = runs[0].curves["val/mAP"]
        best = int(np.nanargmax(y))
        axes[2].set_title(f"val mAP (best {y[best]:.4f} at epoch {x[best]:g})")
        axes[2].plot([x[best]], [y[best]], marker="*", markersize=12, color="tab:red", linestyle="none")
    shown = runs[0].dir if len(runs) == 1 else runs[0].dir.parent
    fig.suptitle(f"training curves: {'/'.join(shown.resolve().parts[-2:])}")
    if len(runs) > 1:
        _legend(fig, axes[0])
    return _save(fig, path)


def plot_swept_key(runs: list[Run], key: str, varying: list[str], path: Path) -> Path:
    """val mAP, val mAUC and train loss per epoch, one line per run, coloured by `key`'s value.

    When other keys vary too, runs sharing a value of `key` share its colour, differ in line style,
    and are labelled with all their varying overrides.
    """
    params = [r.params() for r in runs]
    values = _label_values([p.get(key) for p in params])
    color_of = dict(zip(values, _colors(len(values))))
    others = [k for k in varying if k != key]
    rest = list(dict.fromkeys(tuple(p.get(k) for k in others) for p in params))
    style_of = {r: LINESTYLES[i % len(LINESTYLES)] for i, r in enumerate(rest)}

    def label(p: dict) -> str:
        if not others:
            return str(p.get(key, "(default)"))
        return " ".join(f"{k}={p[k]}" if k in p else f"{k}=(default)" for k in varying)

    legend_labels = list(dict.fromkeys(label(p) for p in params))
    fig = Figure(figsize=(14, 4.4 + _legend_height(14, legend_labels)), layout="constrained")
    axes = fig.subplots(1, len(SWEEP_PANELS))
    # runs in value order, so the legend reads in the same order as the values
    order = sorted(range(len(runs)), key=lambda i: (values.index(params[i].get(key)), i))
    for ax, tag in zip(axes, SWEEP_PANELS):
        seen = set()
        for i in order:
            run, p = runs[i], params[i]
            if tag not in run.curves:
                continue
            lab = label(p)
            ax.plot(*run.curves[tag], marker="o", markersize=3, color=color_of[p.get(key)],
                    linestyle=style_of[tuple(p.get(k) for k in others)],
                    label=lab if lab not in seen else "_nolegend_")
            seen.add(lab)
        _panel(ax, tag)
    fig.suptitle(_title(key))
    _legend(fig, axes[0], title=None if others else key)
    return _save(fig, path)


def _title(key: str) -> str:
    name = TITLES.get(key, key)
    return key if name == key else f"{name} ({key})"


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


# ---- the report
def _metrics_table(run_dir: Path) -> list[str]:
    mfile = run_dir / "metrics.json"
    if not mfile.exists():
        return ["_no metrics.json (killed or still running)_"]
    m = json.loads(mfile.read_text())
    lines = ["| metric | value |", "|---|---|"]
    for k, v in m.items():
        cell = fmt(v).replace("|", "\\|")
        lines.append(f"| {k} | {cell} |")
    return lines


def _curves_table(runs: list[Run], labels: list[str]) -> list[str]:
    """Per run, from its curves: epochs logged, last and best val mAP (and its epoch), last val mAUC."""
    lines = ["| run | overrides | epochs | last val/mAP | best val/mAP | at epoch | last val/mAUC |",
             "|---|---|---|---|---|---|---|"]
    for run, label in zip(runs, labels):
        cells = [run.name, label if label != run.name else "", "", "", "", "", ""]
        if "val/mAP" in run.curves:
            x, y = run.curves["val/mAP"]
            best = int(np.nanargmax(y))
            cells[2:6] = [f"{x[-1]:g}", fmt(float(y[-1])), fmt(float(y[best])), f"{x[best]:g}"]
        if "val/mAUC" in run.curves:
            cells[6] = fmt(float(run.curves["val/mAUC"][1][-1]))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _sweep_table(root: Path, runs: list[Run], labels: list[str]) -> list[str]:
    """aer.sweep's table of the jobs, refreshed (a killed sweep never wrote one); runs made without
    Hydra's CLI have no job dirs for it to read, so their table comes from their curves."""
    if not collect(root):
        return _curves_table(runs, labels)
    try:
        write_summary(root)
    except OSError as e:  # a read-only sweep dir: show the table the sweep wrote, if any
        log.warning("could not refresh %s: %s", root / "summary.md", e)
    summary = root / "summary.md"
    return summary.read_text().splitlines() if summary.exists() else ["_no summary.md_"]


def _runs_of(dirs: list[Path], out_dir: Path) -> list[Run]:
    """The runs of one dir, named as in it; of several dirs, named `<dir>/<job>` so that they stay apart."""
    if len(dirs) == 1:
        return find_runs(dirs[0], exclude=out_dir)
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):  # job dirs of different sweeps (0, 1, ...): name them with their sweep
        names = ["/".join(d.resolve().parts[-2:]) for d in dirs]
    runs = []
    for d, dname in zip(dirs, names):
        for run in find_runs(d, exclude=out_dir):
            run.name = dname if run.name == "." else f"{dname}/{run.name}"
            runs.append(run)
    return runs


def _check_keys(keys: list[str], runs: list[Run]) -> None:
    known = list(dict.fromkeys(k for r in runs for k in r.params()))
    for key in keys:
        if key not in known:
            raise ValueError(f"--by {key}: no run has this override; theirs: {', '.join(known) or 'none'}")


def make_report(dir: str | os.PathLike | list, out: str | os.PathLike | None = None,
                by: list[str] | None = None) -> list[Path]:
    """Writes the PNGs and `report.md` for a run or sweep dir into `out` (default DIR/report); their paths.

    `dir` may be a list of run or sweep dirs (then `out` is required): their runs are compared as one
    sweep. `by` names the overrides that label the runs and get a figure each (default: every override
    whose value differs across the runs, which for runs from different sweeps includes paths and devices).
    """
    dirs = [Path(d) for d in (dir if isinstance(dir, (list, tuple)) else [dir])]
    if not dirs:
        raise ValueError("no run or sweep dir given")
    if len(dirs) > 1 and out is None:
        raise ValueError("several dirs: say where the report goes with --out")
    root = dirs[0]
    out_dir = Path(out) if out is not None else root / "report"
    runs = _runs_of(dirs, out_dir)
    if by:
        _check_keys(by, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    is_sweep = len(runs) > 1 or any(root.glob("*/.hydra")) or (root / "multirun.yaml").exists()
    varying = list(by) if by else swept_keys(runs)
    labels = [" ".join(f"{k}={r.params().get(k, '(default)')}" for k in varying) or r.name for r in runs]

    written = [plot_curves(runs, out_dir / "curves.png", labels)]
    shown = ", ".join(str(d.resolve()) for d in dirs)
    md = [f"# Report: {shown}", ""]
    if is_sweep:
        table = _sweep_table(root, runs, labels) if len(dirs) == 1 else _curves_table(runs, labels)
        md += [f"{len(runs)} runs with curves; swept: {', '.join(f'`{k}`' for k in varying) or 'nothing'}.", "",
               "## Jobs", "", *table, ""]
        for key in varying:
            path = plot_swept_key(runs, key, varying, out_dir / f"sweep_{_safe(key)}.png")
            written.append(path)
            md += [f"## By {_title(key).replace(f'({key})', f'(`{key}`)')}", "", f"![{key}]({path.name})", ""]
        md += ["## All runs", "", "![curves](curves.png)", ""]
    else:
        md += ["## Metrics", "", *_metrics_table(runs[0].dir), "", "## Curves", "", "![curves](curves.png)", ""]
        if runs[0].overrides:
            what = "Overrides" if (runs[0].dir / ".hydra").is_dir() else "Hyperparameters"
            md[2:2] = [f"{what}: `" + " ".join(runs[0].overrides) + "`", ""]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(md))
    written.append(report)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aer.report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="+", help="a run dir (from train.py) or a sweep dir (from train.py -m); "
                                                "several: their runs compared as one sweep (needs --out)")
    parser.add_argument("--out", help="folder for the PNGs and report.md (default: DIR/report)")
    parser.add_argument("--by", help="comma-separated overrides that label the runs, a figure each "
                                     "(default: every override that differs across runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # "No path found after <event file>" per run
    return run_cli(lambda: make_report(args.dir, args.out, parse_keys(args.by)))


def parse_keys(text: str | None) -> list[str] | None:
    """`--by a,b` as a list of keys; None when not given."""
    return [k.strip() for k in text.split(",") if k.strip()] if text else None


def run_cli(make) -> int:
    """Runs `make()` and prints the paths it wrote; a user error becomes one line and status 1."""
    try:
        paths = make()
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())

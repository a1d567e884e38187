"""`python -m aer.compare DIR [DIR ...] --out OUT`: a sweep's jobs grouped over seeds, mean ± sd.

Jobs are grouped by their swept overrides other than `seed` (aer.runs.swept_keys); per group it
reports n and mean ± sd of every number in the jobs' metrics.json, and plots the per-epoch curves
(from the TensorBoard events, as aer.report reads them) as the mean over seeds with a min–max band;
epochs.md adds, from the same curves, the last and best val mAP, the epoch of the best and the first
epoch at `--reach` (per seed), over each run's first `--epochs` epochs when given.

`python -m aer.compare --ckpts A B --split val --out OUT` scores two checkpoints on the same clips
and compares them with a paired bootstrap (both models scored on each resample of the clips): the
difference B − A in mAP, mAUC and d′, its interval and a two-sided p-value; plus per-class AP
against the classes' training positives and the classes that gain or lose most.
`--preds A B` does the same for two predictions.h5 that evaluate.py or ensemble.py wrote (an ensemble
against a single model or another ensemble), the class names and training positives read from the
per_class.csv beside each.

Everything is written into --out only; the input dirs are read, never written.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from aer.files import atomic_write_text, write_json
from aer.report.cli import parse_keys, printed
from aer.report.events import traced_runs
from aer.report.plots import SWEEP_PANELS, colors, legend, legend_height, panel, save_png
from aer.runs import RUN_MARKERS, Run, find_runs, fmt, swept_keys
from aer.settings import CompareConfig

log = logging.getLogger(__name__)

SEED = "seed"


# ---- grouping over seeds
def sweep_runs(dirs: list[Path]) -> list[Run]:
    """The runs under every dir of `dirs` (aer.runs.find_runs), in order, each named as in its dir."""
    runs = []
    for d in dirs:
        found = find_runs(d)
        if not found:
            raise FileNotFoundError(f"{d}: no run dirs under it (folders holding {', '.join(RUN_MARKERS)})")
        runs += found
    return runs


def group_jobs(runs: list[Run], by: list[str] | None = None) -> tuple[list[str], dict[tuple, list[Run]]]:
    """(the grouping keys, {their values: the runs}), keys = aer.runs' swept keys other than seed."""
    keys = [k.lstrip("+") for k in (by or swept_keys(runs))]
    keys = list(dict.fromkeys(k for k in keys if k != SEED))
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(r.params.get(k, "(default)") for k in keys), []).append(r)
    return keys, groups


def metric_stats(runs: list[Run]) -> dict[str, tuple[int, float, float]]:
    """Per numeric metric of the finished jobs: (n, mean, sd over jobs; sd NaN for one job)."""
    ok = [r.metrics for r in runs if r.status == "ok"]
    names = list(dict.fromkeys(k for r in ok for k, v in r.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)))
    out = {}
    for k in names:
        v = np.array([float(r[k]) for r in ok if isinstance(r.get(k), (int, float)) and r[k] is not None])
        v = v[np.isfinite(v)]
        if len(v):
            out[k] = (len(v), float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"))
    return out


def _pm(mean: float, sd: float) -> str:
    return fmt(mean) if math.isnan(sd) else f"{fmt(mean)} ± {fmt(sd)}"


def _label(keys: list[str], values: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(keys, values)) or "all jobs"


def write_group_tables(out: Path, keys: list[str], groups: dict, stats: dict) -> list[Path]:
    """groups.md (mean ± sd) and groups.csv (n, mean, sd columns per metric)."""
    metrics = list(dict.fromkeys(m for s in stats.values() for m in s))
    head = [*keys, "n", "seeds", *metrics]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*keys, "n", "seeds", *(f"{m}_{s}" for m in metrics for s in ("n", "mean", "sd"))])
    for values, rows in groups.items():
        s = stats[values]
        seeds = " ".join(r.params.get(SEED, "(default)") for r in rows if r.status == "ok")
        n = sum(r.status == "ok" for r in rows)
        md.append("| " + " | ".join([*values, str(n), seeds, *(_pm(*s[m][1:]) if m in s else "" for m in metrics)])
                  + " |")
        w.writerow([*values, n, seeds, *(x for m in metrics for x in (s[m] if m in s else ("", "", "")))])
    atomic_write_text(out / "groups.md", "\n".join(md) + "\n")
    atomic_write_text(out / "groups.csv", buf.getvalue())
    return [out / "groups.md", out / "groups.csv"]


# ---- curves over seeds
def band(curves: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per epoch that any run logged: n runs, mean, sd, min and max over the runs that logged it."""
    epochs = np.array(sorted({float(e) for x, _ in curves for e in x}))
    table = np.full((len(curves), len(epochs)), np.nan)
    for i, (x, y) in enumerate(curves):
        table[i, np.searchsorted(epochs, x)] = y
    n = (~np.isnan(table)).sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch only one run logged has no sd
        sd = np.where(n > 1, np.nanstd(table, axis=0, ddof=1), np.nan)
    return {"epoch": epochs, "n": n, "mean": np.nanmean(table, 0), "sd": sd,
            "min": np.nanmin(table, 0), "max": np.nanmax(table, 0)}


def first_epochs(curves: dict, epochs: int | None) -> dict:
    """A run's curves cut to its first `epochs` epochs (all of them when None)."""
    if epochs is None:
        return curves
    return {tag: (x[x <= epochs], y[x <= epochs]) for tag, (x, y) in curves.items()}


def epoch_rows(groups: dict, curves_by_dir: dict, reach: float) -> list[dict]:
    """Per run with a val/mAP curve: its group, seed, epochs, last and best val/mAP, the epoch of the best,
    the first epoch at or above `reach` (None if never), the last val/mAUC."""
    rows = []
    for values, runs in groups.items():
        for r in runs:
            c = curves_by_dir.get(r.dir.resolve(), {})
            if "val/mAP" not in c or not len(c["val/mAP"][0]):
                continue
            x, y = c["val/mAP"]
            hit = np.flatnonzero(y >= reach)
            auc = c.get("val/mAUC")
            rows.append({"group": values, "seed": r.params.get(SEED, "(default)"), "epochs": int(x[-1]),
                         "last": float(y[-1]), "best": float(y.max()), "best_epoch": int(x[int(y.argmax())]),
                         "reached": int(x[hit[0]]) if len(hit) else None,
                         "auc_last": float(auc[1][-1]) if auc is not None and len(auc[1]) else None})
    return rows


def write_epoch_tables(out: Path, keys: list[str], rows: list[dict], reach: float) -> list[Path]:
    """epochs.md (per group: last and best val mAP, mean ± sd; the best's epoch and the first epoch at
    `reach`, per seed; the last mAUC) and epochs.csv (one row per run)."""
    head = [*keys, "n", "seeds", "epochs", "val mAP last", "val mAP best", "best at epoch",
            f"first epoch ≥ {reach:g}", "val mAUC last"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pm(v: list) -> str:
        v = [x for x in v if x is not None]
        return "" if not v else _pm(float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"))

    for values in dict.fromkeys(r["group"] for r in rows):
        g = [r for r in rows if r["group"] == values]
        cells = [*values, str(len(g)), " ".join(r["seed"] for r in g), " ".join(sorted({str(r["epochs"]) for r in g})),
                 pm([r["last"] for r in g]), pm([r["best"] for r in g]), ", ".join(str(r["best_epoch"]) for r in g),
                 ", ".join(str(r["reached"]) if r["reached"] is not None else "—" for r in g),
                 pm([r["auc_last"] for r in g])]
        md.append("| " + " | ".join(cells) + " |")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*keys, "seed", "epochs", "val_mAP_last", "val_mAP_best", "best_epoch", "first_epoch_at_reach",
                "val_mAUC_last"])
    for r in rows:
        w.writerow([*r["group"], r["seed"], r["epochs"], r["last"], r["best"], r["best_epoch"],
                    "" if r["reached"] is None else r["reached"], "" if r["auc_last"] is None else r["auc_last"]])
    atomic_write_text(out / "epochs.md", "\n".join(md) + "\n")
    atomic_write_text(out / "epochs.csv", buf.getvalue())
    return [out / "epochs.md", out / "epochs.csv"]


def group_curves(groups: dict, curves_by_dir: dict) -> dict[tuple, dict[str, dict]]:
    """{group: {tag: band}} from the runs' TensorBoard curves ({resolved run dir: curves})."""
    out = {}
    for values, runs in groups.items():
        curves = [curves_by_dir[r.dir.resolve()] for r in runs if r.dir.resolve() in curves_by_dir]
        tags = list(dict.fromkeys(t for c in curves for t in c))
        out[values] = {t: band([c[t] for c in curves if t in c]) for t in tags}
    return out


def write_curves(out: Path, keys: list[str], curves: dict) -> list[Path]:
    """curves.csv (every band) and curves.png: per panel, each group's mean with its min–max band."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*keys, "tag", "epoch", "n", "mean", "sd", "min", "max"])
    for values, tags in curves.items():
        for tag, b in tags.items():
            for i in range(len(b["epoch"])):
                w.writerow([*values, tag, f"{b['epoch'][i]:g}", int(b["n"][i]),
                            *(f"{b[k][i]:.6g}" if np.isfinite(b[k][i]) else "" for k in ("mean", "sd", "min", "max"))])
    atomic_write_text(out / "curves.csv", buf.getvalue())
    labels = [_label(keys, v) for v in curves]
    fig = Figure(figsize=(14, 4.4 + legend_height(14, labels)), layout="constrained")
    axes = fig.subplots(1, len(SWEEP_PANELS))
    for ax, tag in zip(axes, SWEEP_PANELS):
        for tags, label, color in zip(curves.values(), labels, colors(len(curves))):
            if tag in tags:
                b = tags[tag]
                ax.plot(b["epoch"], b["mean"], color=color, marker="o", markersize=2, label=label)
                ax.fill_between(b["epoch"], b["min"], b["max"], color=color, alpha=0.2, linewidth=0)
        panel(ax, tag)
    fig.suptitle("mean over seeds, band: min–max")
    legend(fig, axes[0])
    return [out / "curves.csv", save_png(fig, out / "curves.png")]


def compare_sweeps(dirs: list[Path], out: Path, by: list[str] | None = None, epochs: int | None = None,
                   reach: float = 0.20) -> list[Path]:
    """The seed-grouped tables and curves of the jobs under `dirs`, written into `out`; the curves and the
    epoch table over the first `epochs` epochs of each run (all when None), metrics.json's numbers as they are."""
    runs = sweep_runs(dirs)
    keys, groups = group_jobs(runs, by)
    stats = {v: metric_stats(r) for v, r in groups.items()}
    curves_by_dir = {}
    for d in dirs:
        try:
            curves_by_dir.update({t.run.dir.resolve(): first_epochs(t.curves, epochs)
                                  for t in traced_runs(d, exclude=out)})
        except FileNotFoundError as e:  # metrics without curves: the tables still stand
            log.warning("%s", e)
    out.mkdir(parents=True, exist_ok=True)
    written = write_group_tables(out, keys, groups, stats)
    curves = group_curves(groups, curves_by_dir)
    if any(curves.values()):
        written += write_curves(out, keys, curves)
    rows = epoch_rows(groups, curves_by_dir, reach)
    if rows:
        written += write_epoch_tables(out, keys, rows, reach)
    md = [f"# Compare: {', '.join(str(d.resolve()) for d in dirs)}", "",
          f"{len(runs)} jobs in {len(groups)} groups by {', '.join(f'`{k}`' for k in keys) or 'nothing'} "
          f"(over `{SEED}`); mean ± sd over the finished jobs of each group.", "",
          *(out / "groups.md").read_text().splitlines(), ""]
    if rows:
        md += [f"Per epoch, from the TensorBoard events{f' (the first {epochs} epochs)' if epochs else ''}:", "",
               *(out / "epochs.md").read_text().splitlines(), ""]
    if (out / "curves.png").exists():
        md += ["![curves](curves.png)", ""]
    atomic_write_text(out / "compare.md", "\n".join(md))
    return [*written, out / "compare.md"]


# ---- two checkpoints on the same clips
def score_checkpoints(paths: list[Path], split: str, overrides: dict) -> dict:
    """Both checkpoints' probabilities on the same clips, the labels, and per-class training positives."""
    from aer.checkpoint import Checkpoint
    from aer.inference import predict_split

    probs, served = [], []
    for p in paths:
        ckpt = Checkpoint.load(p)
        dm = ckpt.datamodule(split, overrides)
        if split == "val":
            ckpt.check_dev_split(dm, "--split val")
        pr, labels, vids = predict_split(ckpt.tagger(), dm)
        probs.append(pr)
        served.append((labels, vids, dm))
    (labels, vids, dm), (labels_b, vids_b, _) = served
    if not (np.array_equal(vids, vids_b) and np.array_equal(labels, labels_b)):
        raise ValueError(f"{paths[0]} and {paths[1]} score different clips on split={split} ({len(vids)} and "
                         f"{len(vids_b)}): a paired comparison needs models trained on the same data and split")
    return {"probs": probs, "labels": labels, "train_positives": dm.train_positives(),
            "class_names": dm.class_names()}


def write_paired(out: Path, paths: list[Path], split: str, paired: dict) -> list[Path]:
    lines = [f"# Paired comparison on split={split}", "", f"A = `{paths[0]}`", "", f"B = `{paths[1]}`", "",
             f"{paired['mAP']['replicates']} bootstrap replicates of the {paired['clips']} clips, both models "
             f"scored on each; interval: {paired['level']:.0%} percentile.", "",
             "| metric | A | B | B − A | interval | p |", "|---|---:|---:|---:|---|---:|"]
    for k in ("mAP", "mAUC", "dprime"):
        d = paired[k]
        lines.append(f"| {k} | {d['a']:.4f} | {d['b']:.4f} | {d['diff']:+.4f} | "
                     f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | {d['p']:.3g} |")
    atomic_write_text(out / "paired.md", "\n".join(lines) + "\n")
    write_json(out / "paired.json", {"a": str(paths[0]), "b": str(paths[1]), "split": split, **paired})
    return [out / "paired.md", out / "paired.json"]


def load_predictions(path: Path) -> dict:
    """probs, labels and clip ids of an evaluate.py / ensemble.py predictions.h5, its split, and the class
    names and training positives of the per_class.csv written beside it."""
    from aer.scoring import read_predictions

    pred = read_predictions(path)
    probs = pred["probs"]
    table = path.parent / "per_class.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no such file; it is written with {path.name} and names the classes")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != probs.shape[1] or not rows or not {"mid", "name", "train_positives"} <= set(rows[0]):
        raise ValueError(f"{table}: expected {probs.shape[1]} rows with mid, name and train_positives, "
                         f"got {len(rows)}")
    train = [r["train_positives"] for r in rows]
    return {**{k: pred[k] for k in ("probs", "labels", "video_id")}, "split": str(pred["attrs"].get("split", "")),
            "class_names": [(r["mid"], r["name"]) for r in rows],
            "train_positives": None if "" in train else np.asarray([int(t) for t in train])}


def paired_predictions(paths: list[Path]) -> dict:
    """Two predictions files as score_checkpoints' result: refused unless they score the same clips."""
    a, b = (load_predictions(p) for p in paths)
    if not (np.array_equal(a["video_id"], b["video_id"]) and np.array_equal(a["labels"], b["labels"])):
        raise ValueError(f"{paths[0]} and {paths[1]} score different clips ({len(a['video_id'])} and "
                         f"{len(b['video_id'])}, split {a['split'] or '?'} and {b['split'] or '?'}): "
                         f"a paired comparison needs the same clips")
    if a["class_names"] != b["class_names"]:
        raise ValueError(f"{paths[0]} and {paths[1]}: their per_class.csv name different classes")
    return {"probs": [a["probs"], b["probs"]], "labels": a["labels"], "split": a["split"],
            "train_positives": a["train_positives"], "class_names": a["class_names"]}


def write_class_diff(out: Path, result: dict, ap: list[np.ndarray], auc: list[np.ndarray]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "mid", "name", "train_positives", "positives", "AP_a", "AP_b", "AP_diff", "AUC_a", "AUC_b"])
    pos = result["labels"].sum(0)
    num = lambda v: "" if not np.isfinite(v) else f"{v:.6g}"  # noqa: E731
    for i, (mid, name) in enumerate(result["class_names"]):
        train = "" if result["train_positives"] is None else int(result["train_positives"][i])
        w.writerow([i, mid, name, train, int(pos[i]), num(ap[0][i]), num(ap[1][i]),
                    num(ap[1][i] - ap[0][i]), num(auc[0][i]), num(auc[1][i])])
    atomic_write_text(out / "per_class_diff.csv", buf.getvalue())
    return out / "per_class_diff.csv"


def plot_ap_vs_positives(path: Path, train_positives: np.ndarray, aps: list[np.ndarray], names: list[str]) -> Path:
    """Each class's AP against its positives in the training clips (log x), one colour per model."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    x = np.maximum(train_positives, 1)  # a class with no training positive sits at 1 on the log axis
    for ap, name, color in zip(aps, names, colors(len(aps))):
        ok = np.isfinite(ap)
        ax.scatter(x[ok], ap[ok], s=8, alpha=0.5, color=color, label=f"{name} (mAP {np.mean(ap[ok]):.4f})")
    ax.set_xscale("log")
    ax.set_xlabel("positives in the training clips (log)")
    ax.set_ylabel("AP on the scored split")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)


def plot_gain_loss(path: Path, diff: np.ndarray, class_names: list[tuple[str, str]], top: int = 15) -> Path:
    """The `top` classes whose AP B − A rises most and the `top` that fall most."""
    ok = np.flatnonzero(np.isfinite(diff))
    order = ok[np.argsort(diff[ok])]
    picked = list(dict.fromkeys([*order[:top], *order[-top:][::-1]]))
    picked.sort(key=lambda i: diff[i])
    fig = Figure(figsize=(8, 0.22 * len(picked) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(picked)), diff[picked], color=["tab:red" if diff[i] < 0 else "tab:green" for i in picked])
    ax.set_yticks(range(len(picked)), [class_names[i][1][:40] for i in picked], fontsize="small")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("AP of B − AP of A")
    ax.set_title(f"classes that gain and lose most (top {top} each way)")
    ax.grid(True, axis="x", alpha=0.3)
    return save_png(fig, path)


def compare_checkpoints(paths: list[Path], split: str, out: Path, overrides: dict | None = None,
                        replicates: int = 1000, level: float = 0.95, seed: int = 0) -> list[Path]:
    if len(paths) != 2:
        raise ValueError(f"--ckpts: expected two checkpoints (A B), got {len(paths)}")
    return compare_scored(score_checkpoints(paths, split, overrides or {}), paths, split, out, replicates, level, seed)


def compare_predictions(paths: list[Path], out: Path, replicates: int = 1000, level: float = 0.95,
                        seed: int = 0) -> list[Path]:
    if len(paths) != 2:
        raise ValueError(f"--preds: expected two predictions files (A B), got {len(paths)}")
    result = paired_predictions(paths)
    return compare_scored(result, paths, result["split"] or "?", out, replicates, level, seed)


def compare_scored(result: dict, paths: list[Path], split: str, out: Path, replicates: int, level: float,
                   seed: int) -> list[Path]:
    """The paired bootstrap, per-class table and plots of two models' probabilities on the same clips."""
    import torch

    from aer.metrics import paired_bootstrap, per_class_scores

    labels = torch.from_numpy(result["labels"])
    probs = [torch.from_numpy(p) for p in result["probs"]]
    paired = paired_bootstrap(probs[0], probs[1], labels, replicates, level, seed)
    paired.update({"level": level, "seed": seed, "clips": int(len(labels))})
    scores = [per_class_scores(p, labels) for p in probs]
    ap, auc = [s[0].numpy() for s in scores], [s[1].numpy() for s in scores]
    out.mkdir(parents=True, exist_ok=True)
    written = write_paired(out, paths, split, paired)
    written.append(write_class_diff(out, result, ap, auc))
    if result["train_positives"] is not None:
        written.append(plot_ap_vs_positives(out / "ap_vs_train_positives.png", result["train_positives"], ap,
                                            ["A", "B"]))
    written.append(plot_gain_loss(out / "gain_loss.png", ap[1] - ap[0], result["class_names"]))
    return written


def parse(argv: list[str] | None = None) -> Callable[[], int]:
    parser = argparse.ArgumentParser(prog="python -m aer.compare", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="*", help="sweep dirs from train.py -m (their jobs compared as one sweep)")
    parser.add_argument("--out", help="folder for the tables and figures (never an input dir)")
    parser.add_argument("--by", help="comma-separated overrides to group by (default: the swept ones but seed)")
    parser.add_argument("--epochs", type=int, help="curves and the epoch table over each run's first N epochs")
    parser.add_argument("--reach", type=float, default=0.20,
                        help="the epoch table's first epoch with val mAP at or above this (default 0.20)")
    parser.add_argument("--ckpts", nargs=2, metavar=("A", "B"), help="two checkpoints: paired bootstrap B − A")
    parser.add_argument("--preds", nargs=2, metavar=("A", "B"),
                        help="two predictions.h5 (evaluate.py, ensemble.py) on the same clips: paired bootstrap B − A")
    parser.add_argument("--split", default="val", help="with --ckpts: the scored split, val (default) or eval")
    parser.add_argument("--data-root", help="with --ckpts: score on this data root instead of the stored one")
    parser.add_argument("--cache-dir", help="with --ckpts: where the data's HDF5 caches are")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates (default 1000)")
    parser.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = vars(parser.parse_args(argv))
    config = CompareConfig.build({k: v for k, v in args.items() if v is not None or k == "out"})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    return lambda: printed(_main(config))


def _main(c: CompareConfig) -> list[Path]:
    out = Path(c.out)
    if c.preds:
        paths = compare_predictions([Path(p).resolve() for p in c.preds], out, c.replicates, c.level, c.seed)
        print((out / "paired.md").read_text())
        return paths
    if c.ckpts:
        overrides = {k: v for k, v in (("root", c.data_root), ("cache_dir", c.cache_dir)) if v}
        paths = compare_checkpoints([Path(p).resolve() for p in c.ckpts], c.split, out, overrides,
                                    c.replicates, c.level, c.seed)
        print((out / "paired.md").read_text())
        return paths
    dirs = [Path(d) for d in c.dir]
    for d in dirs:
        if out.resolve() == d.resolve() or d.resolve() in out.resolve().parents:
            raise ValueError(f"--out {out} is inside the input dir {d}: write the comparison elsewhere")
    paths = compare_sweeps(dirs, out, parse_keys(c.by), c.epochs, c.reach)
    print((out / "groups.md").read_text())
    if (out / "epochs.md").exists():
        print((out / "epochs.md").read_text())
    return paths


if __name__ == "__main__":
    from aer.cli import compare

    sys.exit(compare())

"""The comparison's table and figure from `harness.run_all`'s results."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aer.files import atomic_path, atomic_write_text, write_json
from studies.frameworks.harness import FRAMEWORKS

THRESHOLD = 0.20  # "epochs to 0.20 val mAP": how fast each converges, in epochs
COLUMNS = ["framework", "seeds", "val mAP last", "val mAUC last", "epochs to 0.20 mAP", "train s/epoch",
           "fastest train s/epoch", "eval s/epoch", "train clips/s", "wall s (all epochs)", "threads", "versions"]


def _pm(values: list[float], digits: int = 4) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def _steady(times: list[float]) -> float:
    """Median epoch time after the first, which pays for compilation and warm-up."""
    return statistics.median(times[1:] or times)


def _fastest(times: list[float]) -> float:
    return min(times[1:] or times)


def _first_reaching(maps: list[float]) -> int | None:
    return next((i + 1 for i, m in enumerate(maps) if m >= THRESHOLD), None)


def framework_row(name: str, info: dict, n_train: int, threads: int) -> dict:
    """One table row: numbers over the seeds that ran, or "not run: why"."""
    runs = [r for r in info.get("runs", []) if r["status"] == "ok"]
    failed = [f"seed {r['seed']}: {r['error']}" for r in info.get("runs", []) if r["status"] != "ok"]
    if not runs:
        why = info.get("not_run") or "; ".join(failed) or "no runs"
        return {"framework": name, "not_run": why}
    train_s = [_steady([e["train_s"] for e in r["epochs"]]) for r in runs]
    reach = [_first_reaching([e["mAP"] for e in r["epochs"]]) for r in runs]
    return {
        "framework": name, "seeds": len(runs), "failed": failed,
        "mAP": [r["epochs"][-1]["mAP"] for r in runs], "mAUC": [r["epochs"][-1]["mAUC"] for r in runs],
        "epochs_to_threshold": reach, "train_s_epoch": statistics.mean(train_s),
        # other processes' load only ever adds time: the fastest epoch is the least disturbed one
        "train_s_fastest": min(_fastest([e["train_s"] for e in r["epochs"]]) for r in runs),
        "eval_s_epoch": statistics.mean(_steady([e["eval_s"] for e in r["epochs"]]) for r in runs),
        "clips_per_s": statistics.mean(n_train / t for t in train_s),
        "wall_s": statistics.mean(r["epochs"][-1]["elapsed_s"] for r in runs),
        "threads": threads, "thread_settings": runs[0].get("threads", {}), "versions": runs[0].get("versions", {}),
        "python": info.get("where"),
    }


def _cells(row: dict) -> list[str]:
    if "not_run" in row:
        return [row["framework"], "0", f"not run: {row['not_run']}"] + [""] * (len(COLUMNS) - 3)
    reach = [r for r in row["epochs_to_threshold"] if r is not None]
    reach_s = (f"{statistics.mean(reach):.1f}" if reach else "—") + (
        f" ({len(reach)}/{row['seeds']} seeds)" if len(reach) < row["seeds"] else "")
    versions = " ".join(f"{k} {v}" for k, v in row["versions"].items())
    return [row["framework"], str(row["seeds"]), _pm(row["mAP"]), _pm(row["mAUC"]), reach_s,
            f"{row['train_s_epoch']:.2f}", f"{row['train_s_fastest']:.2f}", f"{row['eval_s_epoch']:.3f}",
            f"{row['clips_per_s']:,.0f}",
            f"{row['wall_s']:.1f}", str(row["threads"]), versions]


def table_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    notes = [f"- {r['framework']} {f}" for r in rows for f in r.get("failed", [])]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _curves(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, elapsed seconds averaged over seeds, val mAP per seed × epoch)."""
    maps = np.array([[e["mAP"] for e in r["epochs"]] for r in runs])
    secs = np.array([[e["elapsed_s"] for e in r["epochs"]] for r in runs]).mean(0)
    return np.arange(1, maps.shape[1] + 1), secs, maps


def plot(results: dict, path: Path) -> Path:
    """val mAP against epoch and against wall seconds; the mean over seeds, the band from min to max."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    missing = []
    for name, info in results["frameworks"].items():
        runs = [r for r in info.get("runs", []) if r["status"] == "ok"]
        if not runs:
            missing.append(name)
            continue
        epochs, secs, maps = _curves(runs)
        for ax, x in zip(axes, (epochs, secs)):
            (line,) = ax.plot(x, maps.mean(0), label=f"{name} ({len(runs)} seeds)")
            ax.fill_between(x, maps.min(0), maps.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    for ax, xlabel in zip(axes, ("epoch", "wall seconds (training + validation, mean over seeds)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val mAP")
        ax.grid(True, alpha=0.3)
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    if missing:
        axes[0].plot([], [], " ", label=f"not run: {', '.join(missing)} (see table.md)")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"FC 1280-500-527 on the dev split ({results['n_train']} train / {results['n_val']} val clips), "
                 f"{results['threads']} thread(s) each; band: min–max over seeds")
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_outputs(results: dict, out: Path) -> list[dict]:
    """results.json, table.md and frameworks.png in `out`, each written whole or not at all."""
    order = sorted(results["frameworks"], key=lambda n: FRAMEWORKS.index(n) if n in FRAMEWORKS else len(FRAMEWORKS))
    rows = [framework_row(n, results["frameworks"][n], results["n_train"], results["threads"]) for n in order]
    write_json(out / "results.json", {**results, "table": rows})
    atomic_write_text(out / "table.md", table_markdown(rows))
    plot(results, out / "frameworks.png")
    return rows

"""report.md for a run or a sweep: which figures and tables it holds, written into its output dir only."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from aer.files import atomic_write_text
from aer.report.events import Traced, traced_runs
from aer.report.plots import plot_curves, plot_swept_key, safe_name, title
from aer.report.tables import curves_table, metrics_table
from aer.runs import Run, find_runs, swept_keys, write_summary


def _traced(dirs: list[Path], out_dir: Path) -> list[Traced]:
    """The runs of one dir, named as in it; of several dirs, named `<dir>/<job>` so that they stay apart."""
    if len(dirs) == 1:
        return traced_runs(dirs[0], exclude=out_dir)
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):  # job dirs of different sweeps (0, 1, ...): name them with their sweep
        names = ["/".join(d.resolve().parts[-2:]) for d in dirs]
    traced = []
    for d, dname in zip(dirs, names):
        for t in traced_runs(d, exclude=out_dir):
            name = dname if t.run.name == "." else f"{dname}/{t.run.name}"
            traced.append(Traced(replace(t.run, name=name), t.curves))
    return traced


def _check_keys(keys: list[str], runs: list[Run]) -> None:
    known = list(dict.fromkeys(k for r in runs for k in r.params))
    for key in keys:
        if key not in known:
            raise ValueError(f"--by {key}: no run has this override; theirs: {', '.join(known) or 'none'}")


def _jobs_table(dirs: list[Path], traced: list[Traced], labels: list[str], out_dir: Path) -> tuple[list[str], list]:
    """(the table of jobs, the files written for it). For one sweep dir of train.py -m jobs, aer.runs'
    summary of all of them, written afresh into the output dir as summary.md / summary.csv (a killed sweep
    never wrote one, and the sweep dir is only read); otherwise each run's numbers from its curves."""
    if len(dirs) > 1 or not any(r.recorded for r in find_runs(dirs[0], exclude=out_dir)):
        return curves_table(traced, labels), []
    write_summary(dirs[0], out_dir)
    return (out_dir / "summary.md").read_text().splitlines(), [out_dir / "summary.md", out_dir / "summary.csv"]


def _sweep_section(dirs: list[Path], traced: list[Traced], varying: list[str], labels: list[str],
                   out_dir: Path) -> tuple[list[str], list[Path]]:
    table, written = _jobs_table(dirs, traced, labels, out_dir)
    md = [f"{len(traced)} runs with curves; swept: {', '.join(f'`{k}`' for k in varying) or 'nothing'}.", "",
          "## Jobs", "", *table, ""]
    for key in varying:
        path = plot_swept_key(traced, key, varying, out_dir / f"sweep_{safe_name(key)}.png")
        written.append(path)
        md += [f"## By {title(key).replace(f'({key})', f'(`{key}`)')}", "", f"![{key}]({path.name})", ""]
    return md + ["## All runs", "", "![curves](curves.png)", ""], written


def _run_section(run: Run) -> list[str]:
    md = []
    if run.overrides:
        md += [f"{'Overrides' if run.recorded else 'Hyperparameters'}: `{' '.join(run.overrides)}`", ""]
    return md + ["## Metrics", "", *metrics_table(run), "", "## Curves", "", "![curves](curves.png)", ""]


def make_report(dir: str | os.PathLike | list, out: str | os.PathLike | None = None,
                by: list[str] | None = None) -> list[Path]:
    """Writes the PNGs and `report.md` for a run or sweep dir into `out` (default DIR/report); their paths.

    `dir` may be a list of run or sweep dirs (then `out` is required): their runs are compared as one
    sweep. `by` names the overrides that label the runs and get a figure each (default: aer.runs'
    swept keys, which for runs from different sweeps include paths and devices). Nothing is written
    outside `out`.
    """
    dirs = [Path(d) for d in (dir if isinstance(dir, (list, tuple)) else [dir])]
    if not dirs:
        raise ValueError("no run or sweep dir given")
    if len(dirs) > 1 and out is None:
        raise ValueError("several dirs: say where the report goes with --out")
    out_dir = Path(out) if out is not None else dirs[0] / "report"
    traced = _traced(dirs, out_dir)
    runs = [t.run for t in traced]
    if by:
        _check_keys(by, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    varying = list(by) if by else swept_keys(runs)
    labels = [" ".join(f"{k}={r.params.get(k, '(default)')}" for k in varying) or r.name for r in runs]
    written = [plot_curves(traced, out_dir / "curves.png", labels)]
    md = [f"# Report: {', '.join(str(d.resolve()) for d in dirs)}", ""]
    if len(runs) > 1 or runs[0].name != ".":
        section, files = _sweep_section(dirs, traced, varying, labels, out_dir)
        md, written = md + section, written + files
    else:
        md += _run_section(runs[0])
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(md))
    return [*written, report]

"""The run model: what a training run left in its dir, and how runs are found under a folder.

A run dir is a folder holding any of what train.py writes into one (RUN_MARKERS: Hydra's `.hydra/`,
`metrics.json`, `checkpoints/`, `tensorboard/`); runs do not nest, so the folders inside a run dir
are its own. The sweep summary (aer.sweep), `python -m aer.report`, `python -m aer.compare` and
ensemble.py's `sweep=DIR` all find runs with `find_runs` and compare them with `swept_keys`.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aer.errors import first_line, one_line
from aer.files import atomic_write_text

log = logging.getLogger(__name__)

RUN_MARKERS = (".hydra", "metrics.json", "checkpoints", "tensorboard")
TRAINED = RUN_MARKERS[2:]  # what only a training run writes: the other commands may re-use their own dirs
# the checkpoints train.py writes: best (monitored), last (every epoch), swa (averaged), final (final mode)
CHECKPOINTS = ("best", "last", "swa", "final")
NO_METRICS = "no metrics.json (killed or still running)"


@dataclass(frozen=True)
class Run:
    dir: Path
    name: str = "."  # relative to the folder it was found under; "." when that folder is the run
    overrides: tuple[str, ...] = ()  # as Hydra recorded them in .hydra/overrides.yaml
    params: dict[str, str] = field(default_factory=dict)  # override key -> value (see parse_override)
    metrics: dict = field(default_factory=dict)  # metrics.json; empty when it is missing or unreadable
    problem: str | None = None  # why `metrics` is empty

    @property
    def status(self) -> str | None:
        """metrics.json's status (ok, failed, diverged, pruned); failed when it has none to read."""
        return self.metrics.get("status") if self.metrics else "failed"

    @property
    def error(self) -> str | None:
        return self.metrics.get("error") or self.problem

    @property
    def recorded(self) -> bool:
        """Whether Hydra's CLI recorded the run's config (.hydra/): false for a run composed in-process."""
        return (self.dir / ".hydra").is_dir()

    def overrides_of(self, keys: set[str] | Sequence[str]) -> list[str]:
        """The run's overrides that set one of `keys`, as Hydra recorded them."""
        return [o for o in self.overrides if parse_override(o)[0] in keys]

    def checkpoint(self, kind: str) -> Path | None:
        """checkpoints/<kind>.ckpt of this run dir (kind in CHECKPOINTS), if it is there."""
        if kind not in CHECKPOINTS:
            raise ValueError(f"checkpoint kind {kind!r}: expected one of {', '.join(CHECKPOINTS)}")
        path = self.dir / "checkpoints" / f"{kind}.ckpt"
        return path if path.is_file() else None

    def result_checkpoint(self) -> Path | None:
        """The checkpoint that holds the run's result: metrics.json's best_ckpt (the best epoch, SWA's
        averaged weights, or final mode's last epoch); for a moved run dir the file of that name in its
        own checkpoints/; else best, final, then the last epoch's."""
        def recorded(key: str) -> list:
            path = self.metrics.get(key)
            return [path, self.dir / "checkpoints" / Path(path).name] if isinstance(path, str) and path else []

        cands = [*recorded("best_ckpt"), self.checkpoint("best"), self.checkpoint("final"),
                 *recorded("last_ckpt"), self.checkpoint("last")]
        return next((Path(c) for c in cands if c is not None and Path(c).is_file()), None)


RUN_LOCK = ".aer-run.lock"  # held by the process writing a run dir, for as long as it lives


def claim_run_dir(run_dir: str | os.PathLike, resume: bool, data_root: str | None = None,
                  trains: bool = True) -> Path:
    """Makes `run_dir` this process's, before anything is written there: refused (ValueError, one line) when
    it holds another run (unless `resume`: ckpt_path=last; for a command that does not train (`trains`
    false), when it holds a training run), when another process is writing it, or when it lies in a data
    folder; an OSError naming the settings that move it when it cannot be written. The lock is held until
    the process ends."""
    from aer.files import hold_lock, writable_dir

    run_dir = Path(run_dir).absolute()
    if data_root:
        root = Path(data_root).expanduser().absolute()
        if run_dir == root or root in run_dir.parents:
            raise ValueError(f"hydra.run.dir={run_dir} is inside data.root={root}: runs never go into a data "
                             f"folder; give the run another dir")
    found = ", ".join(m for m in (RUN_MARKERS if trains else TRAINED) if (run_dir / m).exists())
    if found and not resume:
        fix = "resume it with ckpt_path=last, or give" if trains else "give this command"
        raise ValueError(f"{run_dir} holds {'another' if trains else 'a training'} run ({found}): {fix} a new "
                         f"hydra.run.dir")
    writable_dir(run_dir, "run from a folder you can write, or give AER_LOG_DIR=DIR or hydra.run.dir=DIR")
    holder = hold_lock(run_dir / RUN_LOCK)
    if holder is not None:
        raise ValueError(f"{run_dir}: another run (pid {holder}) is writing into it: wait for it, or give a new "
                         f"hydra.run.dir")
    return run_dir


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a training run's dir; an ensemble's output (ensemble.json beside its metrics.json,
    as experiment=best_ensemble leaves in its sweep dir) is not one."""
    path = Path(path)
    return any((path / m).exists() for m in RUN_MARKERS) and not (path / "ensemble.json").exists()


def job_key(path: str | os.PathLike) -> list[tuple]:
    """Sorts job folders as Hydra numbers them: 2 before 10, numbers before names."""
    return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in Path(path).parts]


def read_overrides(path: str | os.PathLike) -> list[str]:
    """The override strings of a `.hydra/overrides.yaml` (none when the file is absent)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: unreadable ({one_line(e, typed=True)})") from None
    if not isinstance(lines, list) or not all(isinstance(s, str) for s in lines):
        raise ValueError(f"{path}: expected a list of override strings, as Hydra writes it")
    return lines


@functools.cache
def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def render(value) -> str:
    """A parsed override value back in Hydra's override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{render(v)}" for k, v in value.items()) + "}"
    s = str(value)
    if not s or any(c in s for c in " ,()[]{}'\"=:\\") or s.lower() in ("null", "true", "false"):
        # Hydra's quoted strings unescape a backslash only before a quote or at the end
        return "'" + re.sub(r"(\\+)(?='|$)", r"\1\1", s).replace("'", "\\'") + "'"
    return s


def parse_override(line: str, source: str = "overrides") -> tuple[str, str]:
    """(key, value) of one Hydra override string, parsed by Hydra's own override parser.

    `+key=v`, `++key=v` and `key=v` have the same key; a group's package stays in it (`group@pkg`).
    A string value is the string (Hydra records `+tag=a b` as `+tag=a\\ b`: its value is `a b`,
    as with `+tag='a b'`); any other value is its text (so `1e-3` stays `1e-3`); a deletion (`~key`)
    reads `(deleted)`.
    """
    from hydra.errors import OverrideParseException

    try:
        (o,) = _parser().parse_overrides([line])
    except OverrideParseException as e:
        raise ValueError(f"{source}: {line!r} is not a Hydra override ({first_line(e)})") from None
    key = o.key_or_group + (f"@{o.package}" if o.package else "")
    if o.is_delete():
        return key, "(deleted)"
    value = o.value()
    # the key's grammar has no "=": the first one ends it
    return key, value if isinstance(value, str) else o.input_line.partition("=")[2]


def parse_overrides(lines: Sequence[str], source: str = "overrides") -> dict[str, str]:
    """{key: value} of override strings (parse_override); a key set twice keeps its later value."""
    return dict(parse_override(line, source) for line in lines)


def read_metrics(path: str | os.PathLike) -> tuple[dict, str | None]:
    """(metrics.json's content, None), or ({}, why) when it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        return {}, NO_METRICS
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {}, f"unreadable metrics.json ({type(e).__name__}: {e})"
    return (m, None) if isinstance(m, dict) else ({}, "metrics.json is not a JSON object")


def load_run(run_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> Run:
    """The run in `run_dir`, named relative to `root` (default: the run dir itself, ".")."""
    run_dir = Path(run_dir)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = read_overrides(overrides_file)
    metrics, problem = read_metrics(run_dir / "metrics.json")
    rel = run_dir.relative_to(root) if root is not None else Path(".")
    return Run(run_dir, str(rel), tuple(overrides), parse_overrides(overrides, str(overrides_file)), metrics, problem)


def find_runs(root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Run]:
    """Every run dir under `root` (or `root` itself), in job order; none is an empty list.

    `exclude` (with what is below it) is not searched: a report's own output folder, for one.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected a run or sweep dir from train.py)")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for here, subdirs, _ in os.walk(root):
        if skip is not None and Path(here).resolve() == skip:
            subdirs[:] = []
        elif is_run_dir(here):
            found.append(Path(here))
            subdirs[:] = []  # runs do not nest: what is inside belongs to this one
    found.sort(key=lambda d: job_key(d.relative_to(root)))
    return [load_run(d, root) for d in found]


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """What a set of runs compares: the override keys whose value differs between them (a run that
    does not set a key counts as one more value, its default), in the order they first appear."""
    params = [r.params for r in runs]
    keys = list(dict.fromkeys(k for p in params for k in p))
    return [k for k in keys if len({p.get(k) for p in params}) > 1]


# ---- checkpoints given as members (ensemble.py's ckpts= and sweep=, distill.*)
def sweep_checkpoints(sweep_dir: str | Path, key: str = "sweep", exclude: Path | None = None) -> list[Path]:
    """The result checkpoint of every finished job under `sweep_dir`, in job order; others are skipped.

    Jobs are aer.runs' run dirs; a finished one has metrics.json with status ok (train.py writes it
    last; a failed or diverged job says so there). Its checkpoint is aer.runs.Run.result_checkpoint:
    metrics.json's best_ckpt, else checkpoints/best.ckpt, final.ckpt, then the last epoch's. `key`: the
    setting the folder was given as, for the errors.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{key}={root}: no such directory (expected a train.py -m sweep dir)")
    found = []
    for run in find_runs(root, exclude):
        if run.status != "ok":
            log.warning("sweep job %s: skipped, status %s (%s)", run.name, run.status, run.error or "no error")
            continue
        ckpt = run.result_checkpoint()
        if ckpt is None:
            log.warning("sweep job %s: skipped, finished but holds no checkpoint", run.name)
            continue
        found.append(ckpt.resolve())
    if not found:
        raise FileNotFoundError(f"{key}={root}: no finished job with a checkpoint (looked for metrics.json "
                                f"with status ok and checkpoints/{{best,final,last}}.ckpt in its job folders)")
    log.info("sweep %s: %d members", root, len(found))
    return found


def member_paths(ckpts, sweep: str | None, prefix: str = "", exclude: Path | None = None) -> list[Path]:
    """`ckpts` (in order), then the checkpoints of the sweep dir `sweep` (but what lies in `exclude`: the
    command's own output dir); relative paths are taken from the user's cwd. `prefix`: where the two settings
    live (ensemble.py's are top-level, train.py's `distill.`)."""
    paths = [Path(c).expanduser().absolute().resolve() for c in ckpts or []]
    if sweep:
        paths += sweep_checkpoints(Path(sweep).expanduser().absolute(), f"{prefix}sweep", exclude)
    return paths


# ---- sweep summaries: one table (markdown and CSV) of every job's metrics.json and overrides, with each
# trial's Optuna state and value in an Optuna sweep (its trials.json, written by aer.search)
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
    head = ["job", "swept", "status", *[c for c in ("state", "value") if any(c in r for r in rows)], *cols, "error",
            *(["warnings"] if any(r.get("warnings") for r in rows) else [])]
    rows = [{**r, "warnings": "; ".join(r.get("warnings") or [])} for r in rows]
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

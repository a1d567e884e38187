"""Fault soak: random kills of conversion (2 workers) and training on demo data, then the same command again.

    python bench/faults.py [--seconds 120] [--seed 0] [--workdir /tmp/aer-faults] [--clips 60000]
                           [--signals KILL[,TERM,INT]] [--scenarios convert,train,sweep,concurrent]

Once: a demo set (`python -m aer.data demo`, kept in WORKDIR for the next soak), a reference
conversion and an unkilled reference training run, each timed. Then, until --seconds have passed
(the setup is not counted; the run in flight finishes), one run at a time in a fresh folder:

- convert: `python -m aer.data convert DEMO/bal_train OUT.h5 --workers 2`, signalled after a
  random delay within the reference conversion's wall time;
- train: `train.py ... data.convert_workers=2 trainer.max_epochs=3 ckpt_path=last hydra.run.dir=RUN`,
  signalled at a random moment of the reference run's duration, or during its conversion, or the
  moment a checkpoint write's temporary file appears (one of the three at random);
- sweep: `train.py -m seed=1,2 ... hydra.sweep.dir=SWEEP`, signalled at a random moment; a sweep
  is not resumed, so the same command runs again into a new sweep dir;
- concurrent: two `train` commands started at once into the same run dir, not signalled: one must
  train, the other be refused in one line (exit 1), and the run dir hold the one run.

Each victim starts a session of its own, so whatever is still in its process group once it died
is a leftover process: counted, left alive for the re-run (as a user's machine would have it),
then killed. KILL and TERM go to the victim's pid (`kill PID`, the OOM killer), INT to its whole
group (a terminal's Ctrl-C). Then the same command runs again, unkilled:

- hang: the re-run (or a victim, after TERM/INT) neither exits within --hang-factor x the
  reference duration nor uses any CPU (its whole group) for --stall seconds;
- failed: the re-run exits nonzero;
- recovered: it exits 0 and its outputs check out: the HDF5 cache holds the reference
  conversion's arrays; metrics.json says `ok`, the epochs asked for, and a val/mAP within 1e-3 of
  the reference run's (a resumed run ends where an unkilled one ends); checkpoints/{last,best}.ckpt
  load with torch.load(weights_only=True);
- lost/corrupt: it exits 0 but an output is missing or differs (the silent failure);
- wrong exit code: a victim that TERM or INT stopped did not exit with 128 + the signal, or left no
  metrics.json saying `interrupted` (a sweep: and no summary.md).

Counted in the run's folder at the end: temporary files (`*.partial`, `.*.partial`) and `.lock`
files. A run that hung or failed gets one more try after its leftovers are killed ("ok after
cleanup": whether the state it left is usable). Logs of runs that did not recover are kept in
WORKDIR/logs. Prints a line per run and a table per scenario, and exits 0 whatever it found (a
bench, not a test); every process it started is killed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
MAP_TOL = 1e-3
ARRAYS = ("features", "labels", "lengths", "video_id", "start_time", "end_time")
PHASES = ("any", "convert", "ckpt")
WORK_MARKER = ".aer-faults"  # when a training victim is signalled


# ---- processes

def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields from the state on (the state is [0], pgrp [2], session [3]); None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def _uptime_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


@dataclass
class Group:
    """A process started in a session of its own, with whatever it forked."""

    proc: subprocess.Popen
    born: int  # clock ticks after boot, no later than the leader's start: a reused pid is not ours

    def members(self) -> dict[int, int]:
        """Live (not zombie) pids in the group -> CPU ticks used so far."""
        out = {}
        for entry in os.scandir("/proc"):
            st = _stat(int(entry.name)) if entry.name.isdigit() else None
            if (st and st[0] != "Z" and int(st[2]) == int(st[3]) == self.proc.pid
                    and int(st[19]) >= self.born):
                out[int(entry.name)] = int(st[11]) + int(st[12])
        return out

    def settle(self, seconds: float = 2.0) -> dict[int, int]:
        """The members still alive after up to `seconds` (children may take a moment to follow a dead parent)."""
        end = time.monotonic() + seconds
        while (left := self.members()) and time.monotonic() < end:
            time.sleep(0.05)
        return left

    def kill(self) -> int:
        """SIGKILLs every member, one pid at a time, and waits (boundedly) until they are gone; how many."""
        pids = self.members()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.settle(10)
        return len(pids)


GROUPS: list[Group] = []  # every group started and not yet cleaned up: killed on exit


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and a child inherits that (Python then
    # installs no KeyboardInterrupt handler): the victims must take Ctrl-C as a user's process would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(cmd: list[str], log: Path) -> Group:
    born = _uptime_ticks() - 1
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                                preexec_fn=_default_sigint)
    GROUPS.append(Group(proc, born))
    return GROUPS[-1]


def finish(*groups: Group) -> None:
    for g in groups:
        g.kill()
        if g in GROUPS:
            GROUPS.remove(g)


def wait(g: Group, timeout: float, stall: float) -> str:
    """'exit', 'timeout', or 'stall' (the whole group used no CPU for `stall` seconds)."""
    t0 = progress = time.monotonic()
    seen: dict[int, int] = {}
    while g.proc.poll() is None:
        now = time.monotonic()
        if now - t0 > timeout:
            return "timeout"
        cpu = g.members()
        if any(seen.get(pid, -1) < ticks for pid, ticks in cpu.items()):
            progress = now
        seen = cpu
        if now - progress > stall:
            return "stall"
        time.sleep(0.2)
    return "exit"


# ---- the runs

@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    demo: Path
    rng: random.Random
    ref: dict = field(default_factory=dict)          # the reference conversion's arrays
    normal: dict = field(default_factory=dict)       # scenario -> reference wall seconds
    ref_map: float = float("nan")

    def duration(self, scenario: str) -> float:
        """The scenario's unkilled wall time: measured for convert and train; a sweep is two trainings."""
        return self.normal[scenario] if scenario in self.normal else 2 * self.normal["train"]

    def timeout(self, scenario: str) -> float:
        return max(self.args.hang_factor * self.duration(scenario), 10.0)


def convert_cmd(ctx: Ctx, d: Path) -> list[str]:
    return [sys.executable, "-m", "aer.data", "convert", str(ctx.demo / "bal_train"), str(d / "out.h5"),
            "--workers", "2"]


def _train_args(ctx: Ctx, d: Path) -> list[str]:
    a = ctx.args
    return [f"data.root={ctx.demo}", f"data.demo.clips={a.clips}", f"data.cache_dir={d / 'cache'}",
            "data.convert_workers=2", f"data.batch_size={a.batch_size}", f"trainer.max_epochs={a.epochs}",
            f"paths.log_dir={d}", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
            f"threads={a.threads}"]


def train_cmd(ctx: Ctx, d: Path, again: bool = False) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *_train_args(ctx, d), "ckpt_path=last",
            f"hydra.run.dir={d / 'run'}"]


def sweep_cmd(ctx: Ctx, d: Path, again: bool = False) -> list[str]:
    """A two-job sweep; run again, into a new sweep dir (a sweep dir that holds runs is refused)."""
    return [sys.executable, str(ROOT / "train.py"), "-m", "seed=1,2", *_train_args(ctx, d),
            f"hydra.sweep.dir={d / ('sweep2' if again else 'sweep')}"]


COMMANDS = {"convert": lambda ctx, d, again=False: convert_cmd(ctx, d), "train": train_cmd, "sweep": sweep_cmd,
            "concurrent": train_cmd}


def check_cache(path: Path, ref: dict) -> list[str]:
    from aer.data.convert import load_split

    if not path.is_file():
        return [f"{path.name} missing"]
    try:
        got = load_split(path)
    except (OSError, KeyError, ValueError) as e:
        return [f"{path.name} unreadable: {e}"]
    import numpy as np

    diff = [k for k in ARRAYS if not np.array_equal(got[k], ref[k])]
    return [f"{path.name} differs from the reference in {', '.join(diff)}"] if diff else []


def check_train(ctx: Ctx, d: Path) -> list[str]:
    import torch

    problems = check_cache(d / "cache" / "bal_train.h5", ctx.ref)
    try:
        m = json.loads((d / "run" / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        m, problems = {}, [*problems, f"metrics.json: {e}"]
    mAP = m.get("val/mAP")
    if m and (m.get("status") != "ok" or m.get("epochs") != ctx.args.epochs or not isinstance(mAP, float)
              or not math.isfinite(mAP)):
        problems.append(f"metrics.json: status {m.get('status')}, epochs {m.get('epochs')}, val/mAP {mAP}")
    elif m and abs(mAP - ctx.ref_map) > MAP_TOL:
        problems.append(f"val/mAP {mAP:.4f}, the reference run's {ctx.ref_map:.4f}")
    for name in ("last.ckpt", "best.ckpt"):
        try:
            ckpt = torch.load(d / "run" / "checkpoints" / name, weights_only=True, map_location="cpu")
            if "state_dict" not in ckpt:
                problems.append(f"{name}: no state_dict")
        except Exception as e:  # noqa: BLE001 — any failure to load is what is counted
            problems.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return problems


def check_sweep(ctx: Ctx, d: Path) -> list[str]:
    """The re-run sweep's jobs: both finished, their epochs, their checkpoints loadable."""
    import torch

    problems = []
    for job in ("0", "1"):
        run = d / "sweep2" / job
        try:
            m = json.loads((run / "metrics.json").read_text())
        except (OSError, ValueError) as e:
            problems.append(f"job {job}: metrics.json: {e}")
            continue
        if m.get("status") != "ok" or m.get("epochs") != ctx.args.epochs:
            problems.append(f"job {job}: status {m.get('status')}, epochs {m.get('epochs')}")
        try:
            torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 — any failure to load is what is counted
            problems.append(f"job {job}: last.ckpt: {type(e).__name__}")
    return problems


def check(ctx: Ctx, scenario: str, d: Path) -> list[str]:
    if scenario == "convert":
        return check_cache(d / "out.h5", ctx.ref)
    return check_sweep(ctx, d) if scenario == "sweep" else check_train(ctx, d)


def interrupted_record(scenario: str, d: Path, sig: signal.Signals, rc: int | None) -> str:
    """What is wrong with how a TERM/INT victim ended (its exit status, its records), or ''."""
    if sig == signal.SIGKILL or scenario == "convert" and rc == 128 + sig:
        return ""
    if rc != 128 + sig:
        return f"exit {rc}, expected {128 + sig}"
    if scenario == "convert":
        return ""
    where = d / "run" if scenario == "train" else d / "sweep"
    records = [json.loads(p.read_text()) for p in where.rglob("metrics.json")] if where.is_dir() else []
    if not any(r.get("status") == "interrupted" for r in records) and (where / "checkpoints").is_dir():
        return "no metrics.json saying interrupted"
    if scenario == "sweep" and records and not (where / "summary.md").is_file():
        return "no summary.md"
    return ""


def moment(ctx: Ctx, g: Group, scenario: str, d: Path) -> str:
    """Blocks until the moment to signal the victim; says which moment it was."""
    phase = ctx.rng.choice(PHASES) if scenario == "train" else "any"
    t0 = time.monotonic()
    if phase == "any":
        delay = ctx.rng.uniform(0, ctx.duration(scenario))
    else:  # wait for the phase's temporary file: the cache being built, or a checkpoint being written
        where = d / "cache" if phase == "convert" else d / "run" / "checkpoints"
        while g.proc.poll() is None and time.monotonic() - t0 < ctx.timeout(scenario):
            if where.is_dir() and any(e.name.endswith(".partial") for e in os.scandir(where)):
                break
            time.sleep(0.002)
        delay = time.monotonic() - t0 + (ctx.rng.uniform(0, ctx.normal["convert"]) if phase == "convert" else 0)
    while g.proc.poll() is None and time.monotonic() - t0 < delay:
        time.sleep(0.005)
    return f"{'' if phase == 'any' else phase + ', '}at {time.monotonic() - t0:.1f} s"


def strike(ctx: Ctx, g: Group, sig: signal.Signals, scenario: str) -> tuple[bool, bool]:
    """Signals the victim and waits for it to die; (killed: it was alive, hung: it ignored a TERM/INT)."""
    if g.proc.poll() is not None:
        return False, False
    if sig == signal.SIGINT:
        os.killpg(g.proc.pid, sig)  # the leader is alive, so the group id is still ours
    else:
        os.kill(g.proc.pid, sig)
    if wait(g, ctx.timeout(scenario), ctx.args.stall) == "exit":
        return True, False
    g.proc.kill()
    g.proc.wait()
    return True, True


@dataclass
class Outcome:
    scenario: str
    killed: bool = False
    moment: str = ""
    hang: str = ""          # what hung, if anything
    leftover: int = 0       # processes left in the victim's (or the re-run's) group
    rc: int | None = None   # the re-run's exit status (None: it hung)
    exit_wrong: str = ""    # how the victim's end told a lie (its exit status, its records)
    problems: list[str] = field(default_factory=list)
    temp: int = 0
    locks: int = 0
    after_cleanup: bool | None = None  # only for runs that hung or failed

    @property
    def result(self) -> str:
        if self.hang:
            return "hang"
        if self.rc != 0:
            return "failed"
        if self.exit_wrong:
            return "wrong exit"
        return "lost/corrupt" if self.problems else "recovered"

    def line(self, i: int) -> str:
        what = f"signalled {self.moment}" if self.killed else f"ended before the signal ({self.moment})"
        extra = [f"{self.leftover} leftover processes" if self.leftover else "",
                 f"hung: {self.hang}" if self.hang else "", f"exit {self.rc}" if self.rc not in (0, None) else "",
                 f"victim: {self.exit_wrong}" if self.exit_wrong else "",
                 "; ".join(self.problems), f"{self.temp} temp files" if self.temp else "",
                 f"{self.locks} lock files" if self.locks else "",
                 "" if self.after_cleanup is None else f"after cleanup: {'ok' if self.after_cleanup else 'still not'}"]
        return f"#{i:<3} {self.scenario:<13} {what}: {self.result}" + "".join(f"; {e}" for e in extra if e)


def rerun(ctx: Ctx, scenario: str, d: Path, log: str) -> tuple[Group, str]:
    g = launch(COMMANDS[scenario](ctx, d, again=True), d / log)
    how = wait(g, ctx.timeout(scenario), ctx.args.stall)
    return g, how


def soak_one(ctx: Ctx, d: Path, scenario: str, sig: signal.Signals) -> Outcome:
    """One victim signalled at a random moment, the same command again, its outputs checked."""
    name = scenario.split("/")[0]
    if name == "concurrent":
        return concurrent(ctx, d)
    o = Outcome(scenario)
    victim = launch(COMMANDS[name](ctx, d), d / "victim.log")
    o.moment = moment(ctx, victim, name, d)
    o.killed, hung = strike(ctx, victim, sig, name)
    o.hang = f"the victim ignored {sig.name} for {ctx.timeout(name):.0f} s" if hung else ""
    if o.killed and not hung:
        o.exit_wrong = interrupted_record(name, d, sig, victim.proc.returncode)
    o.leftover = len(victim.settle())
    again, how = rerun(ctx, name, d, "rerun.log")  # with the victim's leftovers still alive, as a user would
    if how != "exit":
        o.hang = o.hang or (f"the re-run used no CPU for {ctx.args.stall:.0f} s" if how == "stall"
                            else f"the re-run ran past {ctx.timeout(name):.0f} s")
    else:
        o.rc = again.proc.returncode
        o.leftover += len(again.settle())
        if o.rc == 0:
            o.problems = check(ctx, name, d)
    finish(victim, again)
    if o.result in ("hang", "failed"):  # is the state it left usable once its processes are gone?
        last, how = rerun(ctx, name, d, "cleanup.log")
        o.after_cleanup = how == "exit" and last.proc.returncode == 0 and not check(ctx, name, d)
        finish(last)
    o.temp = sum(1 for p in d.rglob("*.partial"))  # pathlib's * matches dot-files too
    o.locks = sum(1 for p in d.rglob("*.lock") if p.name != ".aer-run.lock")  # a run dir's own lock file stays
    return o


def concurrent(ctx: Ctx, d: Path) -> Outcome:
    """Two identical training commands into one run dir at once: one trains, the other is refused."""
    o = Outcome("concurrent", moment="started together")
    pair = [launch(train_cmd(ctx, d), d / f"run{i}.log") for i in (0, 1)]
    ends = [wait(g, ctx.timeout("train"), ctx.args.stall) for g in pair]
    if any(e != "exit" for e in ends):
        o.hang = "a run of the pair did not end"
    else:
        codes = sorted(g.proc.returncode for g in pair)
        o.rc = 0 if codes == [0, 1] else codes[-1] or codes[0]
        refused = [d / f"run{i}.log" for i, g in enumerate(pair) if g.proc.returncode == 1]
        last = refused[0].read_text(errors="replace").strip().splitlines()[-1:] if refused else []
        if o.rc == 0 and not (last and last[0].startswith("error: ") and str(d / "run") in last[0]):
            o.exit_wrong = f"the refused run said {last}"
        if o.rc == 0:
            o.problems = check_train(ctx, d)
    for g in pair:
        o.leftover += len(g.settle())
    finish(*pair)
    o.temp = sum(1 for p in d.rglob("*.partial"))
    o.locks = sum(1 for p in d.rglob("*.lock") if p.name != ".aer-run.lock")  # a run dir's own lock file stays
    return o


# ---- setup

def ensure_demo(work: Path, clips: int) -> Path:
    from aer.data.demo import MARKER

    demo = work / f"demo-{clips}"
    marker = demo / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("clips") == clips:
        return demo
    shutil.rmtree(demo, ignore_errors=True)  # ours: a set left half-written by an interrupted soak
    print(f"generating {clips:,} demo clips in {demo} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "aer.data", "demo", str(demo), "--clips", str(clips)],
                   cwd=ROOT, check=True, timeout=1800, stdout=subprocess.DEVNULL)
    return demo


def reference(ctx: Ctx, scenario: str) -> Path:
    """The scenario's command, unkilled, once: its wall time, and the outputs to compare with."""
    d = ctx.work / "ref" / scenario
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.monotonic()
    g = launch(COMMANDS[scenario](ctx, d), d / "run.log")
    how = wait(g, 1800, 120)
    finish(g)
    if how != "exit" or g.proc.returncode != 0:
        tail = (d / "run.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"the reference {scenario} run did not finish ({how}, exit {g.proc.returncode}); "
                         f"nothing to soak. Its log ends:\n{tail}")
    ctx.normal[scenario] = time.monotonic() - t0
    return d


def setup(args: argparse.Namespace) -> Ctx:
    from aer.data.convert import load_split

    work = Path(args.workdir).expanduser().resolve()
    if work == SHARED.resolve() or SHARED.resolve() in work.parents:
        raise SystemExit(f"--workdir {work}: inside {SHARED}, which is read-only; pick a folder under /tmp")
    # It deletes and rewrites what it finds in there: only in a folder it made (or an empty one).
    if work.is_dir() and any(work.iterdir()) and not (work / WORK_MARKER).exists():
        raise SystemExit(f"--workdir {work}: not empty and not made by bench/faults.py (no {WORK_MARKER}); "
                         f"pick a new folder")
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARKER).touch()
    ctx = Ctx(args, work, ensure_demo(work, args.clips), random.Random(args.seed))
    ctx.ref = load_split(reference(ctx, "convert") / "out.h5")
    if {"train", "sweep", "concurrent"} & set(args.scenarios):
        d = reference(ctx, "train")
        if problems := check_cache(d / "cache" / "bal_train.h5", ctx.ref):
            raise SystemExit(f"the reference training run's cache is not the reference conversion: {problems}")
        ctx.ref_map = json.loads((d / "run" / "metrics.json").read_text())["val/mAP"]
    print(f"reference: convert {ctx.normal['convert']:.1f} s ({args.clips:,} clips, 2 workers)"
          + (f", train {ctx.normal['train']:.1f} s (val/mAP {ctx.ref_map:.4f})" if "train" in ctx.normal else "")
          + f"; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    return ctx


# ---- the soak

COLUMNS = ("runs", "killed", "recovered", "hangs", "failed", "wrong exits", "leftover procs", "lost/corrupt",
           "temp files", "lock files", "ok after cleanup")


def _row(outs: list[Outcome]) -> list[str]:
    retried = [o for o in outs if o.after_cleanup is not None]
    return [str(len(outs)), str(sum(o.killed for o in outs)),
            *(str(sum(o.result == r for o in outs)) for r in ("recovered", "hang", "failed", "wrong exit")),
            str(sum(o.leftover for o in outs)), str(sum(o.result == "lost/corrupt" for o in outs)),
            str(sum(o.temp for o in outs)), str(sum(o.locks for o in outs)),
            f"{sum(bool(o.after_cleanup) for o in retried)}/{len(retried)}"]


def summary(outs: list[Outcome]) -> None:
    rows = [[s, *_row([o for o in outs if o.scenario == s])] for s in sorted({o.scenario for o in outs})]
    rows.append(["all", *_row(outs)])
    head = ["scenario", *COLUMNS]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    n = len(outs)
    rec, lost = sum(o.result == "recovered" for o in outs), sum(o.result == "lost/corrupt" for o in outs)
    hangs = sum(o.result == "hang" for o in outs)
    wrong = sum(o.result == "wrong exit" for o in outs)
    met = n and rec == n and not hangs and not lost and not wrong
    print(f"runs recovered {rec}/{n}, outputs lost or corrupt {lost}, hangs {hangs}, wrong exit codes {wrong}, "
          f"leftover processes {sum(o.leftover for o in outs)} (target: all recovered, 0 lost, 0 hangs, 0 wrong exit "
          f"codes: {'MET' if met else 'MISSED'})")


def soak(ctx: Ctx, outs: list[Outcome]) -> None:
    a = ctx.args
    kinds = [f"{s}/{sig}" for s in a.scenarios for sig in a.signals if s != "concurrent"]
    kinds += ["concurrent"] * ("concurrent" in a.scenarios)
    soak_dir = ctx.work / "soak"
    for old in (soak_dir, ctx.work / "logs"):  # a previous soak's
        shutil.rmtree(old, ignore_errors=True)
    (ctx.work / "logs").mkdir()
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline and len(outs) < a.max_runs:
        kind = ctx.rng.choice(kinds)
        d = soak_dir / f"{len(outs):03d}"
        d.mkdir(parents=True)
        o = soak_one(ctx, d, kind, signal.Signals[f"SIG{kind.split('/')[1]}"] if "/" in kind else signal.SIGKILL)
        outs.append(o)
        print(o.line(len(outs) - 1), flush=True)
        if o.result != "recovered":
            for log in d.glob("*.log"):
                shutil.copy(log, ctx.work / "logs" / f"{d.name}-{kind.replace('/', '-')}-{log.name}")
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120, help="soak time, setup not counted (default 120)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the choice of scenario, signal and moment")
    ap.add_argument("--workdir", default="/tmp/aer-faults", help="demo set, references, runs (never in ../shared)")
    ap.add_argument("--clips", type=int, default=60_000,
                    help="demo clips: 60,000 take ~1.3 s to convert with 2 workers on an idle 2-core box")
    ap.add_argument("--scenarios", default="convert,train,sweep,concurrent", type=lambda s: s.split(","))
    ap.add_argument("--signals", default="KILL", type=lambda s: s.upper().split(","), help="KILL,TERM,INT")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each training run")
    ap.add_argument("--hang-factor", type=float, default=10, help="a re-run past this many x its reference time hangs")
    ap.add_argument("--stall", type=float, default=10, help="a re-run whose processes use no CPU this long hangs")
    ap.add_argument("--max-runs", type=int, default=500)
    ap.add_argument("--keep", action="store_true", help="keep every run's folder (default: only failed runs' logs)")
    args = ap.parse_args(argv)
    bad = set(args.scenarios) - set(COMMANDS) or {s for s in args.signals if s not in ("KILL", "TERM", "INT")}
    if bad:
        ap.error(f"unknown scenario or signal: {', '.join(sorted(bad))}")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    outs: list[Outcome] = []
    try:
        soak(setup(args), outs)
    except KeyboardInterrupt:
        print("interrupted: the runs so far", flush=True)
        return 130
    finally:
        while GROUPS:
            finish(GROUPS[-1])
        if outs:
            summary(outs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

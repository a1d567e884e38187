"""Where a training job's time goes: the phases of one run, and its memory per epoch, in timing.json.

`train.py` writes `timing.json` beside metrics.json (rank 0): seconds of start-up (process start to
aer's `run`: the interpreter, imports, Hydra's composition; in a multirun, from the previous job's end),
building (config check, data module, model, trainer, loggers), data (cache checked and loaded, the split
made), training (the epochs' batches), validation (the loops after each epoch, metrics included),
checkpoints (`trainer.save_checkpoint`: state gathered, serialised, written), logging (the loggers'
calls), the rest of fit (Lightning's loop, other callbacks, the progress bar) and finishing (after fit,
up to metrics.json); each validation's seconds (its share of the validation phase); the resident memory
at each epoch's end and the process's peak; the process that ran the job (pid) and the job's wall-clock
interval (began_at, from its start-up, to ended_at, in seconds since the epoch), which say where and
when the jobs of a parallel sweep ran. Each second counts in one phase only: a checkpoint written during
validation counts as a checkpoint. The interpreter's exit after metrics.json is not in it
(`bench/job_speed.py` measures it from outside). metrics.json stays as it was: sweeps, `aer.compare` and
the report read every number in it.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
import time
from collections import defaultdict

import pytorch_lightning as pl

# When this process's previous job ended (its summary was taken): a multirun's next job starts there.
_previous_end: float | None = None
PHASES = ("startup", "build", "data", "train", "validation", "checkpoints", "logging", "other_fit", "finish")
# The logger methods Lightning calls during fit; their time is the logging phase.
_LOGGER_METHODS = ("log_metrics", "log_hyperparams", "log_graph", "save", "finalize", "after_save_checkpoint")


def process_start() -> float | None:
    """The wall-clock time (time.time()) this process started, from /proc; None where there is none."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(float(ln.split()[1]) for ln in f if ln.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def rss_mb() -> float:
    """This process's resident memory now, in MB (its peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB on Linux


class JobTiming(pl.Callback):
    """Attributes a job's wall time to phases: the phase on top of a stack gets the time that passes.

    `phase(name)` (a context manager) and the fit hooks push and pop phases; fit's own time, where
    no hook says otherwise, is other_fit. During fit the trainer's save_checkpoint and the loggers'
    methods are wrapped on their instances (put back at the end of fit) to count as checkpoints and
    logging wherever Lightning calls them.
    """

    def __init__(self, started: float | None = None, clock=time.perf_counter) -> None:
        self.started = started if started is not None else _previous_end or process_start()
        self.seconds: dict[str, float] = defaultdict(float)
        self.rss_mb: list[float] = []
        self.validations: list[float] = []  # seconds of each validation loop
        self._stack: list[str] = []
        self._clock = clock
        self._t = clock()
        self._t0_wall = time.time()
        self._wrapped: list[tuple[object, str]] = []

    # ---- the clock
    def _switch(self) -> None:
        now = self._clock()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._t
        self._t = now

    def push(self, name: str) -> None:
        self._switch()
        self._stack.append(name)

    def pop(self, name: str) -> None:
        """Ends `name` (and any phase an exception left open above it)."""
        self._switch()
        if name in self._stack:
            del self._stack[len(self._stack) - 1 - self._stack[::-1].index(name):]

    class _Phase:
        def __init__(self, clock: JobTiming, name: str):
            self.clock, self.name = clock, name

        def __enter__(self):
            self.clock.push(self.name)

        def __exit__(self, *exc):
            self.clock.pop(self.name)

    def phase(self, name: str) -> _Phase:
        return self._Phase(self, name)

    def timed(self, name: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return wrapper

    # ---- fit
    def fit(self, trainer: pl.Trainer, *args, **kwargs):
        """`trainer.fit(*args, **kwargs)`, timed: data up to the setup hook, then the fit phases."""
        for obj, names, phase in ((trainer, ("save_checkpoint",), "checkpoints"),
                                  *((lg, _LOGGER_METHODS, "logging") for lg in trainer.loggers)):
            for name in names:
                if hasattr(obj, name):
                    setattr(obj, name, self.timed(phase, getattr(obj, name)))
                    self._wrapped.append((obj, name))
        self.push("other_fit")
        self.push("data")  # prepare_data and the data module's setup run before the callbacks' setup
        try:
            return trainer.fit(*args, **kwargs)
        finally:
            self.pop("other_fit")
            for obj, name in self._wrapped:
                delattr(obj, name)  # the class's method again
            self._wrapped.clear()

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.pop("data")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.push("train")

    def on_validation_start(self, trainer, pl_module) -> None:
        self.push("validation")
        self._validation_began = self.seconds["validation"]

    def on_validation_end(self, trainer, pl_module) -> None:
        self.pop("validation")
        self.validations.append(round(self.seconds["validation"] - self._validation_began, 4))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.pop("train")
        self.rss_mb.append(round(rss_mb(), 1))

    def summary(self) -> dict:
        """timing.json's content: seconds per phase (start-up from the process's start, or the previous
        job's end in a multirun), their total, memory."""
        global _previous_end
        self._switch()
        _previous_end = time.time()
        out = {f"{p}_s": round(self.seconds.get(p, 0.0), 3) for p in PHASES}
        if self.started is not None:
            out["startup_s"] = round(self._t0_wall - self.started, 3)
        out["total_s"] = round(sum(v for k, v in out.items() if k.endswith("_s")), 3)
        out["pid"] = os.getpid()
        out["began_at"] = round(_previous_end - out["total_s"], 3)
        out["ended_at"] = round(_previous_end, 3)
        out["epochs_rss_mb"] = list(self.rss_mb)
        out["validations_s"] = list(self.validations)
        # the kernel updates the peak lazily (at unmaps and exit): never below a resident size seen
        out["peak_rss_mb"] = round(max([peak_rss_mb(), *self.rss_mb]), 1)
        return out

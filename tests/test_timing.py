"""aer.timing: a job's time split into phases (each second counted once) and its memory per epoch, in timing.json."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from aer.timing import PHASES, JobTiming, process_start, rss_mb


class Clock:
    """A clock the test moves by hand: no sleeps, no timing on a loaded machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_count_each_second_once():
    clock = Clock()
    t = JobTiming(started=time.time(), clock=clock)
    with t.phase("validation"):
        clock.now += 1
        with t.phase("checkpoints"):  # a checkpoint written during validation counts as a checkpoint
            clock.now += 2
        clock.now += 4
    clock.now += 8  # in no phase: not counted
    s = t.summary()
    assert s["validation_s"] == 5 and s["checkpoints_s"] == 2 and s["train_s"] == 0
    assert s["total_s"] == round(sum(s[f"{p}_s"] for p in PHASES), 3)


def test_pop_closes_what_an_exception_left_open():
    clock = Clock()
    t = JobTiming(started=time.time(), clock=clock)
    t.push("train")
    t.push("validation")  # never popped: an exception went through
    clock.now += 1
    t.pop("train")
    clock.now += 10
    s = t.summary()
    assert s["validation_s"] == 1 and s["train_s"] == 0


def test_wrapped_methods_count_where_they_are_called_and_are_put_back():
    clock = Clock()

    class Logger:
        def log_metrics(self, metrics):
            clock.now += 3

    class Trainer:
        loggers = [Logger()]

        def save_checkpoint(self, path):
            clock.now += 2

        def fit(self, *args, **kwargs):
            clock.now += 1
            self.save_checkpoint("x")
            self.loggers[0].log_metrics({})

    trainer, t = Trainer(), JobTiming(started=time.time(), clock=clock)
    t.fit(trainer)
    s = t.summary()
    assert s["checkpoints_s"] == 2 and s["logging_s"] == 3 and s["data_s"] == 1  # no setup hook: still data
    assert "save_checkpoint" not in vars(trainer) and "log_metrics" not in vars(trainer.loggers[0])


def test_process_start_and_memory_are_read():
    start = process_start()
    assert start is not None and 0 < time.time() - start < 24 * 3600
    before = rss_mb()
    held = torch.ones(50_000_000, dtype=torch.uint8)  # 50 MB, touched
    assert rss_mb() - before > 40
    del held


def test_a_run_writes_its_timing(trained_run):
    t = json.loads((trained_run / "timing.json").read_text())
    assert set(t) == {f"{p}_s" for p in PHASES} | {"total_s", "epochs_rss_mb", "validations_s", "peak_rss_mb", "pid",
                                                    "began_at", "ended_at"}
    assert t["pid"] == os.getpid()  # the fixture trains in this process
    assert t["ended_at"] - t["began_at"] == pytest.approx(t["total_s"], abs=0.01)
    assert t["ended_at"] <= (trained_run / "metrics.json").stat().st_mtime + 1
    assert len(t["epochs_rss_mb"]) == 2 and len(t["validations_s"]) == 2  # trainer.max_epochs=2
    assert sum(t["validations_s"]) == pytest.approx(t["validation_s"], abs=0.01) and min(t["validations_s"]) > 0
    assert all(0 < v <= t["peak_rss_mb"] for v in t["epochs_rss_mb"])
    assert t["train_s"] > 0 and t["validation_s"] > 0 and t["checkpoints_s"] > 0
    assert t["startup_s"] > 0  # since this test process started
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert "timing" not in metrics and metrics["last_ckpt"].endswith("last.ckpt")

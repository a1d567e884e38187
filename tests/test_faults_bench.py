"""bench/faults.py: its process-group bookkeeping on real processes, and (slow) a tiny soak end to end."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED

BENCH = ROOT / "bench" / "faults.py"


@pytest.fixture(scope="module")
def faults():
    spec = importlib.util.spec_from_file_location("faults_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_leftovers_of_a_killed_leader_are_found_and_killed(faults, tmp_path):
    g = faults.launch(["sh", "-c", "sleep 60 & sleep 60 & wait"], tmp_path / "log")
    try:
        deadline = time.monotonic() + 30
        while len(g.members()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert g.proc.pid in g.members() and len(g.members()) == 3
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait(10)
        left = g.settle(0.5)
        assert len(left) == 2 and g.proc.pid not in left  # the two sleeps outlive their parent
        assert g.kill() == 2
        assert g.members() == {}
    finally:
        faults.finish(g)


def test_wait_tells_exit_stall_and_timeout_apart(faults, tmp_path):
    cases = [([sys.executable, "-c", "pass"], 120, 60, "exit"),
             (["sleep", "60"], 120, 0.5, "stall"),                        # blocked, as on a held lock
             ([sys.executable, "-c", "while True: pass"], 1.5, 60, "timeout")]  # busy, but past its time
    for cmd, timeout, stall, want in cases:
        g = faults.launch(cmd, tmp_path / "log")
        try:
            assert faults.wait(g, timeout, stall) == want, cmd
        finally:
            faults.finish(g)
        assert g.members() == {}


def test_a_workdir_in_shared_is_refused():
    target = SHARED.parent / "aer-faults-test"
    proc = subprocess.run([sys.executable, str(BENCH), "--workdir", str(target)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "read-only" in proc.stderr
    assert not target.exists()


def test_a_foreign_workdir_is_refused_and_left_alone(tmp_path):
    (tmp_path / "soak").mkdir()
    (tmp_path / "soak" / "results.csv").write_text("someone's\n")
    proc = subprocess.run([sys.executable, str(BENCH), "--workdir", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "not made by bench/faults.py" in proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["results.csv", "soak"]


def _ours(marker: str) -> list[int]:
    """Live processes whose command line names `marker`."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in Path(entry.path, "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_a_tiny_soak_reports_and_leaves_no_process(tmp_path):
    work = tmp_path / "soak"  # --max-runs ends it: two runs, whatever their speed
    proc = subprocess.run([sys.executable, str(BENCH), "--seconds", "600", "--max-runs", "2", "--clips", "2000",
                           "--epochs", "1", "--workdir", str(work)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^#1 ", proc.stdout, re.M), proc.stdout
    assert re.search(r"runs recovered \d/2, outputs lost or corrupt \d, hangs \d", proc.stdout), proc.stdout
    assert _ours(str(work)) == []

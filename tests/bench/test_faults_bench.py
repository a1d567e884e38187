"""bench/faults.py as a user runs it: workdirs it must refuse, and (slow) a tiny soak end to end that
leaves no process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED

BENCH = ROOT / "bench" / "faults.py"


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

"""bench/job_speed.py and its plain baseline bench/plain_job.py: the skip, the baseline's scores, and
(slow) the whole bench on the demo set."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

BENCH = ROOT / "bench" / "job_speed.py"


def _plain_job():
    spec = importlib.util.spec_from_file_location("plain_job", ROOT / "bench" / "plain_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("bench", ["job_speed.py", "sweep_throughput.py", "train_speed.py"])
def test_it_skips_without_bal_train(tmp_path, bench):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / bench), "--root", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("skipped: no bal_train split at"), proc.stdout


@pytest.mark.slow
def test_the_sweep_bench_runs_jobs_side_by_side(demo_root, tmp_path):
    """bench/sweep_throughput.py on the demo set (its --root holds a bal_train folder of shards)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep_throughput.py"), "--root", str(demo_root),
                           "--cache-dir", str(tmp_path / "cache"), "--parallel", "1,2", "--jobs", "2", "--epochs", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if re.match(r"^\s+[12]\s+\d", ln)]
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[2]) > 0 for r in rows), proc.stdout


def test_the_plain_jobs_scores_are_scikit_learns():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.random((500, 30)) < 0.1
    labels[:, 0] = False  # no positives: left out
    labels[:, 1] = True  # no negatives: in mAP, left out of mAUC
    scores = np.round(rng.random((500, 30)), 2).astype(np.float32)  # ties
    ap, auc = _plain_job().ap_auc(scores, labels)
    aps = [average_precision_score(labels[:, c], scores[:, c]) for c in range(1, 30)]
    aucs = [roc_auc_score(labels[:, c], scores[:, c]) for c in range(2, 30)]
    assert ap == pytest.approx(np.mean(aps), abs=1e-12) and auc == pytest.approx(np.mean(aucs), abs=1e-12)


@pytest.mark.slow
def test_the_bench_on_the_demo_set(demo_root, tmp_path):
    cmd = [sys.executable, str(BENCH), "--root", str(demo_root), "--epochs", "2", "--variants", "fc"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    sections = out.split("\n== ")[1:]
    assert [s.split(",")[0] for s in sections] == ["train.py experiment=report_fc"]
    section = sections[0]
    assert re.search(r"aer / plain wall time: median \d+\.\d+ over 1 pair", section)
    rows = [ln.split() for ln in section.splitlines() if re.match(r"(plain|aer) +\d", ln)]  # the table's rows
    assert [r[0] for r in rows] == ["plain", "aer", "plain"]
    assert all(float(r[-2]) > 100 for r in rows)  # peak RSS MB, each process's own
    assert all(float(r[5]) > 0 for r in rows)  # the validation column: both sides validate
    assert re.search(r"aer run 0: 2 validations, median \d+ ms, slowest \d+ ms, against the plain job's median "
                     r"\d+ ms: slowest / plain \d+\.\d\d", section)
    assert re.search(r"aer run 0: checkpoints and logging held the job up \d+\.\d\d \+ \d+\.\d\d s = \d+\.\d%", section)
    assert re.search(r"aer run 0 resident memory at each epoch's end.*: 2 epochs, too few to judge", section)

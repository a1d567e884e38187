"""A run killed with SIGKILL and re-run with ckpt_path=last ends where an unkilled run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, train_overrides

pytestmark = pytest.mark.slow  # trainings SIGKILLed and run again, each a subprocess

# the kills come after epochs 1-3 (and a fraction of the next): five or more epochs are left to train then, so a
# loaded machine, where last.ckpt shows up late (background writes), still kills the run before it ends
EPOCHS = 8


def _cmd(demo_root: Path, run_dir: Path, *extra: str) -> list[str]:
    overrides = [o for o in train_overrides(demo_root, run_dir) if not o.startswith(("paths.output_dir",
                                                                                   "trainer.max_epochs"))]
    return [sys.executable, str(ROOT / "train.py"), *overrides, f"trainer.max_epochs={EPOCHS}",
            "model=skiplstm", "model.hidden=24", "model.dropout=0.1", f"hydra.run.dir={run_dir}", *extra]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(demo_root, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("whole")
    _run(_cmd(demo_root, run_dir))
    return _metrics(run_dir)


@pytest.mark.parametrize("kill_after_epochs,epoch_fraction", [(1, 0.0), (2, 0.3), (3, 0.6)])
def test_sigkill_then_resume_matches(uninterrupted, demo_root, tmp_path, kill_after_epochs, epoch_fraction):
    run_dir = tmp_path / "run"
    cmd = _cmd(demo_root, run_dir, "ckpt_path=last")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    seen: dict[int, float] = {}  # epoch index in last.ckpt -> when it was first seen
    try:
        # Wait until the wanted epoch's checkpoint is in place, then kill a fraction of an epoch later
        # (measured on this run: a fixed delay outran a fast machine's remaining epochs).
        while time.time() < deadline and proc.poll() is None:
            if last.exists():
                import torch

                try:
                    epoch = torch.load(last, weights_only=True, map_location="cpu")["epoch"]
                except Exception:  # noqa: BLE001 — being replaced right now; look again
                    epoch = -1
                seen.setdefault(epoch, time.time())
                if epoch + 1 >= kill_after_epochs:
                    break
            time.sleep(0.02)
        if epoch_fraction and epoch - 1 in seen:  # at most a second: the gap seen can be stretched by load
            time.sleep(min(1.0, epoch_fraction * (seen[epoch] - seen[epoch - 1])))
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run_dir / "metrics.json").exists()
    _run(cmd)  # the same command: resumes from checkpoints/last.ckpt
    resumed = _metrics(run_dir)
    assert resumed["epochs"] == uninterrupted["epochs"] == EPOCHS
    assert resumed["global_step"] == uninterrupted["global_step"]
    assert abs(resumed["val/mAP"] - uninterrupted["val/mAP"]) < 1e-3
    assert abs(resumed["val/mAP_best"] - uninterrupted["val/mAP_best"]) < 1e-3


def test_resume_from_a_finished_checkpoint_still_reports(uninterrupted, demo_root, tmp_path):
    """Killed after the last epoch's checkpoint but before metrics.json: the re-run trains no more and
    still writes the run's validation numbers (it scores the weights the checkpoint holds)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(Path(uninterrupted["last_ckpt"]).parents[1], run_dir)
    (run_dir / "metrics.json").unlink()
    _run(_cmd(demo_root, run_dir, "ckpt_path=last"))
    resumed = _metrics(run_dir)
    assert resumed["epochs"] == EPOCHS and resumed["global_step"] == uninterrupted["global_step"]
    assert abs(resumed["val/mAP"] - uninterrupted["val/mAP"]) < 1e-3
    assert abs(resumed["val/mAP_best"] - uninterrupted["val/mAP_best"]) < 1e-3

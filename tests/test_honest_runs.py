"""Runs that never overwrite each other, exit codes that tell the truth, mismatches refused by name, degenerate
numbers flagged, concurrent jobs that wait for each other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aer.checkpoint import Checkpoint
from aer.runs import render
from conftest import ROOT, TINY, config, run_script, train_overrides


def _train(demo_root: Path, run_dir: Path, *extra: str, popen: bool = False):
    args = [o for o in train_overrides(demo_root, run_dir, *extra) if not o.startswith("paths.")]
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _last_error(proc) -> str:
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.read()
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err[-2000:]
    return lines[-1]


@pytest.mark.slow
def test_a_run_dir_is_never_written_twice(demo_root, tmp_path):
    run_dir = tmp_path / "run"
    assert _train(demo_root, run_dir, "trainer.max_epochs=1").returncode == 0
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = _train(demo_root, run_dir, "model=skiplstm", "trainer.max_epochs=1")
    assert again.returncode == 1
    assert f"error: {run_dir} holds another run (.hydra, metrics.json, checkpoints, tensorboard)" in _last_error(again)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before  # not a byte touched
    other = _train(demo_root, run_dir, "model=skiplstm", "trainer.max_epochs=2", "ckpt_path=last")
    assert other.returncode == 1 and "it was trained with model='fc', this run has model='skiplstm'" in \
        _last_error(other)
    resumed = _train(demo_root, run_dir, "trainer.max_epochs=2", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2
    inside = _train(demo_root, demo_root / "bal_train" / "run", "trainer.max_epochs=1")
    assert inside.returncode == 1 and "is inside data.root=" in _last_error(inside)
    assert not (demo_root / "bal_train" / "run").exists()


@pytest.mark.slow
def test_two_runs_into_one_dir_at_once(demo_root, tmp_path):
    run_dir = tmp_path / "run"
    procs = [_train(demo_root, run_dir, "trainer.max_epochs=3", popen=True) for _ in range(2)]
    for p in procs:
        p.wait(timeout=600)
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], [p.stderr.read()[-1000:] for p in procs]
    loser = next(p for p in procs if p.returncode == 1)
    last = _last_error(loser)
    assert f"{run_dir}" in last and ("another run (pid" in last or "holds another run" in last), last
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_run_with_128_plus_it_and_an_interrupted_record(demo_root, tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = _train(demo_root, run_dir, "trainer.max_epochs=500", popen=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig
    assert f"error: interrupted by {signal.Signals(sig).name}" in _last_error(proc)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and signal.Signals(sig).name in record["error"]
    Checkpoint.load(last).tagger()  # whole: it loads, weights_only


@pytest.mark.slow
def test_a_multirun_with_a_failed_job_exits_1_after_its_summary(demo_root, tmp_path):
    sweep = tmp_path / "sweep, with 'odd' ü"  # commas, spaces, quotes and unicode, through every step
    args = [a for a in train_overrides(demo_root, tmp_path, "trainer.max_epochs=1") if not a.startswith("paths.")]
    from aer.runs import render

    r = run_script("train.py", "-m", *args, "optim.lr=1e-3,-1", f"hydra.sweep.dir={render(str(sweep))}",
                   "+hydra.callbacks.ensemble._target_=aer.sweep.EnsembleSweep",
                   "+hydra.callbacks.ensemble.select=none", "+hydra.callbacks.ensemble.replicates=0")
    assert r.returncode == 1, r.stderr[-3000:]
    assert (sweep / "summary.md").is_file() and "| failed |" in (sweep / "summary.md").read_text()
    assert "error: 1 of 2 jobs failed" in r.stderr
    assert json.loads((sweep / "ensemble" / "metrics.json").read_text())["status"] == "ok"  # of the job that ran


def _ensembled_sweep(demo_root: Path, tmp_path: Path, sweep: Path, select: str, replicates: int):
    """A 2-job sweep into `sweep` whose EnsembleSweep step runs with these settings."""
    args = [a for a in train_overrides(demo_root, tmp_path, "trainer.max_epochs=1") if not a.startswith("paths.")]
    return run_script("train.py", "-m", *args, "seed=1,2", f"hydra.sweep.dir={render(str(sweep))}",
                      "+hydra.callbacks.ensemble._target_=aer.sweep.EnsembleSweep",
                      f"+hydra.callbacks.ensemble.select={select}",
                      f"+hydra.callbacks.ensemble.replicates={replicates}")


@pytest.mark.slow
def test_a_failed_ensemble_step_fails_the_command(demo_root, tmp_path):
    r = _ensembled_sweep(demo_root, tmp_path, tmp_path / "sweep", "greedy", -1)
    assert r.returncode == 1 and "error: the ensemble of sweep" in r.stderr and "bootstrap.replicates=-1" in r.stderr


@pytest.mark.slow
def test_a_sweep_dir_with_commas_spaces_quotes_and_unicode_works_in_every_step(demo_root, tmp_path):
    sweep = tmp_path / "sweep, it's \"ü\" 1"
    r = _ensembled_sweep(demo_root, tmp_path, sweep, "none", 0)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((sweep / "ensemble" / "metrics.json").read_text())["status"] == "ok"
    ckpt = sweep / "0" / "checkpoints" / "best.ckpt"
    r = run_script("evaluate.py", f"ckpt={render(str(ckpt))}", "split=val",
                   f"hydra.run.dir={render(str(sweep / 'ev'))}")
    assert r.returncode == 0 and (sweep / "ev" / "metrics.json").exists(), r.stderr[-2000:]


def test_resuming_on_other_data_is_refused_by_its_split(demo_root, trained_run, tmp_path):
    from aer.train import run

    last = trained_run / "checkpoints" / "last.ckpt"
    other = tmp_path / "other"  # a demo set of other clips: the settings say the same, the split differs
    with pytest.raises(ValueError, match=r"its run validated on \d+ clips \(ids \w+\), the dev split of data.root="):
        run(config("train", [*train_overrides(other, tmp_path / "run", f"ckpt_path={last}"), "data.demo.seed=3"]))


def test_resuming_a_network_with_other_settings_is_refused_naming_the_setting(demo_root, trained_run, tmp_path):
    from aer.train import run

    last = trained_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"it holds a fc with model.hidden=\[500\], this run has model.hidden=\[16\]"):
        run(config("train", train_overrides(demo_root, tmp_path / "run", f"ckpt_path={last}", "model.hidden=[16]")))


def test_evaluating_on_another_dev_split_is_refused(trained_run, tmp_path):
    from aer.evaluate import run

    with pytest.raises(ValueError, match="split=val: .*it was trained with data.split_seed=0, here data.split_seed=5"):
        run(config("evaluate", [f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", "split=val",
                                "data.split_seed=5", f"paths.output_dir={tmp_path}"]))


def test_thresholds_of_another_model_are_refused(thresholded_ckpt, tmp_path):
    from aer.thresholds import run

    state = torch.load(thresholded_ckpt, map_location="cpu", weights_only=True)
    state["datamodule_hyper_parameters"]["mode"] = "final"
    state["hyper_parameters"]["normalize"] = "standardize"
    final = tmp_path / "final.ckpt"
    torch.save(state, final)
    with pytest.raises(ValueError, match=r"chosen for data.normalize='unit', ckpt=.*final.ckpt has 'standardize'"):
        run(config("thresholds", [f"ckpt={final}", f"from_ckpt={thresholded_ckpt}", f"paths.output_dir={tmp_path}"]))


def test_the_thresholds_say_where_they_were_chosen(thresholded_ckpt):
    said = Checkpoint.load(thresholded_ckpt).decision_thresholds(None)[1]
    assert f"chosen on split=val of {thresholded_ckpt}" in said


def test_numbers_over_too_few_classes_or_clips_are_flagged(demo_root, tmp_path, caplog):
    from aer.train import run

    result = run(config("train", train_overrides(demo_root, tmp_path, "data.val_fraction=0.01",
                                                 "trainer.max_epochs=1")))
    assert result["status"] == "ok" and result["val/clips"] < 100
    assert [w for w in result["warnings"] if w.startswith("val/mAP and val/mAUC are means over")]
    assert "too few to compare runs by" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["warnings"] == result["warnings"]


def test_a_loss_that_never_moves_is_flagged(demo_root, tmp_path):
    from aer.train import run

    result = run(config("train", train_overrides(demo_root, tmp_path, "optim.lr=1e-30", "trainer.max_epochs=3")))
    assert result["status"] == "ok" and any(w.startswith("train/loss stayed at") for w in result["warnings"])


def test_a_cache_folder_inside_a_data_root_aer_did_not_make_is_refused(tmp_path):
    from aer.data.datamodule import AudioSetDataModule

    (tmp_path / "release" / "bal_train").mkdir(parents=True)
    dm = AudioSetDataModule(root=str(tmp_path / "release"), cache_dir=str(tmp_path / "release" / "cache"))
    with pytest.raises(ValueError, match=r"data.cache_dir=.*release/cache is inside data.root=.*release: aer never"):
        dm.check_layout()


@pytest.mark.slow
def test_jobs_making_the_same_demo_set_at_once_all_succeed(tmp_path):
    root = tmp_path / "demo"
    code = ("import sys; from aer.data.demo import ensure_demo; "
            f"sys.exit(0 if ensure_demo({str(root)!r}, {TINY}, 100, 0) in (True, False) else 1)")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0], [p.stderr.read()[-500:] for p in procs]
    assert (root / "demo.json").is_file() and not list(tmp_path.glob(".demo.*.partial"))

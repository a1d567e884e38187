"""What a careless or unlucky user hits: real data next to a demo default, kills, full disks, runs that
train nothing or diverge, damaged caches, resuming onto another split."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from aer.data.convert import CacheError, convert, load_split
from aer.data.datamodule import AudioSetDataModule
from aer.data.demo import MARKER, ensure_demo, generate
from aer.files import file_lock
from conftest import ROOT, SHARED, TINY, disk_full_after, run_script, train_overrides


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def foreign_root(tmp_path_factory) -> Path:
    """A data root in the release's layout that aer's demo generator did not make: real shards
    copied from ../shared where it is there, else demo-format shards without the demo marker."""
    root = tmp_path_factory.mktemp("foreign")
    shards = sorted((SHARED / "bal_train").glob("*.tfrecord"))[:60] if SHARED.is_dir() else []
    if shards:
        for split, part in (("bal_train", shards[:40]), ("eval", shards[40:])):
            (root / split).mkdir()
            for s in part:
                shutil.copy2(s, root / split / s.name)
    else:
        generate(root / "made", clips=200, eval_clips=100, seed=5)
        for split in ("bal_train", "eval"):
            shutil.move(root / "made" / split, root / split)
        shutil.rmtree(root / "made")
    return root


@pytest.mark.slow
def test_demo_default_never_writes_over_real_shards(foreign_root, tmp_path):
    """The user forgot data=audioset: data=demo must refuse, and leave every shard byte-identical."""
    before = tree_digest(foreign_root)
    r = run_script("train.py", "experiment=best", f"data.root={foreign_root}", "data.mode=final",
                   f"paths.log_dir={tmp_path}", "trainer.max_epochs=1")
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "data=audioset" in last and str(foreign_root) in last
    assert "Traceback" not in r.stderr
    assert tree_digest(foreign_root) == before
    assert sorted(p.name for p in foreign_root.iterdir()) == ["bal_train", "eval"]


def test_demo_generator_writes_only_into_empty_or_its_own_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not make"):
        ensure_demo(tmp_path, clips=20, eval_clips=10, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_demo(empty, clips=20, eval_clips=10, seed=0) is True
    assert (empty / MARKER).exists() and ensure_demo(empty, clips=20, eval_clips=10, seed=0) is False
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_caches_of_foreign_data_go_to_the_user_cache_not_the_data_folder(foreign_root, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dm = AudioSetDataModule(root=str(foreign_root))
    assert tmp_path / "xdg" in dm.cache_path("bal_train").parents
    demo = tmp_path / "demo"
    generate(demo, clips=20, eval_clips=10)
    assert AudioSetDataModule(root=str(demo)).cache_path("eval") == demo / "aer_cache" / "eval.h5"


def test_convert_refuses_an_output_inside_its_source(demo_root):
    src = demo_root / "bal_train"
    before = tree_digest(src)
    for out in (src / "x.tfrecord", src / "sub" / "c.h5"):
        with pytest.raises(ValueError, match="inside the shard folder"):
            convert(src, out)
    assert tree_digest(src) == before


# ---- kills
@pytest.fixture(scope="module")
def big_split(tmp_path_factory) -> tuple[Path, float]:
    """A split whose 2-worker conversion takes long enough to be killed in the middle; its duration."""
    root = tmp_path_factory.mktemp("big")
    generate(root, clips=6000, eval_clips=0, seed=1)
    ref = root / "ref.h5"
    t0 = time.perf_counter()
    convert(root / "bal_train", ref, workers=2, progress=False)
    return root / "bal_train", time.perf_counter() - t0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, seconds: float = 10) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _group_alive(pgid):
            return True
        time.sleep(0.05)
    return False


def _convert_cmd(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "aer.data", "convert", str(src), str(out), "--workers", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_killed_conversion_leaves_no_process_or_lock_and_reruns(big_split, tmp_path, sig, fraction):
    src, seconds = big_split
    out = tmp_path / "bal_train.h5"
    # SIGINT as Ctrl-C reaches a foreground process, even where pytest itself runs with it ignored
    p = subprocess.Popen(_convert_cmd(src, out), cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # the workers start after the imports (~1 s); kill during the conversion itself
    while not (tmp_path / ".bal_train.h5.partial").exists() and p.poll() is None:
        time.sleep(0.01)
    time.sleep(seconds * fraction)
    os.kill(p.pid, sig)
    p.wait(timeout=30)
    assert _wait_group_gone(p.pid), "conversion workers outlived their killed parent"
    r = subprocess.run(_convert_cmd(src, out), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got, want = load_split(out), load_split(src.parent / "ref.h5")
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bal_train.h5"]


@pytest.mark.slow
def test_training_killed_during_conversion_reruns(big_split, tmp_path):
    src, _ = big_split
    data = src.parent
    cache = tmp_path / "cache"
    args = [f"data.root={data}", "data=audioset", f"data.cache_dir={cache}", "data.convert_workers=2",
            "data.eval_batch_size=4096", f"paths.log_dir={tmp_path}", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}", "ckpt_path=last"]
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (cache / ".bal_train.h5.partial").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert _wait_group_gone(p.pid)
    r = run_script("train.py", *args, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "ok"
    assert sorted(p.name for p in cache.iterdir()) == ["bal_train.h5"]


@pytest.mark.slow
def test_a_held_lock_is_waited_for_naming_its_pid(demo_root, tmp_path):
    out = tmp_path / "bal_train.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from aer.files import file_lock\n"
         f"with file_lock({str(tmp_path / '.bal_train.h5.lock')!r}, 'test'):\n"
         "    print('held', flush=True); time.sleep(3)"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    r = subprocess.run([sys.executable, "-m", "aer.data", "convert", str(demo_root / "bal_train"), str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    holder.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    assert f"waiting for pid {holder.pid}, which holds {tmp_path / '.bal_train.h5.lock'}" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bal_train.h5"]


@pytest.mark.slow
def test_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    lock = tmp_path / ".x.lock"
    p = subprocess.Popen([sys.executable, "-c", "import time; from aer.files import file_lock\n"
                          f"with file_lock({str(lock)!r}, 'test'):\n    print('held', flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    p.kill()
    p.wait()
    said = []
    with file_lock(lock, "test", say=said.append):
        pass
    assert said == [] and not lock.exists()


# ---- full disks
def _run_limited(cmd: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=disk_full_after(max_bytes))


def _one_line_error(r: subprocess.CompletedProcess, *names: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "Segmentation" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr[-3000:]
    for name in names:
        assert name in last, last
    return last


def test_conversion_into_a_full_disk_keeps_the_previous_cache(demo_root, tmp_path):
    out = tmp_path / "eval.h5"
    convert(demo_root / "eval", out, progress=False)
    before = out.read_bytes()
    cmd = [sys.executable, "-m", "aer.data", "convert", str(demo_root / "bal_train"), str(out), "--force"]
    last = _one_line_error(_run_limited(cmd, len(before) // 2), str(out))
    assert "no space left" in last
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.h5"]


@pytest.fixture()
def tmpfs(tmp_path):
    """A real 3 MB filesystem (needs root and a kernel that lets this process mount tmpfs)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'}): "
                    f"the injected-limit tests cover full disks")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_conversion_on_a_real_full_filesystem(demo_root, tmpfs):
    small = tmpfs / "small.h5"
    convert(demo_root / "eval", small, progress=False)
    before = small.read_bytes()
    (tmpfs / "filler").write_bytes(b"\0" * (3 * 2 ** 20 - len(before) - 300_000))
    out = tmpfs / "bal_train.h5"
    cmd = [sys.executable, "-X", "faulthandler", "-m", "aer.data", "convert", str(demo_root / "bal_train"), str(out)]
    _one_line_error(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120), str(out))
    assert not out.exists() and small.read_bytes() == before
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler", "small.h5"]


@pytest.mark.slow
def test_training_into_a_full_disk_fails_in_one_line(demo_root, trained_run, tmp_path):
    # the cache exists already (trained_run made it): only the run's own outputs meet the limit
    run = tmp_path / "run"  # train_overrides make it the output dir
    r = _run_limited([sys.executable, str(ROOT / "train.py"), *train_overrides(demo_root, run, "trainer.max_epochs=1")],
                     1_000_000)
    last = _one_line_error(r, "no space left", str(run / "checkpoints"))
    assert not list((run / "checkpoints").glob("*.ckpt")), last
    assert not list(run.rglob("*.partial"))


@pytest.mark.slow
def test_evaluate_into_a_full_disk_fails_in_one_line(trained_run, tmp_path):
    run = tmp_path / "eval"
    r = _run_limited([sys.executable, str(ROOT / "evaluate.py"), f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}",
                      "split=val", f"hydra.run.dir={run}"], 60_000)
    _one_line_error(r, "no space left", str(run))
    assert not (run / "predictions.h5").exists() and not list(run.rglob("*.partial"))


# ---- wrong results
@pytest.mark.slow
def test_a_run_that_trains_no_step_fails(demo_root, tmp_path):
    r = run_script("train.py", *train_overrides(demo_root, tmp_path, "data.batch_size=5000", "data.drop_last=true"))
    last = _one_line_error(r, "trained no step", "data.batch_size=5000")
    assert "drop_last=true" in last
    r = run_script("train.py", *train_overrides(demo_root, tmp_path, "trainer.limit_train_batches=0"))
    _one_line_error(r, "trainer.limit_train_batches=0")


@pytest.mark.slow
def test_a_diverged_run_is_flagged_in_metrics_and_summary(demo_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = [a for a in train_overrides(demo_root, tmp_path, "optim.lr=1e-3,1e6", f"hydra.sweep.dir={sweep}",
                                       "trainer.max_epochs=1", "data.batch_size=8")  # 61 steps: enough to judge
            if not a.startswith("paths.output_dir=")]
    r = run_script("train.py", "-m", *args)  # each job in its own dir
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 jobs failed"), r.stderr
    ok, bad = (json.loads((sweep / str(i) / "metrics.json").read_text()) for i in (0, 1))
    assert ok["status"] == "ok" and ok["diverged"] is None
    assert bad["status"] == "diverged" and "train/loss rose" in bad["diverged"]
    summary = (sweep / "summary.md").read_text().splitlines()
    assert [line.split("|")[3].strip() for line in summary[2:]] == ["ok", "diverged"]


@pytest.fixture()
def cached(demo_root, tmp_path) -> AudioSetDataModule:
    dm = AudioSetDataModule(root=str(demo_root), cache_dir=str(tmp_path / "cache"), demo={
        "clips": TINY, "eval_clips": 300, "seed": 0})
    dm.prepare_data()
    return dm


def _damage_features(path: Path) -> None:
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 100)
        fh.write(b"\0" * 64)


@pytest.mark.parametrize("damage", ["zeroed-chunk", "missing-dataset", "foreign-file"])
def test_a_damaged_cache_is_named_and_rebuilt(cached, damage, caplog):
    path = cached.cache_path("bal_train")
    good = load_split(path)
    if damage == "zeroed-chunk":
        _damage_features(path)
        with pytest.raises(CacheError, match=rf"{path}: dataset 'features' is damaged"):
            load_split(path)
    elif damage == "missing-dataset":
        with h5py.File(path, "r+") as f:
            del f["labels"]
    else:
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    cached.setup("fit")
    assert str(path) in caplog.text and "rebuilding" in caplog.text
    assert np.array_equal(load_split(path)["features"], good["features"])


def test_a_damaged_cache_whose_shards_are_gone_is_refused(demo_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_root / "bal_train", data / "bal_train")
    dm = AudioSetDataModule(root=str(data), cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    shutil.rmtree(data / "bal_train")
    with pytest.raises(FileNotFoundError, match=r"bal_train.h5: its shards are gone"):
        AudioSetDataModule(root=str(data), cache_dir=str(tmp_path / "cache")).setup("fit")


@pytest.mark.slow
def test_resuming_onto_another_split_is_refused(demo_root, trained_run, tmp_path):
    r = run_script("train.py", *train_overrides(demo_root, tmp_path, "data.split_seed=7",
                                                f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}"))
    _one_line_error(r, "data.split_seed=0", "data.split_seed=7")


# ---- stale temporary files
def test_stale_checkpoint_partials_are_removed_live_ones_kept(demo_root, tmp_path):
    from aer.train import run
    from conftest import config

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = ckpts / f".best.ckpt.{dead.pid}.abc123.partial"
    live = ckpts / f".last.ckpt.{os.getpid()}.def456.partial"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    run(config("train", train_overrides(demo_root, tmp_path, "trainer.max_epochs=1")))
    assert not stale.exists() and live.exists()


@pytest.mark.slow
def test_report_and_metrics_into_a_full_disk_fail_in_one_line(trained_run, tmp_path):
    out = tmp_path / "report"
    r = _run_limited([sys.executable, "-m", "aer.report", str(trained_run), "--out", str(out)], 10_000)
    _one_line_error(r, "no space left", str(out))
    assert not list(out.glob("*.png")) and not list(out.rglob("*.partial"))
    code = ("import sys\nfrom aer.files import write_json\n"
            f"try:\n    write_json({str(tmp_path / 'metrics.json')!r}, {{'x': 'y' * 50_000}})\n"
            "except OSError as e:\n    print(f'error: {e}', file=sys.stderr); sys.exit(1)")
    _one_line_error(_run_limited([sys.executable, "-c", code], 10_000), str(tmp_path / "metrics.json"))
    assert list(tmp_path.glob("*.json")) == [] and not list(tmp_path.glob(".*.partial"))


def test_divergence_rules():
    from aer.callbacks import Divergence

    d = Divergence()
    assert d.verdict({"val/mAUC": 0.5}, 6, 100).startswith("val/mAUC is 0.5000 after 6 epochs")
    assert d.verdict({"val/mAUC": 0.5}, 4, 100) is None  # too early to call
    assert d.verdict({"val/mAUC": 0.5}, 6, 6) is None  # too few steps to call (e.g. one huge batch an epoch)
    assert d.verdict({"val/mAUC": 0.52}, 20, 100) is None  # weak, but learning
    d.first_loss, d.epoch_losses = 0.69, [0.5, 7.0]
    assert d.verdict({"val/mAUC": 0.9}, 2, 100).startswith("train/loss rose from 0.69")
    d.epoch_losses = [0.5, 6.8]
    assert d.verdict({"val/mAUC": 0.9}, 2, 100) is None and d.stalled() is None
    d.epoch_losses = [0.6931472, 0.6931472, 0.6931472]  # optim.lr=1e-30
    assert d.stalled().startswith("train/loss stayed at 0.693147 for 3 epochs")


@pytest.mark.slow
def test_a_config_error_in_a_multirun_job_is_one_line_and_the_sweep_goes_on(demo_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = [a for a in train_overrides(demo_root, tmp_path, "data.mode=weird,dev", f"hydra.sweep.dir={sweep}",
                                       "trainer.max_epochs=1") if not a.startswith("paths.output_dir=")]
    r = run_script("train.py", "-m", *args)
    assert r.returncode == 1, r.stderr[-3000:]  # after the summary: 1 of 2 jobs failed
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 jobs failed")
    assert "Traceback" not in r.stderr + r.stdout
    failed = [ln for ln in (r.stderr + r.stdout).splitlines() if "job 0 failed" in ln]
    assert len(failed) == 1 and failed[0].endswith("job 0 failed: data.mode='weird': expected one of dev, final")
    bad, ok = (json.loads((sweep / str(i) / "metrics.json").read_text()) for i in (0, 1))
    assert bad["status"] == "failed" and bad["error"] == "ValueError: data.mode='weird': expected one of dev, final"
    assert ok["status"] == "ok"


@pytest.mark.slow
def test_a_failed_conversion_stops_its_workers_whatever_sigterm_handler_they_inherit(demo_root, tmp_path):
    # A Python SIGTERM handler inherited from the parent (Lightning installs one in a training process)
    # must not keep the other workers alive, waiting on their task pipes, once one has failed.
    src = tmp_path / "bal_train"
    shutil.copytree(demo_root / "bal_train", src)
    last = sorted(src.glob("*.tfrecord"))[-1]
    last.write_bytes(last.read_bytes()[:-5])  # its last record cut short: the worker reading it fails
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *a: None)\n"
        "from aer.data.convert import convert\n"
        "from aer.data.tfrecord import ShardError\n"
        f"try:\n    convert({str(src)!r}, {str(tmp_path / 'out.h5')!r}, workers=2)\n"
        "except ShardError as e:\n    print('named:', e)\n    sys.exit(3)\n")
    # the timeout guards against the hang, it measures nothing
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert last.name in proc.stdout and not (tmp_path / "out.h5").exists()

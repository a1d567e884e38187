"""The unbalanced split: data.train_split=all (bal_train + unbal_train, optionally class-balanced)
read without holding any clip twice, and bench/scale.py's replicated shards (new ids, valid CRCs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aer.data.convert import convert, load_split
from aer.data.datamodule import AudioSetDataModule
from aer.data.demo import generate
from aer.data.sampler import BalancedBatchSampler
from conftest import ROOT, TINY, compose_cfg, train_overrides

UNBAL = 400


@pytest.fixture(scope="module")
def unbal_root(tmp_path_factory) -> Path:
    """The tests' tiny demo set (600 bal_train clips, 300 eval) plus a 400-clip unbal_train/,
    the bal_train of a second demo set made with another seed."""
    root = tmp_path_factory.mktemp("unbal")
    generate(root, clips=TINY, eval_clips=300, seed=0)
    other = tmp_path_factory.mktemp("other")
    generate(other, clips=UNBAL, eval_clips=0, seed=1)
    shutil.move(str(other / "bal_train"), str(root / "unbal_train"))
    return root


def _dm(root: Path, **kw) -> AudioSetDataModule:
    return AudioSetDataModule(str(root), train_split="all", batch_size=100, convert_workers=1,
                              demo={"clips": TINY, "eval_clips": 300, "seed": 0}, **kw)


def test_train_split_all_holds_both_splits_once(unbal_root):
    dm = _dm(unbal_root, mode="final")
    dm.setup("fit")
    assert len(dm._sets["train"]) == TINY + UNBAL
    assert len(dm._sets["test"]) == 300
    # the two splits, in order, read into one set of arrays: no per-split copies are kept
    assert set(dm._arrays) == {"bal_train+unbal_train", "eval"}
    held = dm._arrays["bal_train+unbal_train"]
    parts = [load_split(dm.cache_path(s)) for s in ("bal_train", "unbal_train")]
    for key in ("features", "labels", "lengths", "video_id", "start_time", "end_time"):
        want = np.concatenate([p[key] for p in parts])
        assert held[key].dtype == want.dtype and np.array_equal(held[key], want), key
    assert held["features"].dtype == np.uint8 and held["labels"].dtype == bool
    assert len(set(held["video_id"])) == TINY + UNBAL

    dev = _dm(unbal_root, mode="dev")
    dev.setup("fit")
    assert len(dev._sets["train"]) + len(dev._sets["val"]) == TINY + UNBAL
    assert len(dev._sets["val"]) == round(0.2 * (TINY + UNBAL))


def test_balanced_sampling_over_both_splits(unbal_root):
    dm = _dm(unbal_root, mode="dev", balanced=True)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedBatchSampler)
    ds = dm._sets["train"]
    # reading the training rows' labels in chunks gives the batches a copy of labels[rows] gives
    copy = BalancedBatchSampler(ds.labels[ds.rows].numpy(), dm.batch_size, dm.seed)
    assert all(np.array_equal(a, b) for a, b in zip(copy, loader.sampler))
    idx = np.concatenate([b["index"].numpy() for b in loader])
    assert len(idx) == len(ds) and set(idx) <= set(ds.rows.tolist())
    assert (idx >= TINY).any(), "unbal_train clips are drawn"


def test_train_split_all_balanced_trains(unbal_root, tmp_path):
    from aer.train import run

    cfg = compose_cfg("train", train_overrides(unbal_root, tmp_path, "data.train_split=all", "data.balanced=true",
                                               "trainer.max_epochs=1", "callbacks.lr_monitor=null", "~logger"))
    result = run(cfg)
    assert result["status"] == "ok" and 0 < result["val/mAP"] <= 1
    # 1000 clips, 800 of them for training, batches of 100
    assert result["global_step"] == 8


def test_bench_replicas_convert_with_new_ids(demo_root, tmp_path):
    """bench/scale.py's replicas (its `_replicate` step, run as the bench runs it): the same clips under
    new, unique ids, in valid records."""
    out = tmp_path / "r03"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "_replicate", str(demo_root / "bal_train"),
                           str(out), "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])["clips"] == TINY
    a = load_split(convert(demo_root / "bal_train", tmp_path / "a.h5").out)
    b = load_split(convert(out, tmp_path / "b.h5").out)  # convert checks every record's CRCs
    for key in ("features", "labels", "lengths", "start_time", "end_time"):
        assert np.array_equal(a[key], b[key]), key
    assert list(b["video_id"]) == [f".03{i:08d}" for i in range(TINY)]

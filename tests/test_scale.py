"""The unbalanced split: data.train_split=all (bal_train + unbal_train, optionally class-balanced)
read without holding any clip twice (bench/scale.py's replicated shards: tests/bench/test_scale_bench.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from aer.data.convert import load_split
from aer.data.datamodule import AudioSetDataModule
from aer.data.demo import generate
from aer.data.sampler import BalancedBatchSampler
from conftest import TINY, config, train_overrides

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


def _both(dm: AudioSetDataModule) -> dict[str, np.ndarray]:
    """bal_train's then unbal_train's cached arrays, one after the other."""
    parts = [load_split(dm.cache_path(s)) for s in ("bal_train", "unbal_train")]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_train_split_all_holds_both_splits_once(unbal_root):
    dm = _dm(unbal_root, mode="final")
    dm.setup("fit")
    assert len(dm.split_info("test")["video_id"]) == 300
    # the two splits, in order, as one training set: every clip once
    want = _both(dm)
    info = dm.split_info("train")
    assert np.array_equal(info["video_id"], want["video_id"]) and np.array_equal(info["labels"], want["labels"])
    assert len(set(info["video_id"])) == TINY + UNBAL
    for b in dm.train_dataloader():  # what the batches serve: the concatenated clips, by index
        i = b["index"].numpy()
        assert np.array_equal(b["lengths"].numpy(), want["lengths"][i])
        np.testing.assert_array_equal(b["features"].numpy(), want["features"][i])
        assert np.array_equal(b["y"].numpy(), want["labels"][i])

    dev = _dm(unbal_root, mode="dev")
    dev.setup("fit")
    train, val = (set(dev.split_info(s)["video_id"]) for s in ("train", "val"))
    assert not train & val and len(train | val) == TINY + UNBAL
    n = TINY + UNBAL
    assert abs(len(val) - 0.2 * n) < 3 * (0.2 * 0.8 * n) ** 0.5  # binomial: a keyed hash per clip


def test_balanced_sampling_over_both_splits(unbal_root):
    dm = _dm(unbal_root, mode="dev", balanced=True, steps_per_fetch=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedBatchSampler)
    info = dm.split_info("train")
    # reading the training rows' labels in chunks gives the batches a copy of labels[rows] gives
    copy = BalancedBatchSampler(info["labels"], dm.batch_size, dm.seed)
    assert all(np.array_equal(a, b) for a, b in zip(copy, loader.sampler))
    idx = np.concatenate([b["index"].numpy() for b in loader])
    drawn = set(_both(dm)["video_id"][idx])
    assert len(idx) == len(info["video_id"]) and drawn <= set(info["video_id"])
    assert drawn & set(load_split(dm.cache_path("unbal_train"))["video_id"]), "unbal_train clips are drawn"


def test_train_split_all_balanced_trains(unbal_root, tmp_path):
    from aer.train import run

    result = run(config("train", train_overrides(unbal_root, tmp_path, "data.train_split=all", "data.balanced=true",
                                                 "trainer.max_epochs=1", "~logger")))
    assert result["status"] == "ok" and 0 < result["val/mAP"] <= 1
    # 1000 clips, about 800 of them for training, batches of 100
    assert result["global_step"] in (8, 9)


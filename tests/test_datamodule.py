"""AudioSetDataModule and the batch samplers: splits, batches, order, balance, ranks, and errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from aer.data.datamodule import AudioSetDataModule, default_cache_dir
from aer.data.sampler import BalancedBatchSampler, EpochBatchSampler, EvalBatchSampler
from conftest import DEV_TRAIN, DEV_VAL, TINY, expected_split


def make_dm(root: Path, cache: Path, **kw) -> AudioSetDataModule:
    kw = {"batch_size": 64, "eval_batch_size": 100, **kw}
    return AudioSetDataModule(root=str(root), cache_dir=str(cache), **kw)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def oracle(demo_root) -> dict:
    """What the demo splits hold, from the independent reader, keyed by video id."""
    out = {}
    for split in ("bal_train", "eval"):
        e = expected_split(demo_root / split)
        out[split] = e
        out[split + "_row"] = {v: i for i, v in enumerate(e["video_id"])}
    return out


def _ids(dm, name) -> set[str]:
    return set(dm.split_info(name)["video_id"].tolist())


def test_dev_split_is_a_seeded_disjoint_covering_80_20(demo_root, cache, oracle):
    dm = make_dm(demo_root, cache)
    dm.setup("fit")
    train, val = _ids(dm, "train"), _ids(dm, "val")
    assert not train & val and train | val == set(oracle["bal_train"]["video_id"])
    assert abs(len(val) - 0.2 * TINY) < 3 * (0.2 * 0.8 * TINY) ** 0.5  # binomial: a keyed hash per clip
    assert (len(train), len(val)) == (DEV_TRAIN, DEV_VAL)  # what the other tests count on (conftest)
    test = dm.split_info("test")  # dev mode never touches eval: its test split is the val split
    assert list(test["video_id"]) == list(dm.split_info("val")["video_id"])
    assert not (cache / "eval.h5").exists()
    again = make_dm(demo_root, cache, seed=99)  # the training seed does not move the split
    again.setup("fit")
    assert _ids(again, "val") == val
    other = make_dm(demo_root, cache, split_seed=1)
    other.setup("fit")
    assert _ids(other, "val") != val and abs(len(_ids(other, "val")) - len(val)) < 40
    frac = make_dm(demo_root, cache, val_fraction=0.1)
    frac.setup("fit")
    assert _ids(frac, "val") < val  # a smaller fraction holds out a subset: the same hash, a lower cut


def test_a_clip_stays_on_its_side_whatever_other_clips_come_or_go(oracle):
    from aer.data.datamodule import dev_split

    ids = np.asarray(oracle["bal_train"]["video_id"])
    _, val = dev_split(ids, 0.2, 0)
    held = set(ids[val])
    fewer = ids[np.arange(len(ids)) % 7 != 3]  # a shard removed, bad records skipped
    more = np.concatenate([ids, [f"new{i:08d}" for i in range(500)]])  # clips added
    for other in (fewer, more):
        _, v = dev_split(other, 0.2, 0)
        assert {c for c in other[v] if c in set(ids)} == held & set(other)


def test_final_mode_trains_on_all_and_tests_on_eval(demo_root, cache, oracle, tmp_path):
    dm = make_dm(demo_root, cache, mode="final")
    dm.setup("fit")
    assert list(dm.split_info("train")["video_id"]) == list(oracle["bal_train"]["video_id"])
    assert dm.val_dataloader() == []
    info = dm.split_info("test")
    assert list(info["video_id"]) == list(oracle["eval"]["video_id"])
    assert np.array_equal(info["labels"], oracle["eval"]["labels"])
    only_test = make_dm(demo_root, tmp_path / "cache", mode="final")
    only_test.setup("test")  # reads (and so converts) the eval split only
    assert len(only_test.split_info("test")["video_id"]) == 300
    assert [p.name for p in (tmp_path / "cache").glob("*.h5")] == ["eval.h5"]


def test_batches_are_padded_and_labelled(demo_root, cache, oracle):
    dm = make_dm(demo_root, cache)
    dm.setup("fit")
    want = oracle["bal_train"]  # the cache holds the split's clips in the oracle's order (test_convert)
    seen = []
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for b in loader:
            assert b["features"].dtype == torch.uint8 and b["features"].shape[1:] == (10, 128)
            rows = b["index"].numpy()
            np.testing.assert_array_equal(b["lengths"].numpy(), want["lengths"][rows])
            np.testing.assert_array_equal(b["features"].numpy(), want["features"][rows])
            pad = torch.arange(10)[None, :] >= b["lengths"][:, None]
            assert not b["features"][pad].any()
            np.testing.assert_array_equal(b["y"].numpy(), want["labels"][rows].astype(np.float32))
            assert b["y"].dtype == torch.float32
            seen += b["index"].tolist()
    assert sorted(seen) == list(range(TINY))  # one pass over train and val: every clip once
    served = np.concatenate([b["index"].numpy() for b in dm.val_dataloader()])
    assert list(want["video_id"][served]) == list(dm.split_info("val")["video_id"])  # in split_info's order
    assert (want["lengths"] < 10).any()


def test_batch_order_depends_only_on_seed_and_epoch(demo_root, cache):
    def order(seed, epoch):
        dm = make_dm(demo_root, cache, seed=seed, steps_per_fetch=1)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [b["index"].tolist() for b in loader]

    a = order(0, 0)
    assert a == order(0, 0)
    assert a != order(0, 1) and order(0, 1) == order(0, 1)
    assert a != order(1, 0)
    assert sorted(sum(a, [])) == sorted(sum(order(0, 1), []))  # a permutation of the same clips
    n = sum(map(len, a))  # the dev split's training clips
    assert [len(b) for b in a] == [64] * (n // 64) + [n % 64]


@pytest.mark.parametrize("balanced", [False, True])
def test_blocks_serve_the_same_batches_in_the_same_order(demo_root, cache, balanced):
    def batches(steps, epoch):
        dm = make_dm(demo_root, cache, seed=3, steps_per_fetch=steps, balanced=balanced)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        out = []
        for b in loader:
            sizes = b.get("steps", [len(b["y"])])
            assert len(sizes) <= steps and sum(sizes) == len(b["y"]) == len(b["features"])
            out += [part.tolist() for part in torch.split(b["index"], sizes)]
        return out, len(loader)

    one, n_one = batches(1, 2)
    for steps in (3, 8, 100):
        blocks, n_blocks = batches(steps, 2)
        assert blocks == one
        assert n_blocks == -(-n_one // steps)
    assert batches(3, 2)[0] != batches(3, 1)[0]  # the epoch reaches the inner sampler


def test_balanced_sampler_draws_classes_about_uniformly():
    rng = np.random.default_rng(0)
    sizes = [1, 3, 10, 30, 100, 300, 1000]  # heavily long-tailed: one label per clip
    labels = np.zeros((sum(sizes), 8), bool)
    cls = np.repeat(np.arange(7), sizes)
    labels[np.arange(len(cls)), cls] = True
    rng.shuffle(labels)
    s = BalancedBatchSampler(labels, batch_size=500, seed=3)
    drawn = []
    for epoch in range(8):
        s.set_epoch(epoch)
        drawn += list(s)
    drawn = np.concatenate(drawn)
    counts = np.bincount(labels[drawn].argmax(1), minlength=8)[:7]
    expect = len(drawn) / 7
    assert np.all(np.abs(counts - expect) < 5 * np.sqrt(expect)), counts  # class 7 (no clips) never drawn
    assert len(list(BalancedBatchSampler(labels, 500, seed=3))) == len(s)
    s.set_epoch(2)
    first = [b.tolist() for b in s]
    s2 = BalancedBatchSampler(labels, 500, seed=3)
    s2.set_epoch(2)
    assert first == [b.tolist() for b in s2]


def test_datamodule_balanced_loader(demo_root, cache, oracle):
    dm = make_dm(demo_root, cache, balanced=True, batch_size=100, steps_per_fetch=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedBatchSampler)
    idx = torch.cat([b["index"] for b in loader]).numpy()
    assert len(idx) == DEV_TRAIN and set(oracle["bal_train"]["video_id"][idx]) <= _ids(dm, "train")


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_sampler_covers_each_clip_once_across_ranks(n, world):
    got = []
    for rank in range(world):
        s = EvalBatchSampler(n, batch_size=16)
        s.set_distributed(rank, world)
        batches = list(s)
        assert len(batches) == len(s)
        assert all(len(b) <= 16 for b in batches)
        got += [i for b in batches for i in b.tolist()]
    assert sorted(got) == list(range(n))


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n, world", [(1001, 2), (1001, 3), (100, 4), (7, 3), (64, 4)])
def test_epoch_sampler_gives_every_rank_the_same_number_of_batches(n, world, drop_last):
    per_rank = []
    covered = []
    for rank in range(world):
        s = EpochBatchSampler(n, batch_size=32, shuffle=True, seed=5, drop_last=drop_last)
        s.set_distributed(rank, world)
        s.set_epoch(3)
        batches = list(s)
        assert len(batches) == len(s)
        per_rank.append(len(batches))
        covered += [i for b in batches for i in b.tolist()]
    assert len(set(per_rank)) == 1 and per_rank[0] >= (0 if drop_last else 1)
    if not drop_last:
        assert set(covered) == set(range(n))  # every clip, some twice when n does not divide
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        EpochBatchSampler(n, 4, True).set_distributed(2, 2)


def test_missing_folders_say_what_was_expected_where_and_how_to_get_it(tmp_path, demo_root):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        make_dm(nowhere, tmp_path / "c").check_layout()
    msg = str(e.value)
    assert f"data.root={nowhere} does not exist" in msg and "python -m aer.data download" in msg
    assert "data=demo" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        make_dm(tmp_path / "empty", tmp_path / "c").setup("fit")
    msg = str(e.value)
    assert "has no 'bal_train' folder" in msg and f"{tmp_path / 'empty' / 'bal_train'}/*.tfrecord" in msg
    assert f"python -m aer.data download {tmp_path / 'empty'}" in msg
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    (only_train / "bal_train").symlink_to(demo_root / "bal_train")
    make_dm(only_train, tmp_path / "c").check_layout()  # dev mode needs no eval
    with pytest.raises(FileNotFoundError, match="has no 'eval' folder"):
        make_dm(only_train, tmp_path / "c", mode="final").check_layout()


def test_release_layout_with_audioset_v1_embeddings_folder(tmp_path, demo_root):
    (tmp_path / "audioset_v1_embeddings").mkdir()
    (tmp_path / "audioset_v1_embeddings" / "bal_train").symlink_to(demo_root / "bal_train")
    dm = make_dm(tmp_path, tmp_path / "c")
    dm.setup("fit")
    assert len(_ids(dm, "train")) + len(_ids(dm, "val")) == TINY


@pytest.mark.parametrize("kw, message", [
    ({"train_split": "eval"}, "data.train_split='eval': expected one of bal_train, unbal_train, all"),
    ({"train_split": "bal"}, "data.train_split='bal': expected one of bal_train, unbal_train, all"),
    ({"train_split": ["bal_train", "eval"]},
     "data.train_split=['bal_train', 'eval']: expected bal_train, unbal_train or both"),
    ({"mode": "test"}, "data.mode='test': expected one of dev, final"),
    ({"normalize": "z"}, "data.normalize='z'"),
    ({"on_bad_record": "ignore"}, "data.on_bad_record='ignore'"),
    ({"batch_size": 0}, "data.batch_size=0: expected a positive integer"),
    ({"val_fraction": 1.0}, "data.val_fraction=1.0"),
])
def test_choices_are_validated(kw, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        make_dm(tmp_path, tmp_path, **kw)


def test_train_split_choices_map_to_folders(tmp_path):
    assert make_dm(tmp_path, tmp_path).train_splits == ["bal_train"]
    assert make_dm(tmp_path, tmp_path, train_split="all").train_splits == ["bal_train", "unbal_train"]
    assert make_dm(tmp_path, tmp_path, train_split="all", mode="final").needed_splits == [
        "bal_train", "unbal_train", "eval"]


def test_default_cache_dir_is_beside_demo_data_only(demo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir(demo_root) == demo_root / "aer_cache"
    assert default_cache_dir(tmp_path).parent == tmp_path / "xdg" / "aer"  # writable, but not aer's folder


def test_input_stats_use_real_frames_only(demo_root, cache, oracle):
    dm = make_dm(demo_root, cache)
    dm.setup("fit")
    mean, std = dm.input_stats()
    want = oracle["bal_train"]
    rows = [oracle["bal_train_row"][v] for v in dm.split_info("train")["video_id"]]
    feats, lengths = want["features"][rows], want["lengths"][rows]
    real = feats[np.arange(10)[None, :] < lengths[:, None]] / 255.0
    np.testing.assert_allclose(mean.numpy(), real.mean(0), atol=1e-5)
    np.testing.assert_allclose(std.numpy(), real.std(0), atol=1e-4)
    counts = Counter(lengths.tolist())
    assert counts[10] < len(lengths)


def _fit_one_epoch(dm: AudioSetDataModule):
    import pytorch_lightning as pl

    from aer.module import Tagger

    pl.seed_everything(3, verbose=False)
    model = Tagger(model="fc", init="xavier", model_kwargs={"hidden": [32]})
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    return model.state_dict(), trainer


def test_device_resident_batches_train_as_the_host_path(demo_root, cache):
    # data.device_resident (the GPU path: arrays on the device once, batches gathered there), run on the
    # CPU: the same optimizer steps on the same batches as loader-served batches
    host, _ = _fit_one_epoch(make_dm(demo_root, cache, device_resident=False, num_workers=1))
    resident_dm = make_dm(demo_root, cache, device_resident=True, num_workers=1)
    resident, trainer = _fit_one_epoch(resident_dm)
    assert resident_dm.serving_device() == torch.device("cpu")
    loader = resident_dm.train_dataloader()
    assert loader.num_workers == 0 and loader.dataset.features.device == trainer.strategy.root_device
    assert set(host) == set(resident)
    for k in host:
        assert torch.equal(host[k], resident[k]), k
    # train and validation share one copy of the arrays they share
    assert resident_dm.val_dataloader().dataset.features is loader.dataset.features
    assert make_dm(demo_root, cache).serving_device() is None  # default on a CPU: served by the loader

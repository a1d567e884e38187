"""Checkpoints: safe loading (weights_only), one-line errors for bad files, data rebuilt from hparams, inference."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from aer.checkpoint import Checkpoint, CheckpointError
from aer.inference import predict_split
from aer.module import Tagger


@pytest.fixture(scope="module")
def best(trained_run):
    return trained_run / "checkpoints" / "best.ckpt"


def _touch(path):
    """Stands for any code a pickle could run on load."""
    open(path, "w").close()


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def _error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load(path).tagger()
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg, msg
    return msg


def test_load_tagger_matches_lightning_loader(best, trained_run):
    model = Checkpoint.load(best).tagger()
    assert isinstance(model, Tagger) and not model.training and model.hparams.model == "fc"
    ref = Tagger.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    x, lengths = torch.rand(4, 10, 128), torch.tensor([10, 3, 1, 10])
    with torch.no_grad():
        assert torch.equal(model.predict_proba(x, lengths), ref.predict_proba(x, lengths))


def test_missing_directory_truncated_and_random_files(best, tmp_path):
    assert "no such checkpoint" in _error(tmp_path / "nope.ckpt")
    assert "directory" in _error(tmp_path)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    assert "not a readable torch checkpoint" in _error(truncated)
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _error(noise)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    _error(empty)


def test_foreign_torch_files(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}}, plain)
    assert "not an aer checkpoint" in _error(plain)
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), tensor)
    assert "holds a Tensor" in _error(tensor)


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_pickled_code_is_refused_not_run(tmp_path, how):
    marker = tmp_path / "ran"
    bad = tmp_path / f"{how}.ckpt"
    if how == "torch":
        torch.save({"state_dict": {}, "hyper_parameters": {"net": "fc"}, "x": Payload(marker)}, bad)
    else:
        bad.write_bytes(pickle.dumps(Payload(marker)))
    msg = _error(bad)
    assert not marker.exists(), "loading a checkpoint ran code"
    if how == "torch":
        assert "refused" in msg and "_touch" in msg


def test_weights_that_do_not_fit_the_hparams(best, tmp_path):
    ckpt = Checkpoint.load(best).content
    ckpt["hyper_parameters"]["model_kwargs"] = {"hidden": [7]}
    wrong = tmp_path / "wrong.ckpt"
    torch.save(ckpt, wrong)
    assert "cannot rebuild" in _error(wrong)


def test_checkpoint_of_the_old_hparam_names_is_named_and_refused(best, tmp_path):
    ckpt = Checkpoint.load(best).content
    ckpt["hyper_parameters"]["net"] = ckpt["hyper_parameters"].pop("model")
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(CheckpointError, match=r"old.ckpt: not an aer checkpoint.*named it 'net': retrain"):
        Checkpoint.load(old)


def test_omegaconf_containers_in_a_checkpoint_are_refused(best, tmp_path):
    # hparams are plain values (train.py instantiates with _convert_="all"): nothing of omegaconf is unpickled
    ckpt = Checkpoint.load(best).content
    ckpt["datamodule_hyper_parameters"]["demo"] = OmegaConf.create(ckpt["datamodule_hyper_parameters"]["demo"])
    odd = tmp_path / "odd.ckpt"
    torch.save(ckpt, odd)
    with pytest.raises(CheckpointError, match="odd.ckpt: refused to load: it would import omegaconf"):
        Checkpoint.load(odd)


def test_datamodule_from_checkpoint(best, demo_root):
    dm = Checkpoint.load(best).datamodule("eval", {})
    assert dm.mode == "final" and str(dm.root) == str(demo_root) and dm.num_workers == 0
    dm = Checkpoint.load(best).datamodule("val", {"eval_batch_size": 7, "batch_size": None, "mode": "final"})
    assert dm.mode == "dev" and dm.eval_batch_size == 7 and dm.batch_size == 100
    with pytest.raises(ValueError, match="data.colour"):
        Checkpoint.load(best).datamodule("eval", {"colour": "red"})
    ckpt = Checkpoint.load(best)
    del ckpt.content["datamodule_hyper_parameters"]
    with pytest.raises(CheckpointError, match="best.ckpt: holds no data settings .* data.root"):
        ckpt.datamodule("eval", {})
    assert ckpt.datamodule("eval", {"root": str(demo_root)}).root == demo_root


def test_predict_split_serves_the_split_in_order(best):
    model = Checkpoint.load(best).tagger().train()
    dm = Checkpoint.load(best).datamodule("eval", {"eval_batch_size": 64})
    probs, labels, vids = predict_split(model, dm)
    assert model.training, "predict_split must restore the model's mode"
    assert probs.dtype == np.float32 and probs.shape == (300, 527)
    assert labels.dtype == bool and labels.shape == (300, 527)
    info = dm.split_info("test")
    assert np.array_equal(vids, info["video_id"]) and np.array_equal(labels, info["labels"])
    # one big batch gives the same numbers as batches of 64
    one = Checkpoint.load(best).datamodule("eval", {"eval_batch_size": 4096})
    np.testing.assert_allclose(predict_split(model, one)[0], probs, atol=1e-6)


def test_background_writes_hold_the_content_of_their_save_and_raise_their_errors(tmp_path):
    from aer.checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO(background=True)
    w = torch.zeros(1000)
    io.save_checkpoint({"w": w}, tmp_path / "a.ckpt")
    w += 1  # training goes on while the file is written: the file holds the weights at the save
    io.save_checkpoint({"w": w}, tmp_path / "b.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "a.ckpt")["w"], torch.zeros(1000))  # waits first
    io.teardown()
    assert torch.equal(torch.load(tmp_path / "b.ckpt", weights_only=True)["w"], torch.ones(1000))
    io.save_checkpoint({"w": w}, tmp_path / "a.ckpt" / "c.ckpt")  # below a file: fails in the worker thread
    with pytest.raises(OSError, match="a.ckpt"):
        io.teardown()
    assert not list(tmp_path.glob("**/*.partial"))

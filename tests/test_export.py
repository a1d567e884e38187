"""Export: every network as ONNX and TorchScript, uint8 features + lengths in, PyTorch's probabilities out."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aer.checkpoint import Checkpoint
from aer.data.labels import read_class_labels
from aer.export import CHECK_ATOL, check, load_runner, read_metadata, run
from aer.inference import predict_split
from aer.models import NETS, build_net
from aer.predict import load_input
from conftest import ROOT, config, train_overrides

FORMATS = [pytest.param("onnx", marks=pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")),
    reason="onnx and onnxruntime are not installed (pip install -e '.[export]')")), "torchscript"]
# every registered network; the LSTM with packed sequences (lengths) and standardised inputs (the
# Tagger's normalisation inside the graph)
NET_OVERRIDES = {
    "attention": ["model=attention"],
    "featattention": ["model=featattention", "model.hidden=64"],
    "transformer": ["model=transformer", "model.d_model=32", "model.ff_dim=64", "model.pool=cls",
                    "data.normalize=standardize"],
    "multiattention": ["model=multiattention", "data.normalize=standardize"],
    "skiplstm": ["model=skiplstm", "model.packed=true", "model.pool=mean", "model.hidden=32",
                 "data.normalize=standardize"],
}


class _TrainedOnDemand(dict):
    """Network name -> checkpoint; a network other than fc trains one epoch the first time it is asked for."""

    def __init__(self, fc: Path, demo_root: Path, tmp_path_factory):
        super().__init__(fc=fc)
        self.demo_root, self.tmp = demo_root, tmp_path_factory

    def __missing__(self, name: str) -> Path:
        from aer.train import run as train

        run_dir = self.tmp.mktemp(name)
        train(config("train", train_overrides(self.demo_root, run_dir, "trainer.max_epochs=1", *NET_OVERRIDES[name])))
        self[name] = run_dir / "checkpoints" / "last.ckpt"
        return self[name]


@pytest.fixture(scope="module")
def checkpoints(trained_run, thresholded_ckpt, demo_root, tmp_path_factory) -> dict[str, Path]:
    """One checkpoint per network: fc is the shared (thresholded) run, the others train one epoch here."""
    assert set(NET_OVERRIDES) | {"fc"} == set(NETS)
    return _TrainedOnDemand(thresholded_ckpt, demo_root, tmp_path_factory)


def _export(ckpt: Path, fmt: str, out: Path) -> dict:
    result = run(config("export", [f"ckpt={ckpt}", f"format={fmt}", f"out={out}",
                                        f"paths.output_dir={out.parent}"]))
    assert result["status"] == "ok" and Path(result["out"]) == out and result["max_abs_diff"] <= CHECK_ATOL
    assert not list(out.parent.glob("*.partial"))
    return result


@pytest.mark.parametrize("fmt", FORMATS)
# fc in the fast set; the other networks train a checkpoint first, and are slow
@pytest.mark.parametrize("net", [n if n == "fc" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(NETS)])
def test_exported_model_gives_pytorchs_probabilities_on_the_eval_split(checkpoints, demo_root, tmp_path, net, fmt):
    ckpt = checkpoints[net]
    path = tmp_path / f"model.{fmt}"
    _export(ckpt, fmt, path)
    state = Checkpoint.load(ckpt).content
    assert state["hyper_parameters"]["model"] == net
    # PyTorch's probabilities as evaluate.py computes them (x/255 in the data module)
    want, _, video_ids = predict_split(Checkpoint.load(ckpt).tagger(), Checkpoint.load(ckpt).datamodule("eval"))
    clips = load_input(demo_root / "eval")  # the release's uint8 features, zero-padded
    assert list(clips["video_id"]) == list(video_ids)
    lengths = clips["lengths"]
    assert (lengths == 10).any() and (lengths < 10).any() and lengths.min() < 5, "short and full-length clips"
    runner = load_runner(path, fmt)
    got = runner(clips["features"], lengths)
    assert got.dtype == np.float32 and got.shape == (300, 527)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # dynamic batch: one clip at a time, and an odd batch of short clips only
    for rows in (np.flatnonzero(lengths < 10)[:1], np.flatnonzero(lengths < 10), np.arange(7)):
        np.testing.assert_allclose(runner(clips["features"][rows], lengths[rows]), want[rows], rtol=0, atol=1e-5)
    # what lies past a clip's length is ignored, whatever it holds
    noisy = clips["features"].copy()
    pad = np.arange(10)[None, :] >= lengths[:, None]
    noisy[pad] = np.random.default_rng(0).integers(0, 256, (pad.sum(), 128), dtype=np.uint8)
    np.testing.assert_allclose(runner(noisy, lengths), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata_carries_classes_scaling_and_thresholds(checkpoints, demo_root, tmp_path, fmt):
    path = tmp_path / f"model.{fmt}"
    _export(checkpoints["fc"], fmt, path)
    meta = read_metadata(path)
    names = read_class_labels(demo_root)
    assert [(c["mid"], c["name"]) for c in meta["aer.classes"]] == names
    assert [c["index"] for c in meta["aer.classes"]] == list(range(527))
    assert meta["aer.input"]["features"] == {**meta["aer.input"]["features"], "dtype": "uint8",
                                             "shape": ["batch", 10, 128]}
    assert meta["aer.input"]["scaling"].startswith("x = features / 255")
    stored = Checkpoint.load(checkpoints["fc"]).thresholds()
    thr, info = stored.values, stored.info
    got = np.array([np.inf if t is None else t for t in meta["aer.thresholds"]["values"]], dtype=np.float32)
    np.testing.assert_array_equal(got, thr)
    assert meta["aer.thresholds"]["split"] == "val" and meta["aer.thresholds"]["rule"] == info["rule"]
    assert meta["aer.model"]["model"] == "fc" and meta["aer.model"]["checkpoint"] == str(checkpoints["fc"])


@pytest.mark.slow  # trains a skiplstm
def test_standardisation_is_in_the_graph(checkpoints, tmp_path):
    path = tmp_path / "model.torchscript"
    _export(checkpoints["skiplstm"], "torchscript", path)
    assert "(x - mean) / std" in read_metadata(path)["aer.input"]["scaling"]
    model = Checkpoint.load(checkpoints["skiplstm"]).tagger()
    assert model.hparams.normalize == "standardize" and not torch.all(model.input_std == 1)


@pytest.mark.slow  # trains two more networks
@pytest.mark.parametrize("fmt", FORMATS)
def test_check_refuses_a_file_that_is_not_the_model(checkpoints, tmp_path, fmt):
    path = tmp_path / f"model.{fmt}"
    _export(checkpoints["attention"], fmt, path)
    other = Checkpoint.load(checkpoints["multiattention"]).tagger().probabilities()
    with pytest.raises(RuntimeError, match="differ from PyTorch's"):
        check(path, fmt, other, 10, 128)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("skip", [True, False])
def test_masked_lstm_equals_packed_sequences(bidirectional, skip):
    """The exporters' form of the packed LSTM: same features on real frames, zeros past them."""
    torch.manual_seed(0)
    net = build_net("skiplstm", hidden=16, layers=3, skip=skip, bidirectional=bidirectional, packed=True).eval()
    lengths = torch.tensor([10, 1, 3, 7, 10, 5, 2])
    x = torch.randn(7, 10, 128) * (torch.arange(10)[None, :, None] < lengths[:, None, None])
    with torch.no_grad():
        torch.testing.assert_close(net._encode_masked(x, lengths), net._encode_packed(x, lengths),
                                   rtol=1e-5, atol=1e-6)


def _export_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "aer.export", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_writes_beside_the_checkpoint_and_fails_in_one_line(checkpoints, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(checkpoints["fc"], ckpt)
    proc = _export_cli(f"ckpt={ckpt}", "format=torchscript", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "best.torchscript.pt").is_file() and f"wrote {tmp_path / 'best.torchscript.pt'}" in proc.stdout
    for args, needle in ((["format=tflite"], "format='tflite': expected one of onnx, torchscript"),
                         ([], "ckpt is missing")):
        proc = _export_cli(*([f"ckpt={ckpt}"] if args else []), *args, f"hydra.run.dir={tmp_path / 'bad'}")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and needle in proc.stderr, proc.stderr

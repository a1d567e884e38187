"""Shared fixtures and helpers: tiny demo shards, composed configs, one short training run to reuse,
and an independent reader of shards that the data tests check aer.data against."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import google_crc32c
import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import aer.config  # noqa: F401 — registers the config schema and resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED = ROOT.parent / "shared" / "data" / "audioset"
REAL_SKIP = f"the real AudioSet bal_train split is not at {SHARED} (it lives in ../shared beside the checkout)"

TINY = 600  # clips in the tests' demo set: a few seconds end to end
# its id-keyed dev split (data.split_seed=0, data.val_fraction=0.2): clips held out, clips trained on
DEV_VAL, DEV_TRAIN = 113, 487


def pytest_configure(config) -> None:
    """One torch thread in the test process: the tests' tensors are tiny, and on a shared 2-core box a
    second thread's spin-waits cost more than the work (measured under load 9: an orthogonal init of a
    600x1000 weight took 0.12 s on one thread, 2.5 s on two). Subprocesses keep torch's default."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    from aer.data.demo import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root, clips=TINY, eval_clips=300, seed=0)
    return root


def train_overrides(demo_root: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that point a train config at the tiny demo set and a temporary output dir."""
    return [f"data.root={demo_root}", f"data.demo.clips={TINY}", "data.demo.eval_clips=300",
            "data.batch_size=100", "data.convert_workers=1", f"paths.output_dir={out}",
            f"paths.log_dir={out}", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", *extra]


def disk_full_after(max_bytes: int):
    """A preexec_fn: the child's files cannot grow past `max_bytes`, so every write beyond fails as on a
    full disk (EFBIG, with SIGXFSZ ignored) wherever it happens: h5py, torch.save, json, PNG, download."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


def compose_cfg(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    return cfg


def config(name: str, overrides: list[str]):
    """The settings object the command `name` runs on (aer.config.build of its composed config)."""
    from aer.config import build

    return build(name, compose_cfg(name, overrides))


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs a root script as a user would, in a subprocess (the Hydra CLI path included)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory) -> Path:
    """One short fc training run on the demo set (dev mode); its run dir."""
    from aer.train import run

    out = tmp_path_factory.mktemp("trained")
    run(config("train", train_overrides(demo_root, out)))
    return out


@pytest.fixture(scope="session")
def thresholded_ckpt(trained_run, tmp_path_factory) -> Path:
    """A copy of trained_run's best.ckpt with per-class thresholds chosen on its dev split (best F1)."""
    from aer.thresholds import run

    out = tmp_path_factory.mktemp("thresholded")
    ckpt = out / "best.ckpt"
    run(config("thresholds", [f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", f"out={ckpt}",
                                   f"paths.output_dir={out}"]))
    return ckpt


# ---- the independent oracle: TFRecord framing and the protobuf wire format read by hand (no aer.data code),
# and what a folder of shards must convert to
def mask(crc: int) -> int:
    """TensorFlow's masking: rotate right by 15 bits and add 0xa282ead8 (crc32c.h)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % (1 << 32)


def independent_records(data: bytes) -> list[bytes]:
    """Every payload of a well-formed shard; AssertionError on any damage (both CRCs checked)."""
    out, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 16, "truncated"
        header = data[pos:pos + 8]
        length = int.from_bytes(header, "little")
        assert int.from_bytes(data[pos + 8:pos + 12], "little") == mask(google_crc32c.value(header)), "len crc"
        payload = data[pos + 12:pos + 12 + length]
        assert len(payload) == length and len(data) >= pos + 16 + length, "truncated"
        crc = int.from_bytes(data[pos + 12 + length:pos + 16 + length], "little")
        assert crc == mask(google_crc32c.value(payload)), "data crc"
        out.append(payload)
        pos += 16 + length
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one message: ints for varint/fixed, bytes for LEN."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise AssertionError(f"wire type {wt}")
        yield num, wt, val


def _feature(buf: bytes) -> tuple[str, list]:
    """A tf.train.Feature: its kind and values (packed or not)."""
    kind, values = None, []
    for num, _wt, val in _fields(buf):
        kind, values = {1: "bytes", 2: "float", 3: "int64"}[num], []
        for n2, wt2, v in _fields(val):
            assert n2 == 1
            if kind == "bytes":
                values.append(bytes(v))
            elif kind == "float":
                values.extend(struct.unpack(f"<{len(v) // 4}f", v) if wt2 == 2 else struct.unpack("<f", v))
            elif wt2 == 2:
                p = 0
                while p < len(v):
                    x, p = _varint(v, p)
                    values.append(x - (1 << 64) if x >> 63 else x)
            else:
                values.append(v - (1 << 64) if v >> 63 else v)
    return kind, values


def _map(buf: bytes) -> dict[str, bytes]:
    out = {}
    for num, _, entry in _fields(buf):
        assert num == 1
        key, value = "", b""
        for n2, _, v in _fields(entry):
            if n2 == 1:
                key = bytes(v).decode()
            elif n2 == 2:
                value = bytes(v)
        out[key] = value
    return out


def wire_parse(payload: bytes) -> dict:
    """The AudioSet fields of one SequenceExample, read from the wire format by hand."""
    context, lists = {}, {}
    for num, _, val in _fields(payload):
        if num == 1:
            context.update(_map(val))
        elif num == 2:
            lists.update(_map(val))
    out = {}
    for key, name in (("video_id", "video_id"), ("labels", "labels"), ("start_time_seconds", "start"),
                      ("end_time_seconds", "end")):
        if key in context:
            kind, values = _feature(context[key])
            out[name] = values
    out["video_id"] = out["video_id"][0].decode()
    out["start"] = out["start"][0] if out.get("start") else float("nan")
    out["end"] = out["end"][0] if out.get("end") else float("nan")
    frames = []
    for num, _, feat in _fields(lists.get("audio_embedding", b"")):
        assert num == 1
        kind, values = _feature(feat)
        assert kind == "bytes" and len(values) == 1
        frames.append(values[0])
    out["frames"] = frames
    return out




FIELDS = ("features", "lengths", "labels", "video_id", "start_time", "end_time")


def expected_split(src: Path, num_classes: int = 527) -> dict[str, np.ndarray]:
    """The arrays a conversion of `src` must hold: shards in byte order of their names, records in file order."""
    shards = sorted(Path(src).glob("*.tfrecord"), key=lambda p: os.fsencode(p.name))
    clips = [wire_parse(p) for s in shards for p in independent_records(s.read_bytes())]
    n = len(clips)
    feats = np.zeros((n, 10, 128), np.uint8)
    labels = np.zeros((n, num_classes), bool)
    for i, c in enumerate(clips):
        feats[i, :len(c["frames"])] = np.frombuffer(b"".join(c["frames"]), np.uint8).reshape(-1, 128)
        labels[i, c["labels"]] = True
    return {"features": feats, "lengths": np.array([len(c["frames"]) for c in clips]), "labels": labels,
            "video_id": np.array([c["video_id"] for c in clips], dtype=object),
            "start_time": np.array([c["start"] for c in clips], np.float32),
            "end_time": np.array([c["end"] for c in clips], np.float32)}


def read_h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in FIELDS if k != "video_id"}
        out["video_id"] = f["video_id"].asstr()[()]
        out["attrs"] = dict(f.attrs)
        out["dtypes"] = {k: f[k].dtype for k in FIELDS}
    return out


def assert_same(got: dict, want: dict) -> None:
    assert len(got["lengths"]) == len(want["lengths"])
    for k in FIELDS:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b.astype(a.dtype), err_msg=k)
        else:
            assert np.array_equal(a.astype(b.dtype) if k == "lengths" else a, b), k

"""Predictions: top-k classes per clip, by name, from shards or an .h5, equal to the model's probabilities."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aer.checkpoint import Checkpoint
from aer.data.convert import convert
from aer.predict import CSV_COLUMNS, LABELS_COLUMNS, load_input, run
from conftest import ROOT, config


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    return trained_run / "checkpoints" / "best.ckpt"


def _predict(ckpt: Path, input: Path, out: Path, *extra: str) -> tuple[list[dict], list[dict]]:
    result = run(config("predict", [f"ckpt={ckpt}", f"input={input}", f"out={out}", *extra]))
    assert result["status"] == "ok"
    with open(out / "predictions.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    return rows, json.loads((out / "predictions.json").read_text())


def _model_probs(ckpt: Path, input: Path) -> tuple[np.ndarray, dict]:
    clips = load_input(input)
    with torch.inference_mode():
        probs = Checkpoint.load(ckpt).tagger().predict_proba(torch.from_numpy(clips["features"]),
                                                             torch.from_numpy(clips["lengths"]))
    return probs.numpy(), clips


def _demo_names(demo_root: Path) -> dict[int, tuple[str, str]]:
    with open(demo_root / "class_labels_indices.csv", newline="") as f:
        return {int(r["index"]): (r["mid"], r["display_name"]) for r in csv.DictReader(f)}


def _check(rows: list[dict], entries: list[dict], probs: np.ndarray, clips: dict, k: int,
           names: dict[int, tuple[str, str]] | None) -> None:
    n = len(clips["lengths"])
    assert len(rows) == n * k and len(entries) == n
    for c, entry in enumerate(entries):
        assert entry["video_id"] == clips["video_id"][c]
        assert entry["start_time"] == pytest.approx(float(clips["start_time"][c]))
        assert entry["end_time"] == pytest.approx(float(clips["end_time"][c]))
        top = entry["top"]
        got = np.array([t["prob"] for t in top])
        assert len(top) == k
        assert np.all(np.diff(got) <= 0), "most probable first"
        # the model's own probabilities (to float32 rounding: batches of another size sum in another order),
        # and the k largest of them
        np.testing.assert_allclose(got, probs[c, [t["index"] for t in top]], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(got, np.sort(probs[c])[::-1][:k], rtol=1e-5, atol=1e-8)
        for rank, t in enumerate(top, start=1):
            row = rows[c * k + rank - 1]
            assert (row["video_id"], int(row["rank"]), int(row["index"])) == (entry["video_id"], rank, t["index"])
            assert float(row["prob"]) == t["prob"]  # the same shortest float32 text in both files
            assert (row["mid"], row["name"]) == (t["mid"], t["name"])
            if names is not None:
                assert (t["mid"], t["name"]) == names[t["index"]]


def test_predict_on_a_shard_dir(ckpt, demo_root, tmp_path):
    rows, entries = _predict(ckpt, demo_root / "eval", tmp_path, "top_k=5", "batch_size=128")
    probs, clips = _model_probs(ckpt, demo_root / "eval")
    _check(rows, entries, probs, clips, 5, _demo_names(demo_root))
    assert rows[0]["name"].startswith("Demo ")


def test_predict_on_an_h5(ckpt, demo_root, tmp_path):
    h5 = tmp_path / "cache" / "eval.h5"
    convert(demo_root / "eval", h5)
    rows, entries = _predict(ckpt, h5, tmp_path / "out", "top_k=3")
    probs, clips = _model_probs(ckpt, h5)
    _check(rows, entries, probs, clips, 3, _demo_names(demo_root))
    shard_clips = load_input(demo_root / "eval")
    assert list(clips["video_id"]) == list(shard_clips["video_id"])  # same clips, same order as the shards


def test_labels_option_and_index_fallback(ckpt, demo_root, tmp_path, caplog):
    custom = tmp_path / "my_names.csv"
    custom.write_text("index,mid,display_name\n" + "".join(f'{i},/m/x{i},"Sound, no. {i}"\n' for i in range(527)))
    rows, _ = _predict(ckpt, demo_root / "eval", tmp_path / "a", "top_k=2", f"labels={custom}")
    assert rows[0]["name"] == f"Sound, no. {rows[0]['index']}"

    # a checkpoint whose data root is gone, on shards with no labels file anywhere near: its own names
    moved = tmp_path / "moved.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["datamodule_hyper_parameters"]["root"] = str(tmp_path / "gone")
    torch.save(state, moved)
    shards = tmp_path / "lonely" / "eval"
    shards.mkdir(parents=True)
    for p in sorted((demo_root / "eval").glob("*.tfrecord"))[:3]:
        (shards / p.name).write_bytes(p.read_bytes())
    rows, entries = _predict(moved, shards, tmp_path / "b", "top_k=2")
    i = int(rows[0]["index"])
    assert rows[0]["name"] == f"Demo {'transient' if i % 4 == 3 else 'stationary'} {i}"
    probs, clips = _model_probs(ckpt, shards)
    _check(rows, entries, probs, clips, 2, None)
    # an older checkpoint, without the classes' names: named by index, with a warning
    del state["aer_classes"]
    torch.save(state, moved)
    with caplog.at_level(logging.WARNING):
        rows, entries = _predict(moved, shards, tmp_path / "c", "top_k=2")
    assert "class_labels_indices.csv" in caplog.text
    assert rows[0]["name"] == f"class {rows[0]['index']}" and rows[0]["mid"] == ""


@pytest.mark.parametrize("override,error", [
    ("top_k=600", "top_k=600: the model has only 527 classes"),
    ("top_k=0", "top_k=0: expected a positive integer"),
    ("input=/nonexistent/eval", "input=/nonexistent/eval: no such file or directory"),
])
def test_mistakes_are_named(ckpt, demo_root, tmp_path, override, error):
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        run(config("predict", [f"ckpt={ckpt}", f"input={demo_root / 'eval'}", f"out={tmp_path}", override]))
    assert not (tmp_path / "predictions.csv").exists()


def _predict_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m aer.predict ...` as a user runs it (conftest's run_script runs root scripts only)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "aer.predict", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_writes_into_a_hydra_run_dir_and_fails_clearly(ckpt, demo_root, tmp_path):
    proc = _predict_cli(f"ckpt={ckpt}", f"input={demo_root / 'eval'}", "top_k=2",
                      f"paths.log_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "predict" / "runs").iterdir()
    assert (run_dir / "predictions.csv").read_text().count("\n") == 1 + 300 * 2
    assert len(json.loads((run_dir / "predictions.json").read_text())) == 300

    missing = tmp_path / "nope.ckpt"
    proc = _predict_cli(f"ckpt={missing}", f"input={demo_root / 'eval'}",
                      f"hydra.run.dir={tmp_path / 'failed'}")
    assert proc.returncode == 1
    assert f"error: {missing}: no such checkpoint file" in proc.stderr
    assert "Traceback" not in proc.stderr


def _labels_csv(out: Path) -> list[dict]:
    with open(out / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == LABELS_COLUMNS
        return list(reader)


def test_labels_above_the_checkpoints_thresholds(thresholded_ckpt, demo_root, tmp_path):
    from aer.checkpoint import Checkpoint

    result = run(config("predict", [f"ckpt={thresholded_ckpt}", f"input={demo_root / 'eval'}",
                                         f"out={tmp_path}", "top_k=3", "batch_size=64"]))
    assert "rule=f1, chosen on split=val" in result["thresholds"]
    thr = Checkpoint.load(thresholded_ckpt).thresholds().values
    probs, clips = _model_probs(thresholded_ckpt, demo_root / "eval")
    entries = json.loads((tmp_path / "predictions.json").read_text())
    rows = _labels_csv(tmp_path)
    want = probs >= thr  # (to float32 rounding of batches of other sizes: no clip sits that close to a threshold)
    assert want.any() and not want.all()
    assert {(r["video_id"], int(r["index"])) for r in rows} == {
        (clips["video_id"][c], i) for c, i in zip(*np.nonzero(want))}
    for c, entry in enumerate(entries):
        tagged = entry["labels"]
        assert [t["index"] for t in tagged] == sorted(np.flatnonzero(want[c]), key=lambda i: -probs[c, i])
        np.testing.assert_allclose([t["prob"] for t in tagged], probs[c, [t["index"] for t in tagged]], rtol=1e-5)
        assert all(t["prob"] >= thr[t["index"]] for t in tagged)
    for r in rows:
        assert float(r["threshold"]) == thr[int(r["index"])] and float(r["prob"]) >= float(r["threshold"])
    assert len(entries[0]["top"]) == 3  # the top-k as before


def test_one_threshold_for_every_class(ckpt, demo_root, tmp_path):
    result = run(config("predict", [f"ckpt={ckpt}", f"input={demo_root / 'eval'}", f"out={tmp_path}",
                                         "threshold=0.3"]))
    assert result["thresholds"] == "0.3 for every class (threshold=)"
    probs, _ = _model_probs(ckpt, demo_root / "eval")
    rows = _labels_csv(tmp_path)
    assert len(rows) == (probs >= np.float32(0.3)).sum() > 0
    with pytest.raises(ValueError, match="threshold=2.0: expected a number between 0 and 1 or null"):
        run(config("predict", [f"ckpt={ckpt}", f"input={demo_root / 'eval'}", f"out={tmp_path}",
                                    "threshold=2.0"]))

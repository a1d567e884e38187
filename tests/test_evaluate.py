"""evaluate.py: scores as scikit-learn computes them, the outputs' layout, the CLI from any cwd, errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from aer.data.labels import read_class_labels
from aer.evaluate import run
from aer.scoring import PER_CLASS_COLUMNS
from conftest import DEV_VAL, config, run_script


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory) -> Path:
    """The eval split scored from another directory with a relative ckpt path, in this process (the
    CLI itself: test_cli_from_another_cwd_writes_what_run_writes)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    out = tmp_path_factory.mktemp("evaluated") / "run"
    ckpt = os.path.relpath(trained_run / "checkpoints" / "best.ckpt", elsewhere)
    printed = io.StringIO()
    with contextlib.chdir(elsewhere), contextlib.redirect_stdout(printed):
        run(config("evaluate", [f"ckpt={ckpt}", f"paths.output_dir={out}"]))
    (out / "stdout.txt").write_text(printed.getvalue())
    return out


@pytest.mark.slow
def test_cli_from_another_cwd_writes_what_run_writes(evaluated, trained_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ckpt = os.path.relpath(trained_run / "checkpoints" / "best.ckpt", elsewhere)
    proc = run_script("evaluate.py", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'run'}", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli, here = _metrics(tmp_path / "run"), _metrics(evaluated)
    assert {k: v for k, v in cli.items() if k != "seconds"} == {k: v for k, v in here.items() if k != "seconds"}
    assert f"mAP  {cli['test/mAP']:.4f}" in proc.stdout and f"{cli['ckpt']} on split=eval" in proc.stdout


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_cli_prints_and_writes_the_scores(evaluated, trained_run):
    out = (evaluated / "stdout.txt").read_text()
    m = _metrics(evaluated)
    assert m["status"] == "ok" and m["split"] == "eval" and m["clips"] == 300
    assert m["ckpt"] == str(trained_run / "checkpoints" / "best.ckpt")
    for key in ("test/mAP", "test/mAUC", "test/dprime", "test/classes_scored"):
        assert key in m
    assert f"mAP  {m['test/mAP']:.4f}" in out and f"mAUC {m['test/mAUC']:.4f}" in out
    assert f"d'   {m['test/dprime']:.4f}" in out and f"classes scored: {m['test/classes_scored']} of 527" in out
    # d' = sqrt(2) * Phi^-1(mAUC)
    from scipy.stats import norm

    assert m["test/dprime"] == pytest.approx(np.sqrt(2) * norm.ppf(m["test/mAUC"]), abs=1e-9)


def test_scores_match_scikit_learn_macro_averages(evaluated):
    with h5py.File(evaluated / "predictions.h5") as f:
        probs, labels = f["probs"][()], f["labels"][()]
    scored = labels.any(0)
    m = _metrics(evaluated)
    assert m["test/classes_scored"] == scored.sum() and m["test/classes_unscored"] == (~scored).sum()
    assert 0 < scored.sum() < 527, "the tiny eval split should leave some classes without positives"
    ap = average_precision_score(labels[:, scored], probs[:, scored], average="macro")
    auc = roc_auc_score(labels[:, scored], probs[:, scored], average="macro")
    assert m["test/mAP"] == pytest.approx(ap, abs=1e-6)
    assert m["test/mAUC"] == pytest.approx(auc, abs=1e-6)


def test_predictions_h5_layout(evaluated, demo_root):
    with h5py.File(evaluated / "predictions.h5") as f:
        assert f["probs"].dtype == np.float32 and f["probs"].shape == (300, 527)
        assert f["labels"].dtype == bool and f["labels"].shape == (300, 527)
        vids = f["video_id"].asstr()[()]
        probs = f["probs"][()]
    assert len(vids) == 300 and len(set(vids)) == 300 and all(len(v) == 11 for v in vids)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert not list(evaluated.glob("*.partial"))


def test_per_class_csv(evaluated, demo_root):
    with open(evaluated / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == PER_CLASS_COLUMNS
    names = read_class_labels(demo_root)
    assert [(r["mid"], r["name"]) for r in rows] == names and [int(r["index"]) for r in rows] == list(range(527))
    with h5py.File(evaluated / "predictions.h5") as f:
        probs, labels = f["probs"][()], f["labels"][()]
    for r in rows:
        i, pos = int(r["index"]), int(r["positives"])
        assert pos == labels[:, i].sum()
        if pos == 0:
            assert r["AP"] == "" and r["AUC"] == ""
        else:
            assert float(r["AP"]) == pytest.approx(average_precision_score(labels[:, i], probs[:, i]), abs=1e-8)
            assert float(r["AUC"]) == pytest.approx(roc_auc_score(labels[:, i], probs[:, i]), abs=1e-8)
    m = _metrics(evaluated)
    assert np.mean([float(r["AP"]) for r in rows if r["AP"]]) == pytest.approx(m["test/mAP"], abs=1e-8)


def test_val_split_reproduces_the_training_runs_validation(trained_run, tmp_path):
    m = run(config("evaluate", [f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}", "split=val",
                                f"paths.output_dir={tmp_path}"]))
    train = _metrics(trained_run)
    assert m["split"] == "val" and m["clips"] == DEV_VAL  # the dev split of the 600 clips
    for key in ("mAP", "mAUC", "dprime", "classes_scored"):  # reported under the name training gave them
        assert m[f"val/{key}"] == pytest.approx(train[f"val/{key}"], abs=1e-6), key
    assert not [k for k in m if k.startswith("test/")]


@pytest.mark.parametrize("extra", [[], ["data=demo"], ["data=audioset"]])
def test_data_overrides_compose(trained_run, demo_root, tmp_path, extra):
    over = config("evaluate", ["ckpt=x.ckpt", *extra, f"data.root={demo_root}", f"paths.output_dir={tmp_path}"]).data
    assert over["root"] == str(demo_root)
    if not extra:
        assert over == {"root": str(demo_root)}, "unset data keys must not override the checkpoint's"
    else:
        assert over["batch_size"] in (100, 500) and "_target_" not in over


def test_relative_data_root_is_taken_from_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = config("evaluate", ["ckpt=x.ckpt", "data.root=rel/data", f"paths.output_dir={tmp_path}"])
    assert c.data["root"] == str(tmp_path / "rel" / "data")


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["ckpt=x.ckpt", "split=foo"], "split='foo': expected one of eval, val"),
    ([], "ckpt is missing"),
])
def test_config_errors_are_one_line(tmp_path, args, needle):
    proc = run_script("evaluate.py", *args, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [proc.stderr.strip().splitlines()[-1]]
    assert _metrics(tmp_path)["status"] == "failed"


def test_bad_checkpoint_is_reported_as_a_user_error(tmp_path, monkeypatch):
    """CheckpointError is a ValueError: aer.cli prints it as one line, without a traceback."""
    from aer.checkpoint import CheckpointError
    from aer.errors import is_user_error

    assert is_user_error(CheckpointError("x"))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=f"{bad}: not a torch checkpoint"):
        run(config("evaluate", ["ckpt=bad.ckpt", f"paths.output_dir={tmp_path}"]))


def _decisions_match_scikit_learn(m: dict, probs: np.ndarray, labels: np.ndarray, thr: np.ndarray) -> None:
    from sklearn.metrics import f1_score, precision_score, recall_score

    pred, scored = probs >= thr, labels.any(0)
    for name, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        assert m[f"test/micro_{name}"] == pytest.approx(fn(labels, pred, average="micro", zero_division=0), abs=1e-9)
        assert m[f"test/macro_{name}"] == pytest.approx(
            fn(labels[:, scored], pred[:, scored], average="macro", zero_division=0), abs=1e-9)


def test_f1_precision_recall_at_0_5_without_stored_thresholds(evaluated):
    with h5py.File(evaluated / "predictions.h5") as f:
        probs, labels = f["probs"][()], f["labels"][()]
    m = _metrics(evaluated)
    assert m["thresholds"] == "0.5 for every class (none stored)"
    _decisions_match_scikit_learn(m, probs, labels, np.full(527, 0.5, np.float32))
    out = (evaluated / "stdout.txt").read_text()
    assert f"micro F1 {m['test/micro_f1']:.4f}  precision {m['test/micro_precision']:.4f}" in out
    assert f"macro F1 {m['test/macro_f1']:.4f}" in out


def test_f1_at_the_checkpoints_thresholds(thresholded_ckpt, tmp_path):
    from aer.checkpoint import Checkpoint

    m = run(config("evaluate", [f"ckpt={thresholded_ckpt}", f"paths.output_dir={tmp_path}"]))
    assert m["split"] == "eval" and "rule=f1, chosen on split=val" in m["thresholds"]
    thr = Checkpoint.load(thresholded_ckpt).thresholds().values
    with h5py.File(tmp_path / "predictions.h5") as f:
        probs, labels = f["probs"][()], f["labels"][()]
    _decisions_match_scikit_learn(m, probs, labels, thr)
    with open(tmp_path / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        i = int(r["index"])
        assert np.float32(r["threshold"]) == thr[i] and int(r["predicted"]) == (probs[:, i] >= thr[i]).sum()
        if labels[:, i].any():
            assert float(r["F1"]) == pytest.approx(
                2 * (labels[:, i] & (probs[:, i] >= thr[i])).sum() / (labels[:, i].sum() + int(r["predicted"])))

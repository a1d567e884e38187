"""Per-class thresholds: the known best-F1 / target-precision choices, chosen on the dev split and written beside
the checkpoint (never into it)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_recall_curve

from aer.checkpoint import THRESHOLDS_KEY, Checkpoint, CheckpointError
from aer.inference import predict_split
from aer.metrics import choose_thresholds, decision_scores
from aer.thresholds import run
from conftest import DEV_VAL, config

# columns: classes; each row a clip. Class 0's best F1 (6/7) tags the clips down to 0.6 (the next lower
# score: 0.3, so the threshold is 0.45), class 1's (4/5) down to 0.4 across a tie (next 0.1: 0.25), class 2
# has no positives, class 3's F1 is 2/3 down to 0.9 and down to 0.5: the higher is kept (next 0.8: 0.85).
SCORES = np.array([
    [0.9, 0.5, 0.9, 0.9],
    [0.8, 0.5, 0.8, 0.8],
    [0.7, 0.4, 0.7, 0.7],
    [0.6, 0.1, 0.6, 0.5],
    [0.3, 0.05, 0.3, 0.3],
    [0.2, 0.02, 0.2, 0.2],
], dtype=np.float32)
LABELS = np.array([
    [1, 1, 0, 1],
    [1, 0, 0, 0],
    [0, 1, 0, 0],
    [1, 0, 0, 1],
    [0, 0, 0, 0],
    [0, 0, 0, 0],
], dtype=bool)


def _choose(rule="f1", target=0.5, fallback=0.5):
    thr, chosen = choose_thresholds(torch.from_numpy(SCORES), torch.from_numpy(LABELS), rule, target, fallback)
    return thr.numpy(), chosen.numpy()


def test_best_f1_thresholds_are_the_known_ones():
    thr, chosen = _choose(fallback=0.25)
    np.testing.assert_allclose(thr, [0.45, 0.25, 0.25, 0.85], rtol=1e-6)
    assert chosen.tolist() == [True, True, False, True]
    for c in (0, 1, 3):  # and they give the F1 claimed, as scikit-learn counts it
        assert f1_score(LABELS[:, c], SCORES[:, c] >= thr[c]) == pytest.approx([6 / 7, 4 / 5, None, 2 / 3][c])


def test_target_precision_takes_the_lowest_threshold_that_reaches_it():
    thr, chosen = _choose("precision", target=0.75)
    # class 0: precision 1, 1, 2/3, 3/4 down to 0.9..0.6, then 3/5: down to 0.6 (next 0.3) is the most recall
    # class 1: 1/2 down to 0.5 (a tie of a positive and a negative), 2/3 down to 0.4, then lower: never reached
    np.testing.assert_allclose(thr[[0, 2, 3]], [0.45, 0.5, 0.85], rtol=1e-6)
    assert np.isinf(thr[1]) and chosen.tolist() == [True, False, False, True]
    thr, _ = _choose("precision", target=1.0)
    assert thr[0] == pytest.approx(0.75)


def test_best_f1_matches_scikit_learn_on_random_scores():
    rng = np.random.default_rng(3)
    labels = rng.random((400, 40)) < rng.uniform(0.02, 0.4, 40)
    scores = np.clip(labels * rng.uniform(0, 0.5, 40) + rng.random((400, 40)), 0, None).astype(np.float32)
    scores[:100, :5] = np.round(scores[:100, :5], 1)  # ties
    thr, _ = choose_thresholds(torch.from_numpy(scores), torch.from_numpy(labels))
    for c in range(40):
        p, r, _ = precision_recall_curve(labels[:, c], scores[:, c])
        best = np.max(2 * p * r / np.maximum(p + r, 1e-300))
        assert f1_score(labels[:, c], scores[:, c] >= thr[c].item()) == pytest.approx(best, abs=1e-12), c


def test_thresholds_between_adjacent_floats_keep_the_decisions():
    a = np.float32(0.3)
    b = np.nextafter(a, np.float32(0))  # no float32 between them
    scores = np.array([[a], [b], [0.1]], dtype=np.float32)
    thr, _ = choose_thresholds(torch.from_numpy(scores), torch.tensor([[True], [False], [False]]))
    assert thr.item() == a and (scores[:, 0] >= thr.item()).tolist() == [True, False, False]


def test_bad_rule_and_target():
    with pytest.raises(ValueError, match="rule='best': expected one of f1, precision"):
        _choose("best")
    with pytest.raises(ValueError, match="target=0.0"):
        _choose("precision", target=0.0)


def test_command_chooses_on_the_dev_split_and_writes_them_beside(thresholded_ckpt, trained_run):
    ckpt = Checkpoint.load(thresholded_ckpt)
    stored = ckpt.thresholds()
    values, info = stored.values, stored.info
    assert stored.path == thresholded_ckpt.with_name("best.thresholds.json") and stored.path.is_file()
    assert values.shape == (527,) and values.dtype == np.float32
    assert info["split"] == "val" and info["clips"] == DEV_VAL and info["rule"] == "f1"  # the dev split, not eval
    # the thresholds are those of the dev split's probabilities, and give the F1 recorded
    probs, labels, _ = predict_split(ckpt.tagger(), ckpt.datamodule("val"))
    want, _ = choose_thresholds(torch.from_numpy(probs), torch.from_numpy(labels))
    np.testing.assert_array_equal(values, want.numpy())
    assert info["val/micro_f1"] == pytest.approx(f1_score(labels, probs >= values, average="micro"))
    assert info["classes_fallback"] == (~labels.any(0)).sum() > 0
    assert np.all(values[~labels.any(0)] == 0.5)
    # the checkpoint (a byte copy of the source: out=) is never rewritten; the source has no thresholds
    source = trained_run / "checkpoints" / "best.ckpt"
    assert thresholded_ckpt.read_bytes() == source.read_bytes() and Checkpoint.load(source).thresholds() is None
    assert THRESHOLDS_KEY not in ckpt.content
    assert json.loads((thresholded_ckpt.parent / "metrics.json").read_text())["status"] == "ok"
    assert "rule=f1, chosen on split=val" in ckpt.decision_thresholds(None)[1]


def test_rule_precision_beside_the_checkpoint_it_names(thresholded_ckpt, tmp_path):
    ckpt = tmp_path / "c.ckpt"
    shutil.copy(thresholded_ckpt, ckpt)
    before = ckpt.read_bytes()
    result = run(config("thresholds", [f"ckpt={ckpt}", "rule=precision", "target=0.8", f"paths.output_dir={tmp_path}"]))
    assert result["ckpt"] == str(ckpt) and not list(tmp_path.glob("*.partial")) and ckpt.read_bytes() == before
    stored = Checkpoint.load(ckpt).thresholds()
    assert stored.info["rule"] == "precision" and stored.info["target"] == 0.8
    assert np.isinf(stored.values).sum() == stored.info["classes_never"]


def test_thresholds_of_a_checkpoint_that_changed_are_refused(thresholded_ckpt, trained_run, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(thresholded_ckpt, ckpt)
    shutil.copy(thresholded_ckpt.with_name("best.thresholds.json"), tmp_path / "best.thresholds.json")
    Checkpoint.load(ckpt)  # bound to this content: fine
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["epoch"] += 1  # e.g. a resumed run rewrote it
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=r"best.thresholds.json: chosen for another version of .*best.ckpt"):
        Checkpoint.load(ckpt)


def test_final_mode_checkpoints_take_thresholds_from_a_dev_run(thresholded_ckpt, trained_run, tmp_path):
    final = tmp_path / "final.ckpt"
    state = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    state["datamodule_hyper_parameters"]["mode"] = "final"
    torch.save(state, final)
    with pytest.raises(ValueError, match="data.mode=final model, trained on the dev split too"):
        run(config("thresholds", [f"ckpt={final}", f"paths.output_dir={tmp_path}"]))
    run(config("thresholds", [f"ckpt={final}", f"from_ckpt={thresholded_ckpt}", f"paths.output_dir={tmp_path}"]))
    got = Checkpoint.load(final).thresholds()
    np.testing.assert_array_equal(got.values, Checkpoint.load(thresholded_ckpt).thresholds().values)
    assert got.info["copied_from"] == str(thresholded_ckpt)


def test_an_older_checkpoints_own_entry_is_read_and_checked(thresholded_ckpt, tmp_path):
    stored = Checkpoint.load(thresholded_ckpt).thresholds()
    state = torch.load(thresholded_ckpt, map_location="cpu", weights_only=True)
    state[THRESHOLDS_KEY] = {"values": torch.from_numpy(stored.values), "rule": "f1", "split": "val"}
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    np.testing.assert_array_equal(Checkpoint.load(old).thresholds().values, stored.values)
    state[THRESHOLDS_KEY]["values"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"bad.ckpt: its 'aer_thresholds' entry is not 527 thresholds"):
        Checkpoint.load(tmp_path / "bad.ckpt")


def test_decision_scores_match_scikit_learn():
    from sklearn.metrics import precision_score, recall_score

    rng = np.random.default_rng(5)
    labels = rng.random((300, 30)) < 0.15
    labels[:, 4] = False  # a class without positives: out of the macro means, in the micro sums
    probs = rng.random((300, 30)).astype(np.float32)
    thr = rng.uniform(0.5, 1.0, 30).astype(np.float32)
    thr[7] = np.inf  # never predicted: precision 0 (zero_division=0)
    d = decision_scores(probs, labels, thr)
    pred, s = probs >= thr, labels.any(0)
    for name, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        assert d[f"micro_{name}"] == pytest.approx(fn(labels, pred, average="micro", zero_division=0), abs=1e-12)
        assert d[f"macro_{name}"] == pytest.approx(
            fn(labels[:, s], pred[:, s], average="macro", zero_division=0), abs=1e-12)

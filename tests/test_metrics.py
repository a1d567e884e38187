"""aer.metrics' AP and AUC per class against scikit-learn, on inputs with ties, signs and degenerate classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

import aer.metrics as metrics
from aer.metrics import per_class_scores, summarize


def _reference(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ap, auc = np.full(scores.shape[1], np.nan), np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        y, s = labels[:, c], scores[:, c]
        if y.any():
            ap[c] = average_precision_score(y, s)
            if not y.all():
                auc[c] = roc_auc_score(y, s)
    return ap, auc


@pytest.mark.parametrize("path", ["searched", "curves"])  # the CPU's path, and the accelerators' run here
@pytest.mark.parametrize("levels", [0, 2, 10, 1000])  # 0: continuous scores; else that many distinct values
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_scores_equal_scikit_learn(levels, seed, path):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(2, 400)), int(rng.integers(1, 30))
    labels = rng.random((n, c)) < rng.random(c) * 0.6
    labels[:, 0] = False  # a class without positives
    if c > 1:
        labels[:, 1] = True  # one without negatives
    scores = (rng.random((n, c)) * 2 - 1).astype(np.float32)  # negative scores too
    if levels:
        scores = (np.round(scores * levels) / levels).astype(np.float32)
    scores[scores == 0] = -0.0 if seed % 2 else 0.0  # -0.0 ties +0.0
    fn = per_class_scores if path == "searched" else metrics._per_class_scores_curves
    ap, auc = fn(torch.from_numpy(scores), torch.from_numpy(labels))
    ref_ap, ref_auc = _reference(scores, labels)
    np.testing.assert_allclose(ap.numpy(), ref_ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(auc.numpy(), ref_auc, rtol=0, atol=1e-12)


def test_class_blocks_give_the_same_scores(monkeypatch):
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.random((300, 40), dtype=np.float32))
    labels = torch.from_numpy(rng.random((300, 40)) < 0.1)
    whole = summarize(scores, labels)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 300 * 7)  # 7 classes a block
    blocks = summarize(scores, labels)
    assert torch.equal(whole["ap"], blocks["ap"]) and torch.equal(whole["auc"], blocks["auc"])
    assert whole["mAP"] == blocks["mAP"] and whole["classes_scored"] == blocks["classes_scored"]


def test_mixed_signs_order_as_floats():
    scores = torch.tensor([[-2.0], [-1.0], [-0.5], [0.0], [0.5], [3.0]])
    labels = torch.tensor([[False], [False], [True], [False], [True], [True]])
    ap, auc = per_class_scores(scores, labels)
    assert float(auc[0]) == pytest.approx(8 / 9) and float(ap[0]) == pytest.approx((1 + 1 + 3 / 4) / 3)

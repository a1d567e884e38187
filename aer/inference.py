"""Probabilities out of a Tagger: the one inference loop of evaluate, ensemble, thresholds, compare and predict.

Plain batches through the network in eval mode under inference_mode, no Trainer and no logging;
the Tagger scales and normalises the uint8 features itself (`Tagger.predict_proba`), as in
training and validation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from aer.data.datamodule import AudioSetDataModule
from aer.module import Tagger


def iter_proba(model: Tagger, batches: Iterable[tuple]) -> Iterator[torch.Tensor]:
    """Probabilities (B, C) on the CPU for each (uint8 features (B, T, D), lengths (B,)) batch."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for features, lengths in batches:
                f = torch.as_tensor(features).to(device)
                n = torch.as_tensor(np.asarray(lengths, dtype=np.int64)).to(device)
                yield model.predict_proba(f, n).float().cpu()
    finally:
        model.train(was_training)


def array_batches(features: np.ndarray, lengths: np.ndarray, batch_size: int) -> Iterator[tuple]:
    for i in range(0, len(lengths), batch_size):
        yield features[i:i + batch_size], lengths[i:i + batch_size]


def predict_split(model: Tagger, dm: AudioSetDataModule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs float32 (N, C), labels bool (N, C), video_ids (N,)) for the data module's test split."""
    dm.setup("test")
    labels: list[torch.Tensor] = []

    def batches():
        for batch in dm.test_dataloader():
            labels.append(batch["y"] > 0.5)
            yield batch["features"], batch["lengths"]

    probs = list(iter_proba(model, batches()))
    info = dm.split_info("test")
    out_probs = torch.cat(probs).numpy() if probs else np.zeros((0, dm.num_classes), np.float32)
    out_labels = torch.cat(labels).numpy() if labels else np.zeros((0, dm.num_classes), bool)
    if out_labels.shape != info["labels"].shape or not np.array_equal(out_labels, info["labels"]):
        # served batches and split_info must describe the same clips in the same order
        raise RuntimeError(f"data.root={dm.root}: the test loader served {len(out_labels)} clips that do not "
                           f"match split_info's {len(info['labels'])}")
    if out_probs.shape[1] != out_labels.shape[1]:
        raise ValueError(f"the model predicts {out_probs.shape[1]} classes but data.root={dm.root} has "
                         f"{out_labels.shape[1]} (data.num_classes)")
    return np.ascontiguousarray(out_probs, dtype=np.float32), out_labels.astype(bool), np.asarray(info["video_id"])

"""Ensembles: the (weighted) mean of several checkpoints' probabilities, scored like one model.

Members come from `ckpts=[...]` and/or `sweep=DIR` (each finished job's best checkpoint), of any
network type. With select=greedy the weights are chosen by forward selection with replacement
(Caruana et al. 2004): start empty, add whichever member raises the mean's mAP most, repeat
`rounds` times, keep the best prefix; a member picked k times gets weight k/total. Selection
always scores the dev split (the 20% held out of the training split, split=val), never eval.

Writes metrics.json, per_class.csv and predictions.h5 as evaluate.py does, plus ensemble.json:
members, weights, each member's scores on the scored split, and the selection trace.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aer.files import write_json
from aer.launch import job_state
from aer.runs import member_paths
from aer.scoring import SPLIT_PREFIX, format_scores, write_report
from aer.settings import EnsembleConfig

log = logging.getLogger(__name__)

SELECTION_SPLIT = "val"  # ensembles are chosen on the dev split; eval stays unseen until the end


def normalize_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """Weights summing to 1, one per member (uniform when None)."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = list(weights)
    ok = len(w) == n and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in w)
    w = np.asarray(w, dtype=np.float64) if ok else None
    if w is None or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights={list(weights)}: expected {n} non-negative numbers, one per member in order, "
                         f"not all zero")
    return w / w.sum()


# ---- combining and selecting
def greedy_select(member_probs: Sequence[np.ndarray], labels: np.ndarray, rounds: int) -> tuple[np.ndarray, list]:
    """Forward selection with replacement maximising mAP; (times each member was picked, per-round trace).

    Ties go to the earlier member; the returned counts are those of the best round (the earliest
    if several tie), so rounds past the peak never hurt.
    """
    import torch

    from aer.metrics import summarize

    labels_t = torch.from_numpy(np.asarray(labels, dtype=bool))
    counts = np.zeros(len(member_probs), dtype=np.int64)
    total = np.zeros(member_probs[0].shape, dtype=np.float64)
    best, best_counts, trace = -math.inf, None, []
    for r in range(1, rounds + 1):
        scores = []
        for p in member_probs:
            cand = ((total + p) / r).astype(np.float32)
            scores.append(summarize(torch.from_numpy(cand), labels_t)["mAP"])
        i = int(np.argmax(scores))
        counts[i] += 1
        total += member_probs[i]
        trace.append({"round": r, "added": i, "mAP": scores[i]})
        if scores[i] > best:
            best, best_counts = scores[i], counts.copy()
    return best_counts, trace


class _Members:
    """Loaded members (each file once), predicting any split on one shared data module."""

    def __init__(self, paths: list[Path], overrides: dict):
        from aer.checkpoint import Checkpoint

        self.paths, self.overrides = paths, overrides
        self.unique = list(dict.fromkeys(paths))
        self.ckpts = {p: Checkpoint.load(p) for p in self.unique}
        self.models = {p: self.ckpts[p].tagger() for p in self.unique}

    def datamodule(self, split: str):
        """One data module for all members; they must agree on the clips it serves."""
        dms = {p: self.ckpts[p].datamodule(split, self.overrides) for p in self.unique}
        if split == "val":
            for p, dm in dms.items():
                self.ckpts[p].check_dev_split(dm, "split=val")
        first = self.unique[0]

        def served(dm) -> dict:
            return {"data.root": str(Path(dm.root).resolve()), **{f"data.{k}": v for k, v in dm.held_out().items()}}

        want = served(dms[first])
        for p in self.unique[1:]:
            have = served(dms[p])
            for key in want:
                if have.get(key) != want[key]:
                    raise ValueError(
                        f"members disagree on the split={split} data: {first} has {key}={want[key]}, {p} has "
                        f"{key}={have.get(key)}; set {key}=... to score all on the same data, or ensemble models "
                        f"trained on the same data")
        return dms[first]

    def predict(self, split: str):
        """Yields (path, probs) per distinct checkpoint; sets `dm`, `labels` and `video_ids` before the first."""
        from aer.inference import predict_split

        dm = self.datamodule(split)
        self.dm = dm
        for p in self.unique:
            probs, labels, video_ids = predict_split(self.models[p], dm)
            self.labels, self.video_ids = labels, video_ids
            yield p, probs


def select_weights(members: _Members, paths: list[Path], cfg: EnsembleConfig) -> tuple[np.ndarray, dict, dict]:
    """Greedy selection on the dev split: (weights, the selection's record, the dev predictions by
    path when the scored split is the dev split too, else {})."""
    for p, ckpt in members.ckpts.items():
        if ckpt.mode == "final":
            log.warning("%s was trained in final mode: the dev split was part of its training data, so "
                        "selecting on it favours it", p)
    kept = dict(members.predict(SELECTION_SPLIT))
    counts, trace = greedy_select([kept[p] for p in paths], members.labels, cfg.rounds)
    selection = {"split": SELECTION_SPLIT, "rounds": cfg.rounds, "trace": trace, "counts": counts.tolist(),
                 "mAP": max(t["mAP"] for t in trace), "clips": int(len(members.labels))}
    print(f"greedy selection on split={SELECTION_SPLIT}: counts {counts.tolist()}, "
          f"mAP {selection['mAP']:.4f}", flush=True)
    if cfg.split != SELECTION_SPLIT:
        kept = {}
    else:
        log.warning("split=val is the split the weights were selected on: its scores are optimistic")
    return counts / counts.sum(), selection, kept


def score_members(members: _Members, paths: list[Path], weights: np.ndarray, split: str,
                  kept: dict) -> tuple[np.ndarray, dict]:
    """(the weighted mean of the members' probabilities, each member's scores) on `split`;
    one member's predictions in memory at a time. `kept`: predictions already made, by path."""
    import torch

    from aer.metrics import summarize

    per_path = {p: float(sum(w for q, w in zip(paths, weights) if q == p)) for p in members.unique}
    member_scores, acc = {}, None
    preds = ((p, kept[p]) for p in members.unique) if kept else members.predict(split)
    for p, probs in preds:
        s = summarize(torch.from_numpy(probs), torch.from_numpy(members.labels))
        member_scores[p] = {k: s[k] for k in ("mAP", "mAUC", "dprime", "classes_scored")}
        if per_path[p]:
            acc = (acc if acc is not None else np.zeros(probs.shape, np.float64)) + per_path[p] * probs
        print(f"member {p} ({members.models[p].hparams.model}): mAP {s['mAP']:.4f}  weight {per_path[p]:.4f}",
              flush=True)
    return acc.astype(np.float32), member_scores


def run(config: EnsembleConfig) -> dict:
    """Averages the members' probabilities on config.split; returns what it writes to metrics.json."""
    t0 = time.time()
    split, select = config.split, config.select
    paths = member_paths(config.ckpts, config.sweep, exclude=Path(config.output_dir))
    weights = normalize_weights(config.weights, len(paths))
    with job_state(config.threads):
        members = _Members(paths, config.data)
        selection, kept = None, {}  # kept: selection-split predictions, reused when the scored split is the same
        if select == "greedy":
            weights, selection, kept = select_weights(members, paths, config)
        probs, member_scores = score_members(members, paths, weights, split, kept)
    dm = members.dm
    out_dir = Path(config.output_dir)
    info = {"split": split, "select": select, "members": len(paths), "data_root": str(dm.root),
            "seconds": round(time.time() - t0, 2)}
    metrics, _ = write_report(out_dir, probs, members.labels, members.video_ids, dm, info, boot=config.bootstrap)
    write_json(out_dir / "ensemble.json", {
        "split": split, "select": select, "weights": [float(w) for w in weights],
        "members": [{"ckpt": str(p), "model": members.models[p].hparams.model, "weight": float(w),
                     "scores": member_scores[p]} for p, w in zip(paths, weights)],
        "selection": selection,
        "scores": {k: metrics[f"{SPLIT_PREFIX[split]}/{k}"] for k in ("mAP", "mAUC", "dprime", "classes_scored")},
    })
    print(f"ensemble of {len(paths)} on split={split} ({len(probs)} clips from {dm.root})\n"
          f"{format_scores(metrics, probs.shape[1])}\n"
          f"wrote {out_dir}/metrics.json, per_class.csv, predictions.h5, ensemble.json", flush=True)
    return metrics

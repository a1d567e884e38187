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
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from aer.evaluate import SPLIT_PREFIX, check_bootstrap, check_split, data_overrides, format_scores, write_report
from aer.runs import find_runs
from aer.utils import write_json

log = logging.getLogger(__name__)

SELECT = ("none", "greedy")
SELECTION_SPLIT = "val"  # ensembles are chosen on the dev split; eval stays unseen until the end


# ---- members
def sweep_checkpoints(sweep_dir: str | Path, key: str = "sweep") -> list[Path]:
    """The result checkpoint of every finished job under `sweep_dir`, in job order; others are skipped.

    Jobs are aer.runs' run dirs; a finished one has metrics.json with status ok (train.py writes it
    last; a failed or diverged job says so there). Its checkpoint is aer.runs.Run.result_checkpoint:
    metrics.json's best_ckpt, else checkpoints/best.ckpt, final.ckpt, then the last epoch's. `key`: the
    setting the folder was given as, for the errors.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{key}={root}: no such directory (expected a train.py -m sweep dir)")
    found = []
    for run in find_runs(root):
        if run.status != "ok":
            log.warning("sweep job %s: skipped, status %s (%s)", run.name, run.status, run.error or "no error")
            continue
        ckpt = run.result_checkpoint()
        if ckpt is None:
            log.warning("sweep job %s: skipped, finished but holds no checkpoint", run.name)
            continue
        found.append(ckpt.resolve())
    if not found:
        raise FileNotFoundError(f"{key}={root}: no finished job with a checkpoint (looked for metrics.json "
                                f"with status ok and checkpoints/{{best,final,last}}.ckpt in its job folders)")
    log.info("sweep %s: %d members", root, len(found))
    return found


def member_paths(ckpts, sweep: str | None, prefix: str = "") -> list[Path]:
    """`ckpts` (in order), then the checkpoints of the sweep dir `sweep`; relative paths are taken from the
    user's cwd. `prefix`: where the two settings live (ensemble.py's are top-level, train.py's `distill.`)."""
    if isinstance(ckpts, str):
        ckpts = [ckpts]
    elif ckpts is not None and not isinstance(ckpts, (ListConfig, list, tuple)):
        raise ValueError(f"{prefix}ckpts={ckpts!r}: expected a list of checkpoint paths, "
                         f"e.g. {prefix}ckpts=[a.ckpt,b.ckpt]")
    paths = [Path(to_absolute_path(str(c))).resolve() for c in ckpts or []]
    if sweep:
        paths += sweep_checkpoints(to_absolute_path(str(sweep)), f"{prefix}sweep")
    if not paths:
        raise ValueError(f"{prefix}ckpts and {prefix}sweep are both empty: give {prefix}ckpts=[a.ckpt,b.ckpt,...] "
                         f"and/or {prefix}sweep=DIR")
    return paths


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


def _served(dm) -> dict:
    """The settings that decide which clips a data module serves as its test split."""
    common = {"data.root": str(Path(dm.root).resolve()), "data.num_classes": dm.num_classes}
    if dm.mode == "final":
        return {**common, "data.eval_split": dm.eval_split}
    return {**common, "data.train_split": list(dm.train_splits), "data.val_fraction": dm.val_fraction,
            "data.split_seed": dm.split_seed}


class _Members:
    """Loaded members (each file once), predicting any split on one shared data module."""

    def __init__(self, paths: list[Path], overrides: dict):
        from aer.checkpoint import load_checkpoint, tagger_from_checkpoint

        self.paths, self.overrides = paths, overrides
        self.unique = list(dict.fromkeys(paths))
        self.ckpts = {p: load_checkpoint(p) for p in self.unique}
        self.models = {p: tagger_from_checkpoint(self.ckpts[p], str(p)) for p in self.unique}

    def datamodule(self, split: str):
        """One data module for all members; they must agree on the clips it serves."""
        from aer.checkpoint import datamodule_from_checkpoint

        dms = {p: datamodule_from_checkpoint(self.ckpts[p], self.overrides, split, source=str(p)) for p in self.unique}
        first = self.unique[0]
        want = _served(dms[first])
        for p in self.unique[1:]:
            have = _served(dms[p])
            for key in want:
                if have[key] != want[key]:
                    raise ValueError(
                        f"members disagree on the split={split} data: {first} has {key}={want[key]}, {p} has "
                        f"{key}={have[key]}; set {key}=... to score all on the same data, or ensemble models "
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


def check_config(cfg: DictConfig) -> None:
    check_split(cfg.get("split"))
    check_bootstrap(cfg)
    select = cfg.get("select")
    if select not in SELECT:
        raise ValueError(f"select={select!r}: expected none (average with the given weights) or greedy "
                         f"(forward selection on the dev split)")
    rounds = cfg.get("rounds")
    if select == "greedy":
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ValueError(f"rounds={rounds!r}: expected a positive integer (greedy selection steps)")
        if cfg.get("weights") is not None:
            raise ValueError("weights=... and select=greedy: greedy selection chooses the weights; give one of them")


def given_weights(cfg: DictConfig, n: int) -> np.ndarray:
    """cfg.weights, normalised, for `n` members (uniform when not given)."""
    weights = cfg.get("weights")
    if isinstance(weights, ListConfig):
        weights = OmegaConf.to_container(weights, resolve=True)
    elif weights is not None:
        raise ValueError(f"weights={weights!r}: expected a list with one number per member, e.g. weights=[2,1]")
    return normalize_weights(weights, n)


def select_weights(members: _Members, paths: list[Path], cfg: DictConfig) -> tuple[np.ndarray, dict, dict]:
    """Greedy selection on the dev split: (weights, the selection's record, the dev predictions by
    path when the scored split is the dev split too, else {})."""
    for p, ckpt in members.ckpts.items():
        if (ckpt.get("datamodule_hyper_parameters") or {}).get("mode") == "final":
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


def run(cfg: DictConfig) -> dict:
    """Averages the members' probabilities on cfg.split; returns what it writes to metrics.json."""
    t0 = time.time()
    check_config(cfg)
    split, select = cfg.split, cfg.select
    paths = member_paths(cfg.get("ckpts"), cfg.get("sweep"))
    weights = given_weights(cfg, len(paths))
    members = _Members(paths, data_overrides(cfg))
    selection, kept = None, {}  # kept: selection-split predictions, reused when the scored split is the same
    if select == "greedy":
        weights, selection, kept = select_weights(members, paths, cfg)
    probs, member_scores = score_members(members, paths, weights, split, kept)
    dm = members.dm
    out_dir = Path(cfg.paths.output_dir)
    info = {"split": split, "select": select, "members": len(paths), "data_root": str(dm.root),
            "seconds": round(time.time() - t0, 2)}
    metrics, _ = write_report(out_dir, probs, members.labels, members.video_ids, dm, info, boot=cfg.get("bootstrap"))
    write_json(out_dir / "ensemble.json", {
        "split": split, "select": select, "weights": [float(w) for w in weights],
        "members": [{"ckpt": str(p), "model": members.models[p].hparams.model, "weight": float(w),
                     "scores": member_scores[p]} for p, w in zip(paths, weights)],
        "selection": selection,
        "scores": {k: metrics[f"{SPLIT_PREFIX[cfg.split]}/{k}"] for k in ("mAP", "mAUC", "dprime", "classes_scored")},
    })
    print(f"ensemble of {len(paths)} on split={split} ({len(probs)} clips from {dm.root})\n"
          f"{format_scores(metrics, probs.shape[1])}\n"
          f"wrote {out_dir}/metrics.json, per_class.csv, predictions.h5, ensemble.json", flush=True)
    return metrics

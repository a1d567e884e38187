"""mAP, mAUC, d′ and decisions (per-class thresholds, F1) for multi-label tagging, in one place.

AP and AUC of all classes come from one sort of each class's scores and binary searches of its
positives in them (4,432 clips × 527 classes in ~30 ms on one thread, so validating after every
epoch costs little); the decision thresholds from per-class curves of one column-wise sort.
torchmetrics' functional AP/AUROC loop over classes and take several seconds each at 20,000 clips.
The `Metric` wrapper below keeps torchmetrics' state handling and DDP synchronisation.
Definitions match scikit-learn's `average_precision_score` and `roc_auc_score` (ties grouped, no
interpolation).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torchmetrics import Metric


def _curves(scores: torch.Tensor, labels: torch.Tensor):
    """Sorted scores and cumulative TP/FP per class (rows) at each rank, and the mask of threshold boundaries."""
    # (C, N) rows: sorting along the contiguous axis is several times faster than down columns.
    s, order = torch.sort(scores.t().contiguous(), dim=1, descending=True)
    y = torch.gather(labels.t().contiguous(), 1, order).double()
    tps = torch.cumsum(y, 1)
    rank = torch.arange(1, s.shape[1] + 1, dtype=torch.float64, device=s.device)
    fps = rank - tps
    last = torch.ones_like(s, dtype=torch.bool)
    last[:, :-1] = s[:, :-1] != s[:, 1:]  # the last element of each tie group is a threshold boundary

    def previous(v):  # value at the previous boundary (values never decrease along a row)
        at = torch.where(last, v, torch.zeros_like(v))
        shifted = torch.cat([torch.zeros_like(at[:, :1]), at[:, :-1]], 1)
        return torch.cummax(shifted, 1).values

    return s, tps, fps, rank, last, previous


# Score elements (clips x classes) per block of classes: the curves take ~30 bytes per element,
# so a block holds ~0.5 GB whatever the split size (all 527 classes of a 400k-clip split at once
# would take ~14 GB).
_BLOCK_ELEMENTS = 1 << 24


def per_class_scores(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(AP, AUC) per class; NaN where a class has no positives (AUC also where it has no negatives)."""
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be equal (N, C)")
    return _by_class_blocks(_per_class_scores, scores, labels)


def _by_class_blocks(fn, scores: torch.Tensor, labels: torch.Tensor, *args) -> tuple[torch.Tensor, ...]:
    """`fn(scores, labels, *args)` -> per-class tensors, over blocks of classes of bounded memory."""
    step = max(1, _BLOCK_ELEMENTS // max(1, scores.shape[0]))
    if step >= scores.shape[1]:
        return fn(scores, labels, *args)
    parts = [fn(scores[:, i:i + step], labels[:, i:i + step], *args) for i in range(0, scores.shape[1], step)]
    return tuple(torch.cat(p) for p in zip(*parts))


def _sort_keys(values: np.ndarray, high: np.ndarray) -> np.ndarray:
    """uint64 keys ordered as (class, score): `high` (the class, shifted into the high 32 bits) or-ed
    with the float32 score's bits mapped so that their unsigned order is the floats' (NaN above +inf)."""
    bits = values.view(np.int32)
    ordered = (bits ^ ((bits >> 31) | np.int32(-2**31))).view(np.uint32)  # negatives: all bits flipped
    return np.bitwise_or(high, ordered, dtype=np.uint64)


def _per_class_scores(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """On the CPU, from sorted scores and binary searches (numpy); on an accelerator, from the per-class
    curves of one torch sort there, so that scores never leave the device (equal to 1e-12; tested)."""
    if scores.device.type == "cpu":
        return _per_class_scores_searched(scores, labels)
    return _per_class_scores_curves(scores, labels)


def _per_class_scores_curves(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, tps, fps, rank, last, previous = _curves(scores, labels)
    pos, neg = tps[:, -1], fps[:, -1]
    tp_prev, fp_prev = previous(tps), previous(fps)
    lastd = last.double()
    ap = (lastd * (tps - tp_prev) * (tps / rank)).sum(1) / pos
    auc = (lastd * (fps - fp_prev) * (tps + tp_prev) / 2).sum(1) / (pos * neg)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=scores.device)
    return torch.where(pos > 0, ap, nan), torch.where((pos > 0) & (neg > 0), auc, nan)


def _per_class_scores_searched(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Only the positives' ranks matter. With ties grouped, a class's AP is the mean over its
    # positives p of (positives scored >= p) / (clips scored >= p), and its AUC the share of
    # (positive, negative) pairs where the positive scores higher, ties counting half. Both counts
    # come from one sort of each class's scores (values only: numpy's vectorised sort, ~15x
    # torch.sort's argsort on one thread) and binary searches of the positives in it.
    x = scores.detach().float().cpu().numpy()
    n, n_classes = x.shape
    s = np.empty((n_classes, n), dtype=np.float32)
    for i in range(0, n, 256):  # classes as rows, copied in blocks of clips: twice the pace of one strided copy
        s[:, i:i + 256] = x[i:i + 256].T
    np.add(s, np.float32(0), out=s)  # -0.0 made +0.0 (equal floats, equal keys)
    clip, cls = np.divmod(np.flatnonzero(labels.detach().cpu().numpy()), n_classes)  # 20x np.nonzero's pace
    high = np.arange(n_classes, dtype=np.uint64) << np.uint64(32)
    everyone = _sort_keys(np.sort(s, axis=1), high[:, None]).ravel()  # sorted: class by class, each sorted
    keys = np.sort(_sort_keys(s[cls, clip], high[cls]))  # the positives; sorted, the searches run fast
    cls = (keys >> np.uint64(32)).astype(np.int64)
    pos = np.bincount(cls, minlength=n_classes)
    first = np.cumsum(pos) - pos  # each class's first positive in `keys`
    all_lt = np.searchsorted(everyone, keys, "left") - cls * n
    all_le = np.searchsorted(everyone, keys, "right") - cls * n
    pos_lt = np.searchsorted(keys, keys, "left") - first[cls]
    pos_le = np.searchsorted(keys, keys, "right") - first[cls]
    neg = n - pos
    with np.errstate(invalid="ignore", divide="ignore"):  # no positives (or negatives): NaN below
        ap = np.bincount(cls, (pos[cls] - pos_lt) / (n - all_lt), n_classes) / pos
        below = (all_lt - pos_lt) + 0.5 * ((all_le - all_lt) - (pos_le - pos_lt))  # negatives under, tied
        auc = np.bincount(cls, below, n_classes) / (pos * neg)
    ap[pos == 0] = np.nan
    auc[(pos == 0) | (neg == 0)] = np.nan
    return torch.from_numpy(ap).to(scores.device), torch.from_numpy(auc).to(scores.device)


def dprime(mauc: float) -> float:
    """d′ = √2·Φ⁻¹(AUC), the separation the mean AUC implies for two unit Gaussians."""
    if not 0.0 < mauc < 1.0:
        return float("inf") if mauc >= 1.0 else float("-inf")
    return math.sqrt(2.0) * float(torch.special.ndtri(torch.tensor(mauc, dtype=torch.float64)))


def positives(labels: torch.Tensor) -> torch.Tensor:
    """Positives per class (int64) of (N, C) labels; boolean ones on the CPU by numpy, ~30x torch's sum(0) of bools."""
    if labels.device.type == "cpu" and labels.dtype == torch.bool:
        return torch.from_numpy(labels.detach().numpy().sum(0, dtype=np.int64))
    return labels.sum(0).long()


def summarize(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """Means over the classes that can be scored; classes with no positives are left out and counted."""
    ap, auc = per_class_scores(scores, labels)
    scored = ~torch.isnan(ap)
    auc_ok = ~torch.isnan(auc)
    mauc = float(auc[auc_ok].mean()) if auc_ok.any() else float("nan")
    return {
        "mAP": float(ap[scored].mean()) if scored.any() else float("nan"),
        "mAUC": mauc,
        "dprime": dprime(mauc) if auc_ok.any() else float("nan"),
        "classes_scored": int(scored.sum()),
        "classes_unscored": int((~scored).sum()),
        "ap": ap,
        "auc": auc,
        "positives": positives(labels),
    }


# below these, a split's mAP and mAUC are means over too little to compare runs by (flagged, not refused)
MIN_CLASSES, MIN_CLIPS = 20, 100


def too_few(prefix: str, classes_scored, clips) -> str | None:
    """Why `prefix`/mAP and mAUC mean little (too few classes with positives, or clips), or None."""
    if classes_scored is None or clips is None or (classes_scored >= MIN_CLASSES and clips >= MIN_CLIPS):
        return None
    return (f"{prefix}/mAP and {prefix}/mAUC are means over {int(classes_scored)} classes and {int(clips)} clips "
            f"(below {MIN_CLASSES} classes or {MIN_CLIPS} clips): too few to compare runs by")


THRESHOLD_RULES = ("f1", "precision")


def choose_thresholds(scores: torch.Tensor, labels: torch.Tensor, rule: str = "f1", target: float = 0.5,
                      fallback: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class decision thresholds (a clip is tagged where its score >= the class's threshold).

    rule=f1: the threshold of the best F1 (the highest such threshold where several tie).
    rule=precision: the lowest threshold whose precision is >= target (the most recall at that
    precision); +inf (never tagged) where no threshold reaches it. Classes without positives get
    `fallback`. A threshold lies midway between the lowest score the rule tags and the next lower
    score, so these clips give exactly the chosen F1 or precision, and probabilities off by float
    noise (another runtime's, ~1e-6) do not flip their decisions as they would at a clip's own
    score. Returns (thresholds float32 (C,), True where a rule chose the threshold).
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule={rule!r}: expected one of {', '.join(THRESHOLD_RULES)}")
    if rule == "precision" and not 0.0 < target <= 1.0:
        raise ValueError(f"target={target!r}: expected a precision in (0, 1]")
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be equal (N, C)")
    thr, chosen = _by_class_blocks(_choose_thresholds, scores.float(), labels, rule, target, fallback)
    return thr, chosen


def _choose_thresholds(scores, labels, rule, target, fallback):
    s, tps, _, rank, last, _ = _curves(scores, labels)
    pos = tps[:, -1]
    if rule == "f1":  # F1 = 2TP / (predicted + positives); argmax takes the first, highest-threshold, maximum
        ok = last
        pick = torch.where(last, 2 * tps / (rank + pos[:, None]), -1.0).argmax(1)
    else:
        ok = last & (tps >= target * rank)
        pick = torch.where(ok, rank, 0.0).argmax(1)  # the last boundary that reaches the target
    lowest = s.gather(1, pick[:, None])[:, 0]
    below = torch.cat([s, torch.zeros_like(s[:, :1])], 1).gather(1, pick[:, None] + 1)[:, 0]  # 0 past the last
    thr = ((lowest.double() + below.double()) / 2).float()
    thr = torch.where(thr > below, thr, lowest)  # adjacent float32 scores: the midpoint rounds onto one of them
    chosen = (pos > 0) & ok.any(1)
    never = torch.full_like(thr, float("inf"))
    thr = torch.where(chosen, thr, torch.where(pos > 0, never, torch.full_like(thr, fallback)))
    return thr.float(), chosen


def decision_scores(probs, labels, thresholds) -> dict:
    """Micro and macro precision, recall and F1 of the decisions `probs >= thresholds` (numpy arrays).

    Macro means are over the classes with positives in `labels`, as mAP's are; a class that is
    never predicted has precision 0 (scikit-learn's zero_division=0). Per-class values are returned too.
    """

    probs, labels = np.asarray(probs), np.asarray(labels, dtype=bool)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (probs.shape[1],):
        raise ValueError(f"{thresholds.shape[0] if thresholds.ndim else 1} thresholds for {probs.shape[1]} classes")
    pred = probs >= thresholds[None, :]
    tp = (pred & labels).sum(0).astype(np.float64)
    fp = pred.sum(0) - tp
    fn = labels.sum(0) - tp

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)

    precision, recall, f1 = ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)
    scored = (tp + fn) > 0
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    macro = (lambda v: float(v[scored].mean()) if scored.any() else float("nan"))  # noqa: E731
    return {
        "micro_precision": float(ratio(TP, TP + FP)), "micro_recall": float(ratio(TP, TP + FN)),
        "micro_f1": float(ratio(2 * TP, 2 * TP + FP + FN)),
        "macro_precision": macro(precision), "macro_recall": macro(recall), "macro_f1": macro(f1),
        "precision": precision, "recall": recall, "f1": f1, "predicted": pred.sum(0),
    }


class TaggingMetrics(Metric):
    """Accumulates probabilities and labels over an epoch; `compute` gives mAP, mAUC, d′ and counts."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.scores.append(scores.detach().float())
        self.labels.append(labels.detach().bool())

    def collected(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (scores, labels) gathered so far, each one tensor."""
        cat = lambda v: torch.cat(v) if isinstance(v, list) else v  # noqa: E731 — list before sync, tensor after
        return cat(self.scores), cat(self.labels)

    def compute(self) -> dict[str, torch.Tensor]:
        scores, labels = self.collected()
        s = summarize(scores, labels)
        return {**{k: torch.tensor(float(s[k])) for k in ("mAP", "mAUC", "dprime", "classes_scored")},
                "clips": torch.tensor(float(len(labels)))}


# ---- bootstrap: clips resampled with replacement, every replicate scored exactly
#
# A replicate is a vector of counts (how often each clip was drawn). Its AP and AUC depend only
# on each positive's count and, for each group of tied positive scores of a class, the drawn
# weight of the negatives tied with it and of the negatives between it and the group above. Those
# sums are one sparse (rows × clips) matrix built from one sort of the scores, times the (clips ×
# replicates) counts: replicates are scored in batches without sorting again.

BOOT_REPLICATES = 1000
_BOOT_CHUNK = 50  # replicates drawn and scored together; fixed, so the draws depend on the seed only


def resample_counts(n: int, replicates: int = BOOT_REPLICATES, seed: int = 0):
    """Yields (k, n) float32 matrices: how often each of n clips is drawn in each of k replicates."""
    g = torch.Generator().manual_seed(int(seed))
    for start in range(0, replicates, _BOOT_CHUNK):
        k = min(_BOOT_CHUNK, replicates - start)
        idx = torch.randint(0, n, (k, n), generator=g)
        yield torch.zeros(k, n).scatter_add_(1, idx, torch.ones(k, n))


class _Groups:
    """One class block's clips as a sparse matrix over the distinct positive scores ("groups") of
    each class: for group g of G, row g picks out the negatives above it (and below the class's
    previous group), row G + g the negatives tied with it; row 2G + q picks out positive q."""

    def __init__(self, scores: torch.Tensor, labels: torch.Tensor):
        s, order = torch.sort(scores.t().contiguous(), dim=1, descending=True)
        y = torch.gather(labels.t().contiguous(), 1, order).long()
        start = torch.ones_like(y)
        start[:, 1:] = (s[:, 1:] != s[:, :-1]).long()
        tie = torch.cumsum(start, 1) - 1  # tie-group index along each class's sorted row
        haspos = torch.zeros_like(y).scatter_reduce_(1, tie, y, "amax")  # per tie group
        above = (torch.cumsum(haspos, 1) - haspos).gather(1, tie)  # positive groups strictly above
        tied = haspos.gather(1, tie).bool()
        m = haspos.sum(1)  # groups per class
        first = torch.cumsum(m, 0) - m
        self.n_groups = n_groups = int(m.sum())
        group = first[:, None] + above
        pos = y.bool()
        q = torch.cumsum(y.flatten(), 0).view_as(y) - 1  # positives numbered in (class, rank) order
        keep = pos | tied | (above < m[:, None])  # negatives below every positive never count
        # groups and positives are numbered along the flattened (class, rank) order, so taking each
        # kind of row in that order lists the rows sorted: CSR without a sort
        parts = [(~pos & ~tied & keep, group), (~pos & tied, group + n_groups), (pos, q + 2 * n_groups)]
        rows = torch.cat([r[sel] for sel, r in parts])
        cols = torch.cat([order[sel] for sel, _ in parts])
        n_rows = 2 * n_groups + int(pos.sum())
        crow = torch.zeros(n_rows + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            self.matrix = torch.sparse_csr_tensor(crow, cols, torch.ones(len(cols)), (n_rows, s.shape[1]))
        self.classes = len(m)
        self.scored = m > 0
        npos = y.sum(1)
        self.group_first = torch.repeat_interleave(first, m)  # each group's class's first group
        self.pos_group = group[pos]  # each positive's group
        self.pos_first = torch.repeat_interleave(torch.cumsum(npos, 0) - npos, npos)  # its class's first positive
        self.group_last_pos = torch.cumsum(torch.bincount(self.pos_group, minlength=n_groups), 0) - 1
        self.class_first = (torch.cumsum(npos, 0) - npos)[self.scored]
        self.class_last = (torch.cumsum(npos, 0) - 1)[self.scored]

    def score(self, counts_t: torch.Tensor, n_drawn: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(AP, AUC) per class (C, k) for the replicates in `counts_t` (n, k); NaN where unscorable."""
        k, g = counts_t.shape[1], self.n_groups
        # (k, rows): the running sums below go along the contiguous axis
        sums = torch.sparse.mm(self.matrix, counts_t).t().double().contiguous()
        gap, tied, w = sums[:, :g], sums[:, g:2 * g], sums[:, 2 * g:]

        def within(x, first):  # cumulative sums that restart at each class
            cs = torch.cumsum(x, 1)
            return cs - (cs - x)[:, first]

        def per_class(x):  # the sum over each class's positives
            cs = torch.cumsum(x, 1)
            return cs[:, self.class_last] - (cs - x)[:, self.class_first]

        tied_q = tied[:, self.pos_group]
        neg_above = (within(gap + tied, self.group_first) - tied)[:, self.pos_group]
        tp_w = within(w, self.pos_first)
        tp = tp_w[:, self.group_last_pos][:, self.pos_group]  # positive weight at or above each positive
        # A clip drawn w times counts once in its own precision, as w distinct draws of a continuous
        # score would: counted w times (the resample's plain AP) it lifts its own precision, and mAP
        # by ~0.02 on AudioSet's ~13 validation positives a class.
        prec = torch.where(w > 0, (tp - w + 1) / (tp + neg_above + tied_q - w + 1).clamp_min(1e-300), 0.0)
        p = tp_w[:, self.class_last]
        neg = n_drawn - p
        ap = per_class(w * prec) / p
        auc = (neg * p - per_class(w * (neg_above + tied_q / 2))) / (p * neg)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        out_ap = torch.full((self.classes, k), float("nan"), dtype=torch.float64)
        out_auc = out_ap.clone()
        out_ap[self.scored] = torch.where(p > 0, ap, nan).t()
        out_auc[self.scored] = torch.where((p > 0) & (neg > 0), auc, nan).t()
        return out_ap, out_auc


def bootstrap_classes(scores: list[torch.Tensor], labels: torch.Tensor, replicates: int = BOOT_REPLICATES,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class AP and AUC of `replicates` resamples of the clips, each (models, C, replicates).

    Every model in `scores` (each (N, C)) is scored on the same draws; NaN where a replicate drew no
    positive (AUC also: no negative) of a class.
    """
    for s in scores:
        if s.shape != labels.shape or s.ndim != 2:
            raise ValueError(f"scores {tuple(s.shape)} and labels {tuple(labels.shape)} must be equal (N, C)")
    if not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"replicates={replicates!r}: expected a positive number of bootstrap replicates")
    n, c = labels.shape
    step = max(1, _BLOCK_ELEMENTS // max(1, n))  # class blocks, as in per_class_scores
    blocks = range(0, c, step)
    groups = [[_Groups(s[:, lo:lo + step].float(), labels[:, lo:lo + step].bool()) for lo in blocks] for s in scores]
    ap = torch.empty(len(scores), c, replicates, dtype=torch.float64)
    auc = torch.empty_like(ap)
    done = 0
    for counts in resample_counts(n, replicates, seed):
        counts_t, k = counts.t().contiguous(), counts.shape[0]
        for i, model in enumerate(groups):
            for lo, g in zip(blocks, model):
                ap[i, lo:lo + step, done:done + k], auc[i, lo:lo + step, done:done + k] = g.score(counts_t, float(n))
        done += k
    return ap, auc


def bootstrap(scores: torch.Tensor | list[torch.Tensor], labels: torch.Tensor,
              replicates: int = BOOT_REPLICATES, seed: int = 0) -> dict[str, torch.Tensor]:
    """mAP, mAUC and d′ of `replicates` resamples of the clips: each (models, replicates).

    `scores` is one (N, C) tensor or a list of them (several models scored on the same draws, for
    paired comparisons). Each replicate is scored as `summarize` scores the resampled clips:
    classes with no drawn positive are left out of that replicate's means.
    """
    models = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    ap, auc = bootstrap_classes(models, labels, replicates, seed)
    m_ap, m_auc = ap.nanmean(1), auc.nanmean(1)
    return {"mAP": m_ap, "mAUC": m_auc, "dprime": math.sqrt(2.0) * torch.special.ndtri(m_auc)}


def interval(values: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap values: the central `level` share of them."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}: expected a confidence level between 0 and 1, e.g. 0.95")
    v = values[~torch.isnan(values)].double()
    if len(v) == 0:
        return float("nan"), float("nan")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(v, q).tolist()
    return lo, hi


BOOT_METRICS = ("mAP", "mAUC", "dprime")


def bootstrap_ci(scores: torch.Tensor, labels: torch.Tensor, replicates: int = BOOT_REPLICATES,
                 level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """{mAP_ci_low, mAP_ci_high, mAUC_..., dprime_...}: percentile intervals over resampled clips."""
    reps = bootstrap(scores, labels, replicates, seed)
    out = {}
    for k in BOOT_METRICS:
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = interval(reps[k][0], level)
    return out


def paired_bootstrap(scores_a: torch.Tensor, scores_b: torch.Tensor, labels: torch.Tensor,
                     replicates: int = BOOT_REPLICATES, level: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """B − A on the same resampled clips, per metric: the observed difference, its interval and a
    two-sided p-value for "no difference" (twice the smaller share of replicates on either side of 0)."""
    reps = bootstrap([scores_a, scores_b], labels, replicates, seed)
    sa, sb = summarize(scores_a, labels), summarize(scores_b, labels)
    out = {}
    for k in BOOT_METRICS:
        diff = reps[k][1] - reps[k][0]
        diff = diff[~torch.isnan(diff)]
        lo, hi = interval(diff, level)
        below, above = int((diff <= 0).sum()), int((diff >= 0).sum())
        p = min(1.0, 2 * (min(below, above) + 1) / (len(diff) + 1))
        out[k] = {"a": sa[k], "b": sb[k], "diff": sb[k] - sa[k], "ci_low": lo, "ci_high": hi, "p": p,
                  "replicates": int(len(diff))}
    return out

"""A split's scores and the files that hold them, as evaluate.py and ensemble.py write them and compare reads them.

`write_report` writes into a run dir (S is test for split=eval, val for split=val):
  metrics.json    S/mAP, S/mAUC, S/dprime, S/classes_scored (+ what was scored), the
                  bootstrap intervals S/{mAP,mAUC,dprime}_ci_{low,high}, per top-level ontology
                  category S/category/<name>/{mAP,mAUC}, and micro and macro
                  S/{micro,macro}_{f1,precision,recall} of the decisions at the checkpoint's
                  thresholds (`python -m aer.thresholds`; 0.5 where it holds none)
  per_class.csv   index, mid, name, positives, train_positives, AP, AUC (empty for classes without
                  positives; train_positives: in the clips the model was trained on), threshold,
                  predicted, precision, recall, F1
  per_category.csv  id, name, classes, classes_scored, mAP, mAUC (when data.root holds ontology.json)
  predictions.h5  probs float32 (N, C), labels bool (N, C), video_id (N,)
The keys are test/* for split=eval (as `trainer.test` logs them) and val/* for split=val (the dev 20%,
as training's validation logs them).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from aer.files import atomic_path, atomic_write_text, write_json
from aer.settings import BootstrapSettings

log = logging.getLogger(__name__)

# split scored → the prefix of its metrics: the eval split is the test set, as `trainer.test` logs it;
# the dev 20% is the validation set, as in training
SPLIT_PREFIX = {"eval": "test", "val": "val"}


# ---- outputs
def write_predictions(path: Path, probs: np.ndarray, labels: np.ndarray, video_ids, attrs: Mapping) -> None:
    """predictions.h5, written beside the target and renamed into place."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("probs", data=np.asarray(probs, dtype=np.float32))
        f.create_dataset("labels", data=np.asarray(labels, dtype=bool), compression="gzip")
        f.create_dataset("video_id", data=np.asarray(video_ids, dtype=object), dtype=h5py.string_dtype())
        for k, v in attrs.items():
            f.attrs[k] = v if isinstance(v, (int, float, str)) else str(v)


def read_predictions(path: Path) -> dict:
    """What write_predictions wrote: probs float32 (N, C), labels bool (N, C), video_id str (N,) and the attrs;
    a missing or malformed file is a one-line error naming it."""
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file (evaluate.py and ensemble.py write predictions.h5)")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("probs", "labels", "video_id") if k not in f]
            if missing:
                raise ValueError(f"{path}: no dataset {missing[0]!r}; expected probs, labels and video_id")
            probs, labels = f["probs"][()], f["labels"][()]
            vids = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in f["video_id"][()]])
            attrs = dict(f.attrs)
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    if probs.ndim != 2 or probs.shape != labels.shape or len(vids) != len(probs):
        raise ValueError(f"{path}: probs {probs.shape}, labels {labels.shape} and video_id ({len(vids)},) "
                         f"must be (N, C), (N, C) and (N,)")
    return {"probs": probs.astype(np.float32), "labels": labels.astype(bool), "video_id": vids, "attrs": attrs}


def _num(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.10g}"


PER_CLASS_COLUMNS = ("index", "mid", "name", "positives", "train_positives", "AP", "AUC", "threshold", "predicted",
                     "precision", "recall", "F1")


def write_per_class(path: Path, summary: dict, decisions: dict, thresholds: np.ndarray,
                    class_names: list[tuple[str, str]], train_positives: np.ndarray | None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(PER_CLASS_COLUMNS)
    ap, auc, pos = summary["ap"].tolist(), summary["auc"].tolist(), summary["positives"].tolist()
    cols = [decisions[k].tolist() for k in ("predicted", "precision", "recall", "f1")]
    for i, (mid, name) in enumerate(class_names):
        decided = [_num(c[i]) if pos[i] else "" for c in cols[1:]]
        train = "" if train_positives is None else int(train_positives[i])
        w.writerow([i, mid, name, pos[i], train, _num(ap[i]), _num(auc[i]), f"{thresholds[i]:.9g}", cols[0][i],
                    *decided])
    atomic_write_text(path, buf.getvalue())


DECISION_KEYS = ("micro_f1", "micro_precision", "micro_recall", "macro_f1", "macro_precision", "macro_recall")


def write_per_category(out: Path, root: Path, summary: dict, class_names: list[tuple[str, str]], pre: str) -> dict:
    """per_category.csv and the metrics.json entries, from root/ontology.json; {} when it is absent."""
    from aer.data.ontology import ONTOLOGY_FILE, category_scores, read_ontology, top_level_classes

    path = Path(root) / ONTOLOGY_FILE
    if not path.exists():
        log.info("%s not found: no per-category metrics", path)
        return {}
    cats = top_level_classes(read_ontology(path), [mid for mid, _ in class_names])
    rows = category_scores(cats, summary["ap"].numpy(), summary["auc"].numpy())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "name", "classes", "classes_scored", "mAP", "mAUC"])
    for r in rows:
        w.writerow([r["id"], r["name"], r["classes"], r["classes_scored"], _num(r["mAP"]), _num(r["mAUC"])])
    atomic_write_text(out / "per_category.csv", buf.getvalue())
    return {f"{pre}/category/{r['name']}/{k}": r[k] for r in rows for k in ("mAP", "mAUC")}


def write_report(out_dir: str | os.PathLike, probs: np.ndarray, labels: np.ndarray, video_ids, dm,
                 info: Mapping, thresholds: tuple[np.ndarray, str] | None = None,
                 boot: BootstrapSettings | None = None) -> tuple[dict, dict]:
    """Scores `probs` on the clips `dm` served and writes the outputs (metrics.json last: it marks the
    run complete). `boot`: the bootstrap intervals' settings (none when replicates is 0).

    `thresholds`: (per-class thresholds, where they come from) for the F1/precision/recall of the
    decisions; None decides at 0.5. Returns (what metrics.json holds, the full `summarize` result).
    """
    import torch

    from aer.checkpoint import DEFAULT_THRESHOLD
    from aer.metrics import bootstrap_ci, decision_scores, summarize, too_few

    out = Path(out_dir)
    pre = SPLIT_PREFIX[info["split"]]
    class_names = dm.class_names()
    if len(class_names) != probs.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {probs.shape[1]} classes")
    probs_t, labels_t = torch.from_numpy(probs), torch.from_numpy(labels)
    summary = summarize(probs_t, labels_t)
    thr, thr_source = thresholds or (np.full(probs.shape[1], DEFAULT_THRESHOLD, np.float32),
                                     f"{DEFAULT_THRESHOLD} for every class")
    decisions = decision_scores(probs, labels, thr)
    write_predictions(out / "predictions.h5", probs, labels, video_ids,
                      {"split": info.get("split", ""), "source": info.get("ckpt", info.get("members", ""))})
    write_per_class(out / "per_class.csv", summary, decisions, thr, class_names, dm.train_positives())
    metrics = {"status": "ok", **{f"{pre}/{k}": summary[k] for k in
                                  ("mAP", "mAUC", "dprime", "classes_scored", "classes_unscored")},
               **{f"{pre}/{k}": decisions[k] for k in DECISION_KEYS}, "thresholds": thr_source,
               "clips": int(len(probs)), **info}
    few = too_few(pre, summary["classes_scored"], len(probs))
    metrics["warnings"] = [few] if few else []
    if few:
        log.warning("%s", few)
    if boot and boot.replicates:
        t0 = time.time()
        ci = bootstrap_ci(probs_t, labels_t, boot.replicates, boot.level, boot.seed)
        metrics.update({f"{pre}/{k}": v for k, v in ci.items()})
        metrics.update({"bootstrap_replicates": boot.replicates, "bootstrap_level": boot.level,
                        "bootstrap_seed": boot.seed})
        log.info("bootstrap intervals from %d replicates in %.1f s", boot.replicates, time.time() - t0)
    metrics.update(write_per_category(out, dm.root, summary, class_names, pre))
    write_json(out / "metrics.json", metrics)
    return metrics, summary


def format_scores(metrics: Mapping, num_classes: int) -> str:
    level = metrics.get("bootstrap_level")
    pre = SPLIT_PREFIX[metrics["split"]]

    def line(label: str, key: str) -> str:
        text = f"{label} {metrics[key]:.4f}"
        if level is not None and f"{key}_ci_low" in metrics:
            text += f"  [{level:.0%} CI {metrics[key + '_ci_low']:.4f}, {metrics[key + '_ci_high']:.4f}]"
        return text

    lines = [line("mAP ", f"{pre}/mAP"), line("mAUC", f"{pre}/mAUC"), line("d'  ", f"{pre}/dprime"),
             f"classes scored: {metrics[f'{pre}/classes_scored']} of {num_classes} "
             f"({metrics[f'{pre}/classes_unscored']} without positives in the split are left out of the means)"]
    cats = sorted({k.split("/")[2] for k in metrics if k.startswith(f"{pre}/category/")})
    for name in cats:
        lines.append(f"  {name:<40} mAP {metrics[f'{pre}/category/{name}/mAP']:.4f}  "
                     f"mAUC {metrics[f'{pre}/category/{name}/mAUC']:.4f}")
    lines.append(f"at thresholds {metrics['thresholds']}:")
    lines += [f"  {avg:5} F1 {metrics[f'{pre}/{avg}_f1']:.4f}  precision {metrics[f'{pre}/{avg}_precision']:.4f}  "
              f"recall {metrics[f'{pre}/{avg}_recall']:.4f}" for avg in ("micro", "macro")]
    return "\n".join(lines)

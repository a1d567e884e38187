"""`python -m aer.predict ckpt=PATH input=DIR_OF_SHARDS_OR_FILE.h5 top_k=5`: each clip's likeliest classes.

Writes `predictions.csv` (one row per clip and rank: video_id, rank, index, mid, name, prob),
`labels.csv` (one row per clip and class tagged, i.e. prob >= the class's threshold: video_id,
index, mid, name, prob, threshold) and `predictions.json` (one entry per clip: video_id,
start_time, end_time, top: [{index, mid, name, prob}], labels: the same for the tagged classes,
most probable first) into `out=` (default: this command's Hydra run dir). Thresholds are the
checkpoint's (`python -m aer.thresholds`), else 0.5, or `threshold=` for every class. Clips come
in input order: shards sorted by name, as `python -m aer.data convert` stores them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from aer.data.convert import list_shards, load_split, read_shard
from aer.data.labels import LABELS_FILE, read_class_labels, read_labels
from aer.files import atomic_open
from aer.launch import job_state
from aer.settings import PredictConfig

if TYPE_CHECKING:

    from aer.module import Tagger

log = logging.getLogger(__name__)

H5_SUFFIXES = (".h5", ".hdf5")
CSV_COLUMNS = ("video_id", "rank", "index", "mid", "name", "prob")
LABELS_COLUMNS = ("video_id", "index", "mid", "name", "prob", "threshold")
INPUT_KINDS = "a folder of .tfrecord shards, a .tfrecord file, or an .h5 from `python -m aer.data convert`"


# ---- input
def load_input(path: str | os.PathLike, on_bad_record: str = "error") -> dict[str, np.ndarray]:
    """Clips of a shard folder, one shard, or a converted .h5: features uint8 (N, T, D), lengths, ids, times."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"input={path}: no such file or directory (expected {INPUT_KINDS})")
    if p.is_file() and p.suffix.lower() in H5_SUFFIXES:
        arrays = load_split(p)
    elif p.is_dir() or p.suffix == ".tfrecord":
        if p.is_dir() and not any(p.glob("*.tfrecord")):
            splits = sorted(d.name for d in p.iterdir() if d.is_dir() and any(d.glob("*.tfrecord")))
            if splits:  # a data root, not a split: say which splits it holds
                raise FileNotFoundError(f"input={path}: holds split folders ({', '.join(splits)}), not shards: "
                                        f"pass one of them, e.g. input={p / splits[-1]}")
        shards = list_shards(p) if p.is_dir() else [p]
        # shard by shard: read_shard keeps only its own clips, no HDF5 cache is written
        parts = [read_shard(str(s), on_bad_record) for s in shards]
        skipped = sum(len(r.skipped) for r in parts)
        if skipped:
            log.warning("input=%s: %d bad records skipped (on_bad_record=skip), e.g. %s", path, skipped,
                        next(s for r in parts for s in r.skipped))
        arrays = {
            "features": np.concatenate([r.features for r in parts]),
            "lengths": np.concatenate([r.lengths for r in parts]).astype(np.int64),
            "video_id": np.array([v for r in parts for v in r.video_ids], dtype=object),
            "start_time": np.concatenate([r.start_time for r in parts]),
            "end_time": np.concatenate([r.end_time for r in parts]),
        }
    else:
        raise ValueError(f"input={path}: a {p.suffix or 'suffix-less'} file, expected {INPUT_KINDS}")
    if len(arrays["lengths"]) == 0:
        raise ValueError(f"input={path}: holds no clips")
    return arrays


# ---- class names
def labels_candidates(data_root: str | None, input_path: str | os.PathLike) -> list[Path]:
    """Where a class_labels_indices.csv may be, most specific first: the training data's root, then
    the root the input split came from (shards in <root>/<split>/, caches in <root>/aer_cache/)."""
    inp = Path(input_path).expanduser()
    dirs = [Path(data_root).expanduser()] if data_root else []
    if inp.is_file() and inp.suffix.lower() in H5_SUFFIXES:
        with contextlib.suppress(OSError), h5py.File(inp, "r") as f:
            source = f.attrs.get("source")  # the shard folder convert read it from
            if source:
                dirs.append(Path(str(source)).parent)
        dirs += [inp.parent.parent, inp.parent]
    elif inp.is_file():
        dirs += [inp.parent.parent, inp.parent]
    else:
        dirs += [inp.parent, inp]
    return list(dict.fromkeys(d / LABELS_FILE for d in dirs))


def class_names(labels: str | None, data_root: str | None, input_path: str | os.PathLike,
                num_classes: int) -> tuple[list[tuple[str, str]], Path | None]:
    """Class names from `labels=`, else from the first labels file found beside the data; and its path."""
    if labels:
        return read_labels(labels, num_classes), Path(labels).expanduser()
    cands = labels_candidates(data_root, input_path)
    for cand in cands:
        if cand.is_file():
            return read_labels(cand, num_classes), cand
    log.warning("no %s in %s: pass labels=PATH to name the classes", LABELS_FILE,
                ", ".join(str(c.parent) for c in cands))
    # warns once more and names every class by its index
    return read_class_labels(cands[0].parent if cands else Path("."), num_classes), None


def _tagged(probs: np.ndarray, thresholds: np.ndarray) -> list[list[int]]:
    """Per clip, the classes at or above their threshold, most probable first."""
    rows, cols = np.nonzero(probs >= thresholds[None, :])
    order = np.lexsort((-probs[rows, cols], rows))
    return [c.tolist() for c in np.split(cols[order], np.searchsorted(rows[order], np.arange(1, len(probs))))]


def write_predictions(model: Tagger, clips: dict[str, np.ndarray], names: list[tuple[str, str]], top_k: int,
                      out_dir: Path, thresholds: np.ndarray, batch_size: int = 4096) -> tuple[Path, Path, Path]:
    """Streams each batch's top-k and tagged classes into predictions.csv, labels.csv and predictions.json."""
    import torch

    paths = out_dir / "predictions.csv", out_dir / "labels.csv", out_dir / "predictions.json"
    ids, starts, ends = clips["video_id"], clips["start_time"], clips["end_time"]
    thr_txt = [str(t) for t in thresholds]

    def item(i: int, p: str) -> dict:
        return {"index": i, "mid": names[i][0], "name": names[i][1], "prob": float(p)}

    with atomic_open(paths[0], encoding="utf-8", newline="") as fc, \
            atomic_open(paths[1], encoding="utf-8", newline="") as fl, \
            atomic_open(paths[2], encoding="utf-8", newline="") as fj:
        w, wl = csv.writer(fc), csv.writer(fl)
        w.writerow(CSV_COLUMNS)
        wl.writerow(LABELS_COLUMNS)
        fj.write("[")
        from aer.inference import array_batches, iter_proba

        batches = array_batches(clips["features"], clips["lengths"], batch_size)
        for first, probs in zip(range(0, len(ids), batch_size), iter_proba(model, batches)):
            top_p, top_i = torch.topk(probs, top_k, dim=1)  # sorted, most probable first
            probs = probs.numpy()
            tagged = _tagged(probs, thresholds)
            for row, (ps, idx) in enumerate(zip(top_p.numpy(), top_i.numpy().tolist())):
                clip = first + row
                vid = str(ids[clip])
                # str(float32): the shortest text that reads back as the same float32
                top = [item(i, str(p)) for i, p in zip(idx, ps)]
                for rank, t in enumerate(top, start=1):
                    w.writerow((vid, rank, t["index"], t["mid"], t["name"], str(ps[rank - 1])))
                labels = [item(i, str(probs[row, i])) for i in tagged[row]]
                for t in labels:
                    i = t["index"]
                    wl.writerow((vid, i, t["mid"], t["name"], str(probs[row, i]), thr_txt[i]))
                entry = {"video_id": vid, "start_time": float(starts[clip]), "end_time": float(ends[clip]),
                         "top": top, "labels": labels}
                fj.write(("\n" if clip == 0 else ",\n") + json.dumps(entry, ensure_ascii=False))
        fj.write("\n]\n")
    return paths


def run(config: PredictConfig) -> dict:
    """Predicts the top_k classes of every clip in `input` with the model in `ckpt`; what it wrote."""
    t0 = time.time()
    from aer.checkpoint import Checkpoint

    ckpt = Checkpoint.load(config.ckpt)
    model = ckpt.tagger()
    thresholds, thr_source = ckpt.decision_thresholds(config.threshold)
    hp = model.hparams
    if config.top_k > hp.num_classes:
        raise ValueError(f"top_k={config.top_k}: the model has only {hp.num_classes} classes")
    clips = load_input(config.input, config.on_bad_record)
    shape = tuple(clips["features"].shape[1:])
    if shape != (hp.max_frames, hp.in_dim):
        raise ValueError(f"input={config.input}: clips of {shape[0]} frames × {shape[1]} dims, but the model in "
                         f"ckpt={config.ckpt} takes {hp.max_frames} × {hp.in_dim}")
    if config.labels or ckpt.class_names() is None:
        names, labels_path = class_names(config.labels, ckpt.data.get("root"), config.input, hp.num_classes)
    else:
        names, labels_path = ckpt.class_names(), None
    out_dir = Path(config.out).expanduser()
    with job_state(config.threads):
        csv_path, labels_csv, json_path = write_predictions(model, clips, names, config.top_k, out_dir, thresholds,
                                                            config.batch_size)
    n = len(clips["lengths"])
    log.info("top %d classes of %d clips and the classes tagged at thresholds %s: %s, %s, %s", config.top_k, n,
             thr_source, csv_path, labels_csv, json_path)
    return {"status": "ok", "clips": n, "top_k": config.top_k, "csv": str(csv_path), "json": str(json_path),
            "labels_csv": str(labels_csv), "thresholds": thr_source,
            "labels": str(labels_path) if labels_path else None, "ckpt": str(config.ckpt),
            "input": str(config.input), "seconds": round(time.time() - t0, 2)}


if __name__ == "__main__":
    from aer.cli import predict

    predict()

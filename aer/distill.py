"""Knowledge distillation's targets: a teacher ensemble's mean probabilities on the training clips.

The teachers are given as ensemble.py's members are (distill.ckpts, distill.sweep: through
aer.ensemble.member_paths). Their probabilities are computed once per (teachers' checkpoint contents,
training clips) and cached in the data's cache folder, `<cache>/teachers/<key>.h5`, written under a
temporary name and renamed; a later run with the same teachers and split reads it back without loading
any teacher. A teacher that may have trained on this run's held-out clips (the dev split's validation
clips in dev mode, the eval split in final mode) is refused before anything is computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import torch

from aer.data.datamodule import AudioSetDataModule
from aer.module import TeacherTargets
from aer.settings import TRAIN_SPLITS, DistillSettings
from aer.utils import atomic_path, error_line, file_lock, remove_stale_partials

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # of the cache's contents: a change of what is cached gets new keys
DEV_SPLIT_KEYS = ("train_split", "val_fraction", "split_seed")  # what decides the dev split's clips


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _splits(train_split) -> list[str]:
    return list(TRAIN_SPLITS.get(train_split, [train_split]) if isinstance(train_split, str) else train_split)


def held_out(dm: AudioSetDataModule) -> dict:
    """What decides which clips the data module trains on and which it holds out (validation or test)."""
    out = {"mode": dm.mode, "train_split": list(dm.train_splits), "num_classes": dm.num_classes}
    if dm.mode == "dev":
        return {**out, "val_fraction": dm.val_fraction, "split_seed": dm.split_seed}
    return {**out, "eval_split": dm.eval_split}


def check_teacher(path: Path, ckpt: dict, dm: AudioSetDataModule) -> None:
    """Refuses (one line naming the checkpoint) a teacher whose training clips may hold the run's held-out ones."""
    stored = ckpt.get("datamodule_hyper_parameters") or {}
    classes = ckpt["hyper_parameters"].get("num_classes")
    if classes != dm.num_classes:
        raise ValueError(f"distill: {path} predicts {classes} classes, this run's data has {dm.num_classes} "
                         f"(data.num_classes)")
    if "mode" not in stored:
        raise ValueError(f"distill: {path} holds no data settings (datamodule_hyper_parameters), so it cannot be "
                         f"checked not to have trained on this run's held-out clips: use teachers train.py wrote")
    theirs = _splits(stored.get("train_split", "bal_train"))
    if dm.mode == "final":
        if dm.eval_split in theirs:
            raise ValueError(f"distill: {path} was trained on {dm.eval_split}, this run's test split "
                             f"(data.eval_split): it would leak the test clips into the student")
        return
    if stored["mode"] != "dev":
        raise ValueError(f"distill: {path} was trained with data.mode={stored['mode']} on all of {'+'.join(theirs)}, "
                         f"which holds this run's validation clips: it would leak them into the student; use "
                         f"teachers trained in dev mode on this run's data.train_split, val_fraction and split_seed")
    ours = {"train_split": list(dm.train_splits), "val_fraction": dm.val_fraction, "split_seed": dm.split_seed}
    for key in DEV_SPLIT_KEYS:
        value = theirs if key == "train_split" else stored.get(key)
        if value != ours[key]:
            raise ValueError(f"distill: {path} was trained with data.{key}={value!r}, this run has "
                             f"data.{key}={ours[key]!r}: its training clips include some of this run's validation "
                             f"clips (it would leak them into the student); use teachers trained on this dev split")
    if stored.get("root") and Path(stored["root"]).expanduser().resolve() != dm.root.resolve():
        log.warning("distill: %s was trained on data.root=%s, this run's is %s: the same split settings draw "
                    "the same clips only from the same data", path, stored["root"], dm.root)


def _cache_file(dm: AudioSetDataModule, digests: list[str]) -> Path:
    key = {"version": CACHE_VERSION, "teachers": sorted(digests), "data": held_out(dm)}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return dm.cache_root() / "teachers" / f"{name}.h5"


def _clips_digest(video_ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(map(str, video_ids)).encode()).hexdigest()


def _read(path: Path, rows: np.ndarray, clips: str) -> np.ndarray | None:
    """The cached probabilities, if the file is whole and holds these clips (else None, and why is logged)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("clips") != clips or not np.array_equal(f["rows"][()], rows):
                log.warning("distill: %s holds other training clips than this run's: computing them again", path)
                return None
            return f["probs"][()]
    except (OSError, KeyError, ValueError) as e:
        log.warning("distill: %s is unreadable (%s): computing the teacher targets again", path, error_line(e))
        return None


def _predict(paths: list[Path], dm: AudioSetDataModule, device: torch.device | str) -> np.ndarray:
    """The teachers' mean probabilities (float16, N x C) of the training clips, in split_info order (a
    teacher given k times weighs k times, as in ensemble.py)."""
    from aer.checkpoint import load_checkpoint, tagger_from_checkpoint
    from aer.inference import iter_proba

    counts = Counter(paths)
    ckpts = {p: load_checkpoint(p) for p in counts}
    for p, ckpt in ckpts.items():  # all of them checked before any is run
        check_teacher(p, ckpt, dm)
    models = [(tagger_from_checkpoint(ckpts[p], str(p)).to(device), k) for p, k in counts.items()]
    out = np.empty((len(dm.split_info("train")["rows"]), dm.num_classes), np.float16)
    i = 0
    for batch in dm.split_batches("train"):
        clips = [(batch["features"], batch["lengths"])]
        mean = sum(k * next(iter_proba(m, clips)).double() for m, k in models) / len(paths)
        out[i:i + len(mean)] = mean.numpy()
        i += len(mean)
    return out


def teacher_targets(settings: DistillSettings, dm: AudioSetDataModule,
                    device: torch.device | str = "cpu") -> TeacherTargets:
    """The teachers' probabilities of `dm`'s training clips (set up for fit), from the cache or computed
    (on `device`) and cached."""
    from aer.ensemble import member_paths

    paths = member_paths(settings.ckpts, settings.sweep, "distill.")
    info = dm.split_info("train")
    rows, clips = info["rows"], _clips_digest(info["video_id"])
    digests = {p: file_digest(p) for p in dict.fromkeys(paths)}
    path = _cache_file(dm, [digests[p] for p in paths])
    with file_lock(path.with_name(f".{path.name}.lock"), f"computing teacher targets into {path}", say=log.info):
        probs = _read(path, rows, clips) if path.exists() else None
        if probs is not None:
            log.info("distill: teacher targets of %d teacher(s) on %d training clips read from %s (computed by an "
                     "earlier run; no teacher loaded)", len(paths), len(rows), path)
        else:
            log.info("distill: computing the probabilities of %d teacher(s) on %d training clips",
                     len(paths), len(rows))
            device = torch.device(device)
            # building the teachers draws initial weights: the run's random state is put back afterwards, so a
            # run that computes the targets draws what one that reads them draws (the same numbers)
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                probs = _predict(paths, dm, device)
            remove_stale_partials(path.parent)
            with atomic_path(path) as tmp:
                with h5py.File(tmp, "w") as f:
                    f.create_dataset("probs", data=probs, chunks=(min(len(probs), 1024) or 1, probs.shape[1]),
                                     fletcher32=True)
                    f.create_dataset("rows", data=rows.astype(np.int64))
                    f.attrs["clips"] = clips
                    f.attrs["teachers"] = json.dumps([{"ckpt": str(p), "sha256": digests[p]} for p in paths])
                    f.attrs["data"] = json.dumps(held_out(dm))
            log.info("distill: teacher targets cached in %s", path)
    return TeacherTargets(torch.from_numpy(rows), torch.from_numpy(probs), info["clips"])

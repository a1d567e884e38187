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

from aer.checkpoint import Checkpoint
from aer.data.datamodule import AudioSetDataModule
from aer.errors import one_line
from aer.files import atomic_path, file_lock, remove_stale_partials
from aer.inference import iter_proba
from aer.module import TeacherTargets
from aer.runs import member_paths
from aer.settings import DistillSettings

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # of the cache's contents: a change of what is cached gets new keys


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_teacher(ckpt: Checkpoint, dm: AudioSetDataModule) -> None:
    """Refuses (one line naming the checkpoint) a teacher whose training clips may hold the run's held-out ones:
    it must have held out what the run holds out (the same dev split), or, for a final-mode run, not have
    trained on its test split."""
    if ckpt.num_classes != dm.num_classes:
        raise ValueError(f"distill: {ckpt.path} predicts {ckpt.num_classes} classes, this run's data has "
                         f"{dm.num_classes} (data.num_classes)")
    theirs = ckpt.held_out
    if theirs is None:
        raise ValueError(f"distill: {ckpt.path} holds no data settings (datamodule_hyper_parameters), so it cannot "
                         f"be checked not to have trained on this run's held-out clips: use teachers train.py wrote")
    if dm.mode == "final":
        if dm.eval_split in theirs["train_split"]:
            raise ValueError(f"distill: {ckpt.path} was trained on {dm.eval_split}, this run's test split "
                             f"(data.eval_split): it would leak the test clips into the student")
        return
    if theirs["mode"] != "dev":
        raise ValueError(f"distill: {ckpt.path} was trained with data.mode={theirs['mode']} on all of "
                         f"{'+'.join(theirs['train_split'])}, which holds this run's validation clips: it would leak "
                         f"them into the student; use teachers trained in dev mode on this run's data.train_split, "
                         f"val_fraction and split_seed")
    differs = ckpt.differs(dm)
    if differs:
        raise ValueError(f"distill: {ckpt.path}: {differs}: its training clips include some of this run's "
                         f"validation clips (it would leak them into the student); use teachers trained on this "
                         f"dev split")
    root = ckpt.data.get("root")
    if root and Path(root).expanduser().resolve() != dm.root.resolve():
        log.warning("distill: %s was trained on data.root=%s, this run's is %s: the same split settings draw "
                    "the same clips only from the same data", ckpt.path, root, dm.root)


def _cache_file(dm: AudioSetDataModule, digests: list[str]) -> Path:
    key = {"version": CACHE_VERSION, "teachers": sorted(digests), "data": dm.held_out()}
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
        log.warning("distill: %s is unreadable (%s): computing the teacher targets again", path,
                    one_line(e, typed=True))
        return None


def _predict(paths: list[Path], dm: AudioSetDataModule, device: torch.device | str) -> np.ndarray:
    """The teachers' mean probabilities (float16, N x C) of the training clips, in split_info order (a
    teacher given k times weighs k times, as in ensemble.py)."""
    counts = Counter(paths)
    ckpts = {p: Checkpoint.load(p) for p in counts}
    for ckpt in ckpts.values():  # all of them checked before any is run
        check_teacher(ckpt, dm)
    models = [(ckpts[p].tagger(device), k) for p, k in counts.items()]
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
                    f.attrs["data"] = json.dumps(dm.held_out())
            log.info("distill: teacher targets cached in %s", path)
    return TeacherTargets(torch.from_numpy(rows), torch.from_numpy(probs), info["clips"])

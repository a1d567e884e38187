"""One split's shards → one HDF5 file, streamed, in parallel, rebuilt only when the shards change."""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import hashlib
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from aer import __version__
from aer.data.records import EMBED_DIM, MAX_FRAMES, NUM_CLASSES, RecordError, parse_record, wire_frames
from aer.data.tfrecord import ShardError, scan_records

FORMAT_VERSION = 1
ON_BAD = ("error", "skip")
_WRITE_ROWS = 4096  # rows buffered between HDF5 writes: a few shards' worth, bounded whatever the split size


@dataclass
class ShardResult:
    features: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    video_ids: list[str]
    start_time: np.ndarray
    end_time: np.ndarray
    digest: bytes
    skipped: list[str] = field(default_factory=list)


@dataclass
class ConvertSummary:
    out: Path
    clips: int
    shards: int
    skipped: int
    fresh: bool
    seconds: float
    skipped_examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.fresh:
            return f"cache is fresh: {self.out} ({self.clips} clips from {self.shards} shards), nothing to do"
        extra = f", {self.skipped} bad records skipped" if self.skipped else ""
        return (f"wrote {self.out}: {self.clips} clips from {self.shards} shards in {self.seconds:.1f} s"
                f" ({self.clips / max(self.seconds, 1e-9):,.0f} clips/s){extra}")


def read_shard(path: str, on_bad_record: str = "error", num_classes: int = NUM_CLASSES) -> ShardResult:
    with open(path, "rb") as f:
        data = f.read()
    vids, starts, ends, labels, counts, wires, lengths, skipped = [], [], [], [], [], [], [], []
    for index, payload, reason in scan_records(path, data):
        try:
            if reason is not None:
                raise ShardError(path, index, reason)
            try:
                vid, start, end, labs, wire, n = parse_record(payload, num_classes, MAX_FRAMES)
            except RecordError as e:
                raise ShardError(path, index, str(e)) from None
        except ShardError as e:
            if on_bad_record == "error":
                raise
            skipped.append(str(e))
            continue
        vids.append(vid)
        starts.append(start)
        ends.append(end)
        labels.extend(labs)
        counts.append(len(labs))
        wires.append(wire)
        lengths.append(n)
    # Whole-shard numpy: every clip's frames land in one scatter, every label in one assignment.
    n = len(vids)
    lens = np.array(lengths, dtype=np.uint8)
    feats = np.zeros((n, MAX_FRAMES, EMBED_DIM), dtype=np.uint8)
    if n:
        feats[np.arange(MAX_FRAMES) < lens[:, None]] = wire_frames(b"".join(wires), int(lens.sum(dtype=np.int64)))
    onehot = np.zeros((n, num_classes), dtype=bool)
    onehot[np.repeat(np.arange(n), counts), np.array(labels, dtype=np.int64)] = True
    return ShardResult(feats, lens, onehot, vids, np.array(starts, dtype=np.float32),
                       np.array(ends, dtype=np.float32), hashlib.sha256(data).digest(), skipped)


def list_shards(src_dir: str | os.PathLike) -> list[Path]:
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such directory (expected a folder of .tfrecord shards)")
    # Byte order of names, as `LC_ALL=C ls`: the clip order must not depend on the locale.
    shards = sorted(src.glob("*.tfrecord"), key=lambda p: os.fsencode(p.name))
    if not shards:
        raise FileNotFoundError(f"{src}: no .tfrecord shards found")
    return shards


def fingerprint(shards: list[Path]) -> str:
    """Cheap identity of a split: names, sizes and mtimes (content digests are stored beside it)."""
    h = hashlib.sha256()
    for p in shards:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_is_fresh(out: str | os.PathLike, fp: str, num_classes: int = NUM_CLASSES,
                   on_bad_record: str = "skip") -> bool:
    """True if `out` was built from these shards, for this many classes; a cache that skipped bad
    records does not satisfy a strict (on_bad_record="error") run, which must stop at them."""
    try:
        with h5py.File(out, "r") as f:
            a = f.attrs
            return (a.get("format_version") == FORMAT_VERSION and a.get("fingerprint") == fp
                    and a.get("num_classes") == num_classes
                    and (on_bad_record != "error" or a.get("skipped_records", 0) == 0))
    except (OSError, KeyError):
        return False


def _create(f: h5py.File, num_classes: int) -> dict[str, h5py.Dataset]:
    chunk = 1024
    return {
        "features": f.create_dataset("features", (0, MAX_FRAMES, EMBED_DIM), np.uint8,
                                     maxshape=(None, MAX_FRAMES, EMBED_DIM), chunks=(chunk, MAX_FRAMES, EMBED_DIM)),
        "lengths": f.create_dataset("lengths", (0,), np.uint8, maxshape=(None,), chunks=(chunk * 16,)),
        "labels": f.create_dataset("labels", (0, num_classes), bool, maxshape=(None, num_classes),
                                   chunks=(chunk, num_classes), compression="lzf"),
        "video_id": f.create_dataset("video_id", (0,), h5py.string_dtype("utf-8"), maxshape=(None,),
                                     chunks=(chunk * 16,)),
        "start_time": f.create_dataset("start_time", (0,), np.float32, maxshape=(None,), chunks=(chunk * 16,)),
        "end_time": f.create_dataset("end_time", (0,), np.float32, maxshape=(None,), chunks=(chunk * 16,)),
    }


def _append(dsets: dict[str, h5py.Dataset], parts: list[ShardResult]) -> int:
    cols = {
        "features": np.concatenate([p.features for p in parts]),
        "lengths": np.concatenate([p.lengths for p in parts]),
        "labels": np.concatenate([p.labels for p in parts]),
        "video_id": np.array([v for p in parts for v in p.video_ids], dtype=object),
        "start_time": np.concatenate([p.start_time for p in parts]),
        "end_time": np.concatenate([p.end_time for p in parts]),
    }
    n0, k = dsets["lengths"].shape[0], len(cols["lengths"])
    for name, arr in cols.items():
        d = dsets[name]
        d.resize(n0 + k, axis=0)
        d[n0:n0 + k] = arr
    return k


def _read_group(paths: list[str], on_bad_record: str, num_classes: int) -> list[ShardResult]:
    """A worker's task. Labels travel bit-packed (66 bytes a clip, not 527): less to pickle and pipe."""
    results = [read_shard(p, on_bad_record, num_classes) for p in paths]
    for r in results:
        r.labels = np.packbits(r.labels, axis=1)
    return results


def _unpacked(results: list[ShardResult], num_classes: int) -> list[ShardResult]:
    for r in results:
        r.labels = np.unpackbits(r.labels, axis=1, count=num_classes).view(bool)
    return results


def _groups(shards: list[Path], target_bytes: int = 1 << 20) -> list[list[str]]:
    """Packs small shards together so each task is worth the cost of shipping it to a worker."""
    groups, cur, size = [], [], 0
    for p in shards:
        cur.append(str(p))
        size += p.stat().st_size
        if size >= target_bytes:
            groups.append(cur)
            cur, size = [], 0
    if cur:
        groups.append(cur)
    return groups


def _results(shards: list[Path], workers: int, on_bad_record: str, num_classes: int):
    """Shard results in shard order; at most a few groups of shards per worker are in flight."""
    if workers <= 1:
        for p in shards:
            yield read_shard(str(p), on_bad_record, num_classes)
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending: deque[cf.Future] = deque()
        try:
            for group in _groups(shards):
                pending.append(pool.submit(_read_group, group, on_bad_record, num_classes))
                if len(pending) >= 2 * workers:
                    yield from _unpacked(pending.popleft().result(), num_classes)
            while pending:
                yield from _unpacked(pending.popleft().result(), num_classes)
        finally:
            for fut in pending:
                fut.cancel()


def convert(src_dir: str | os.PathLike, out: str | os.PathLike, *, workers: int = 1,
            on_bad_record: str = "error", num_classes: int = NUM_CLASSES, force: bool = False,
            progress: bool | None = None) -> ConvertSummary:
    """Converts every shard of `src_dir` into `out` (HDF5), unless `out` already matches them.

    The file is built under a temporary name and renamed into place only when complete, so a
    killed or failed run leaves either nothing or the previous valid file at `out`.
    """
    if on_bad_record not in ON_BAD:
        raise ValueError(f"on_bad_record={on_bad_record!r}: expected one of {', '.join(ON_BAD)}")
    t0 = time.perf_counter()
    out = Path(out)
    shards = list_shards(src_dir)
    fp = fingerprint(shards)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.lock", "w") as lock:
        # Two processes converting the same split (two sweeps starting at once) take turns.
        fcntl.flock(lock, fcntl.LOCK_EX)
        tmp = out.with_name(out.name + ".partial")
        if not force and cache_is_fresh(out, fp, num_classes, on_bad_record):
            tmp.unlink(missing_ok=True)  # left by a killed run; we hold the lock, so no one is writing it
            with h5py.File(out, "r") as f:
                return ConvertSummary(out, int(f["lengths"].shape[0]), len(shards),
                                      int(f.attrs.get("skipped_records", 0)), True, time.perf_counter() - t0)
        skipped: list[str] = []
        n_skipped = 0
        try:
            with h5py.File(tmp, "w") as f:
                dsets = _create(f, num_classes)
                buf: list[ShardResult] = []
                rows = 0
                digest = hashlib.sha256()
                bar = tqdm(total=len(shards), unit="shard", desc=f"convert {Path(src_dir).name}",
                           disable=(not progress) if progress is not None else None, dynamic_ncols=True)
                total = 0
                with bar:
                    for res in _results(shards, workers, on_bad_record, num_classes):
                        digest.update(res.digest)
                        n_skipped += len(res.skipped)
                        skipped.extend(res.skipped[: max(0, 10 - len(skipped))])
                        buf.append(res)
                        rows += len(res.video_ids)
                        if rows >= _WRITE_ROWS:
                            total += _append(dsets, buf)
                            buf, rows = [], 0
                        bar.update(1)
                        bar.set_postfix(clips=total + rows, refresh=False)
                    if buf:
                        total += _append(dsets, buf)
                f.attrs.update({
                    "format_version": FORMAT_VERSION, "fingerprint": fp, "source_sha256": digest.hexdigest(),
                    "num_shards": len(shards), "num_classes": num_classes, "skipped_records": n_skipped,
                    "source": str(Path(src_dir).resolve()), "aer_version": __version__,
                })
            if total == 0:
                raise ShardError(src_dir, None, "no valid clips in any shard")
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return ConvertSummary(out, total, len(shards), n_skipped, False, time.perf_counter() - t0, skipped)


def load_split(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a converted split into memory (features stay uint8, labels bool)."""
    return load_splits([path])


SPLIT_ARRAYS = ("features", "labels", "lengths", "start_time", "end_time", "video_id")


def load_splits(paths: list[str | os.PathLike], arrays: tuple[str, ...] = SPLIT_ARRAYS) -> dict[str, np.ndarray]:
    """Converted splits read into memory as one, in order (features stay uint8, labels bool); each
    array is allocated once, not loaded per split and concatenated, which would hold every clip twice.
    `arrays` names the ones to read (e.g. only labels)."""
    files = []
    try:
        for path in map(Path, paths):
            try:
                files.append(h5py.File(path, "r"))
            except OSError as e:
                raise OSError(f"{path}: not a readable aer HDF5 cache ({e}); delete it to rebuild") from None
            version = files[-1].attrs.get("format_version")
            if version != FORMAT_VERSION:
                raise ValueError(f"{path}: cache format {version}, expected {FORMAT_VERSION}; delete it to rebuild")
        if len({f["labels"].shape[1] for f in files}) > 1:
            raise ValueError(f"{', '.join(map(str, paths))}: the splits have different numbers of classes")
        ends = np.cumsum([0] + [f["lengths"].shape[0] for f in files])
        out = {}
        for name in (a for a in SPLIT_ARRAYS[:-1] if a in arrays):
            d0 = files[0][name]
            out[name] = np.empty((ends[-1], *d0.shape[1:]), dtype=np.int64 if name == "lengths" else d0.dtype)
            for f, a, b in zip(files, ends[:-1], ends[1:]):
                if b > a:
                    if name == "lengths":
                        out[name][a:b] = f[name][()]
                    else:
                        f[name].read_direct(out[name], dest_sel=np.s_[a:b])
        if "video_id" in arrays:
            out["video_id"] = np.concatenate([f["video_id"].asstr()[()] for f in files])
        return out
    finally:
        for f in files:
            f.close()

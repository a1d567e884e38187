"""One split's shards → one HDF5 file, streamed, in parallel, rebuilt only when the shards change."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from aer import __version__
from aer.data.records import EMBED_DIM, MAX_FRAMES, NUM_CLASSES, RecordError, parse_record, wire_frames
from aer.data.tfrecord import ShardError, scan_records
from aer.errors import first_line
from aer.files import disk_full, file_lock, is_disk_full

log = logging.getLogger(__name__)

# 2: per-chunk fletcher32 checksums on every dataset, fixed-length video ids, a clip count to check
FORMAT_VERSION = 2
VIDEO_ID_BYTES = 32  # YouTube ids are 11 characters; fixed-length strings are what HDF5 can checksum
_WRITE_ROWS = 4096  # rows buffered between HDF5 writes: a few shards' worth, bounded whatever the split size
DATASETS = ("features", "lengths", "labels", "video_id", "start_time", "end_time")


class _WriteGuard:
    """The file h5py writes the cache through: the first failed write (a full disk) is kept, and
    the later ones are dropped, so HDF5 still closes the file.

    Left to fail inside HDF5, the write leaves a file the library can neither flush nor close:
    h5py then crashes the process (SIGSEGV) when it frees the file, or at exit.
    """

    def __init__(self, path: Path):
        self.f = open(path, "w+b", buffering=0)  # unbuffered: each write fails where it happens
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                done += self.f.write(view[done:])
            except OSError as e:
                self.error = e
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self.f.truncate(size)
            except OSError as e:
                self.error = e
        return size if size is not None else self.f.tell()

    def read(self, n: int = -1) -> bytes:
        return self.f.read(n)

    def readinto(self, b) -> int:
        return self.f.readinto(b)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        pass  # unbuffered

    def close(self) -> None:
        self.f.close()

    def check(self, path: Path) -> None:
        if self.error is not None:
            raise disk_full(path, self.error) if is_disk_full(self.error) else self.error


class CacheError(OSError):
    """An HDF5 cache that is damaged, incomplete or not aer's; the message names the file."""


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
    if not data:  # not even a truncated record: an empty file is a failed copy or download
        if on_bad_record == "error":
            raise ShardError(path, None, "empty file (0 bytes), expected TFRecord records")
        return ShardResult(np.zeros((0, MAX_FRAMES, EMBED_DIM), np.uint8), np.zeros(0, np.uint8),
                           np.zeros((0, num_classes), bool), [], np.zeros(0, np.float32), np.zeros(0, np.float32),
                           hashlib.sha256(data).digest(), [f"{path}: empty file (0 bytes)"])
    vids, starts, ends, labels, counts, wires, lengths, skipped = [], [], [], [], [], [], [], []
    for index, payload, reason in scan_records(path, data):
        try:
            if reason is not None:
                raise ShardError(path, index, reason)
            try:
                vid, start, end, labs, wire, n = parse_record(payload, num_classes, MAX_FRAMES)
                if len(vid.encode()) > VIDEO_ID_BYTES:
                    raise RecordError(f"video_id {vid[:40]!r}... is longer than {VIDEO_ID_BYTES} bytes")
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


_CHANGED = "built from other shards"


def cache_problem(out: str | os.PathLike, fp: str, num_classes: int = NUM_CLASSES,
                  on_bad_record: str = "skip") -> str | None:
    """None if `out` is a complete cache built from these shards for this many classes; else why not.

    A cache that skipped bad records does not satisfy a strict (on_bad_record="error") run, which
    must stop at them. Damage inside the data is found on reading, by the chunks' checksums.
    """
    if not Path(out).exists():
        return "no cache yet"
    try:
        with h5py.File(out, "r") as f:
            a = f.attrs
            if a.get("format_version") != FORMAT_VERSION:
                return f"cache format {a.get('format_version')}, expected {FORMAT_VERSION}"
            if a.get("fingerprint") != fp:
                return _CHANGED + " (names, sizes or times changed)"
            if a.get("num_classes") != num_classes:
                return f"built for {a.get('num_classes')} classes, expected {num_classes}"
            if on_bad_record == "error" and a.get("skipped_records", 0):
                return f"{a.get('skipped_records')} bad records were skipped, and data.on_bad_record=error"
            return _incomplete(f)
    except OSError as e:
        return f"not a readable HDF5 file ({first_line(e)})"


def _incomplete(f: h5py.File) -> str | None:
    """Why an open cache does not hold the clips its attributes say it does, or None."""
    clips = f.attrs.get("clips")
    for name in DATASETS:
        if name not in f:
            return f"dataset '{name}' is missing"
        if f[name].shape[0] != clips:
            return f"dataset '{name}' holds {f[name].shape[0]} rows, the cache says {clips} clips"
    return None


def _create(f: h5py.File, num_classes: int) -> dict[str, h5py.Dataset]:
    def dataset(name: str, row: tuple, dtype, chunk_rows: int, **kw) -> h5py.Dataset:
        # fletcher32: every chunk carries a checksum, so a damaged byte fails the read that meets it
        return f.create_dataset(name, (0, *row), dtype, maxshape=(None, *row), chunks=(chunk_rows, *row),
                                fletcher32=True, **kw)

    return {
        "features": dataset("features", (MAX_FRAMES, EMBED_DIM), np.uint8, 1024),
        "lengths": dataset("lengths", (), np.uint8, 16384),
        "labels": dataset("labels", (num_classes,), bool, 1024, compression="lzf"),
        "video_id": dataset("video_id", (), f"S{VIDEO_ID_BYTES}", 16384, compression="lzf"),
        "start_time": dataset("start_time", (), np.float32, 16384),
        "end_time": dataset("end_time", (), np.float32, 16384),
    }


def _append(dsets: dict[str, h5py.Dataset], parts: list[ShardResult]) -> int:
    cols = {
        "features": np.concatenate([p.features for p in parts]),
        "lengths": np.concatenate([p.lengths for p in parts]),
        "labels": np.concatenate([p.labels for p in parts]),
        "video_id": np.array([v.encode() for p in parts for v in p.video_ids], dtype=f"S{VIDEO_ID_BYTES}"),
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


def _worker_init(parent: int) -> None:
    """A conversion worker dies with the process that started it, however that one ends.

    Without this, a parent killed by SIGKILL or SIGTERM leaves its workers blocked on their pipes
    for ever. Ctrl-C reaches the whole process group: the parent handles it, the workers ignore it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a handler inherited from the parent (Lightning installs one for SIGTERM) must not keep a worker alive
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _serve(conn, parent: int) -> None:
    """A conversion worker: reads the groups of shards its pipe brings, sends back each one's results
    (or the error that stopped it), until the pipe brings None or closes."""
    _worker_init(parent)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            out = ("ok", _read_group(*task))
        except Exception as e:
            out = ("error", e)
        try:
            conn.send(out)
        except (pickle.PicklingError, TypeError, AttributeError) as e:  # an error that does not pickle: its text
            conn.send(("error", RuntimeError(f"{out[1]!r} (sent as text: {e})")))


def _results(shards: list[Path], workers: int, on_bad_record: str, num_classes: int):
    """Shard results in shard order; at most two groups of shards per worker are in flight.

    Each worker has a pipe of its own and group i goes to worker i mod workers, so results are read
    back in order from one pipe at a time. No lock or queue is shared between processes and no thread
    manages them, so stopping them on an error, a full disk or Ctrl-C is a SIGKILL that cannot hang:
    multiprocessing.Pool's terminate() can wait for ever on the result queue's lock when a worker
    it stops held it (seen as a hung Ctrl-C of a 2-worker conversion under load).
    """
    if workers <= 1:
        for p in shards:
            yield read_shard(str(p), on_bad_record, num_classes)
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    groups = [(g, on_bad_record, num_classes) for g in _groups(shards)]
    workers = max(1, min(workers, len(groups)))
    procs, conns = [], []
    try:
        # Ctrl-C and SIGTERM are held back while the workers start, so that each one started is one we stop below.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for _ in range(workers):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(theirs, os.getpid()), daemon=True)
                proc.start()
                theirs.close()
                procs.append(proc)
                conns.append(ours)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        sent = 0
        for i in range(len(groups)):
            while sent < len(groups) and sent < i + 2 * workers:
                conns[sent % workers].send(groups[sent])
                sent += 1
            w = i % workers
            try:
                status, value = conns[w].recv()
            except EOFError:
                procs[w].join(1)
                raise RuntimeError(f"conversion worker pid {procs[w].pid} died (exit code {procs[w].exitcode}) "
                                   f"reading {groups[i][0][0]} and the shards after it") from None
            if status == "error":
                raise value
            yield from _unpacked(value, num_classes)
        for c in conns:
            c.send(None)
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:  # a worker's error, a full disk or Ctrl-C: stop the others now, not after their tasks
            if proc.exitcode is None:
                proc.kill()
            proc.join()
        for c in conns:
            c.close()


def partial_path(out: Path) -> Path:
    """Where a conversion builds `out` (hidden, beside it) until it is complete."""
    return out.with_name(f".{out.name}.partial")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of every HDF5 file, a damaged cache's too


def _check_paths(src: Path, out: Path, own_folder: bool) -> None:
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise ValueError(f"{out}: is inside the shard folder {src}; write the cache elsewhere "
                         f"(aer never writes into a data folder it did not make)")
    if out.is_dir():
        raise IsADirectoryError(f"{out}: is a directory, expected the path of an .h5 file to write")
    if out.is_file():
        with open(out, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
        if own_folder:  # a data module's cache folder: whatever lies at its cache path is a damaged cache
            return
        if head != HDF5_SIGNATURE:
            raise FileExistsError(f"{out}: exists and is not an HDF5 cache (it starts with {head[:8]!r}): convert "
                                  f"replaces only its own caches; give another path")
        try:
            with h5py.File(out, "r") as f:
                foreign = "fingerprint" not in f.attrs
        except OSError:  # damaged: an aer cache that a kill or a full disk cut short is rebuilt
            foreign = False
        if foreign:
            raise FileExistsError(f"{out}: exists and is an HDF5 file aer did not write (no cache attributes): "
                                  f"convert replaces only its own caches; give another path")


def convert(src_dir: str | os.PathLike, out: str | os.PathLike, *, workers: int = 1,
            on_bad_record: str = "error", num_classes: int = NUM_CLASSES, force: bool = False,
            progress: bool | None = None, own_folder: bool = False) -> ConvertSummary:
    """Converts every shard of `src_dir` into `out` (HDF5), unless `out` already matches them.

    The file is built under a temporary name and renamed into place only when complete, so a
    killed or failed run leaves either nothing or the previous valid file at `out`. A file at `out` that is
    not an aer cache is refused, unless `out` lies in a folder of aer's own caches (`own_folder`).
    """
    t0 = time.perf_counter()
    src, out = Path(src_dir), Path(out)
    _check_paths(src, out, own_folder)
    shards = list_shards(src)
    fp = fingerprint(shards)
    # Two processes converting the same split (two sweeps starting at once) take turns.
    with file_lock(out.with_name(f".{out.name}.lock"), f"converting {src} into {out}"):
        tmp = partial_path(out)
        tmp.unlink(missing_ok=True)  # left by a killed run; we hold the lock, so no one is writing it
        problem = "rebuild asked for (force)" if force else cache_problem(out, fp, num_classes, on_bad_record)
        if problem is None:
            with h5py.File(out, "r") as f:
                return ConvertSummary(out, int(f.attrs["clips"]), len(shards),
                                      int(f.attrs.get("skipped_records", 0)), True, time.perf_counter() - t0)
        if out.exists():  # shards that changed are the normal reason; anything else is worth a warning
            say = log.info if force or problem.startswith(_CHANGED) else log.warning
            say("%s: %s; rebuilding it from %s", out, problem, src)
        try:
            total, n_skipped, skipped = _write(tmp, src, shards, fp, workers, on_bad_record, num_classes, progress)
            os.replace(tmp, out)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, Exception) and is_disk_full(e):
                raise disk_full(out, e) from None
            raise
    return ConvertSummary(out, total, len(shards), n_skipped, False, time.perf_counter() - t0, skipped)


def _write(tmp: Path, src: Path, shards: list[Path], fp: str, workers: int, on_bad_record: str,
           num_classes: int, progress: bool | None) -> tuple[int, int, list[str]]:
    """Streams the shards into a new HDF5 file at `tmp`; (clips, bad records skipped, a few of them)."""
    skipped: list[str] = []
    n_skipped = total = 0
    seen: set[str] = set()
    digest = hashlib.sha256()
    guard = _WriteGuard(tmp)
    try:
        with h5py.File(guard, "w") as f:
            dsets = _create(f, num_classes)
            buf: list[ShardResult] = []
            rows = 0
            bar = tqdm(total=len(shards), unit="shard", desc=f"convert {src.name}",
                       disable=(not progress) if progress is not None else None, dynamic_ncols=True)
            # closing: an error or Ctrl-C here, outside the generator, stops its workers now, not when it is collected
            results = contextlib.closing(_results(shards, workers, on_bad_record, num_classes))
            with bar, results as shard_results:
                for res, shard in zip(shard_results, shards):  # the results first: their generator runs to its end
                    digest.update(res.digest)
                    dups = _drop_duplicates(res, seen, shard, on_bad_record)
                    n_skipped += len(res.skipped) + len(dups)
                    skipped.extend((res.skipped + dups)[: max(0, 10 - len(skipped))])
                    buf.append(res)
                    rows += len(res.video_ids)
                    if rows >= _WRITE_ROWS:
                        total += _append(dsets, buf)
                        buf, rows = [], 0
                        guard.check(tmp)
                    bar.update(1)
                    bar.set_postfix(clips=total + rows, refresh=False)
                if buf:
                    total += _append(dsets, buf)
            if total == 0:
                raise ShardError(src, None, "no valid clips in any shard")
            f.attrs.update({
                "format_version": FORMAT_VERSION, "fingerprint": fp, "source_sha256": digest.hexdigest(),
                "num_shards": len(shards), "num_classes": num_classes, "skipped_records": n_skipped,
                "clips": total, "source": str(src.resolve()), "aer_version": __version__,
            })
        guard.check(tmp)  # closing wrote the last chunks and the metadata
    finally:
        guard.close()
    return total, n_skipped, skipped


def _drop_duplicates(res: ShardResult, seen: set[str], shard: Path, on_bad_record: str) -> list[str]:
    """A video_id already read is an error (or, when skipping bad records, dropped with a note)."""
    dup = []
    for i, v in enumerate(res.video_ids):  # one by one: a shard can repeat a clip of its own
        if v in seen:
            dup.append(i)
        seen.add(v)
    if not dup:
        return []
    notes = [f"{shard}: video_id {res.video_ids[i]!r} was already read (duplicate clip)" for i in dup]
    if on_bad_record == "error":
        raise ShardError(shard, None, f"video_id {res.video_ids[dup[0]]!r} was already read from an earlier "
                                      f"record or shard (duplicate clip)")
    keep = np.setdiff1d(np.arange(len(res.video_ids)), dup)
    res.features, res.lengths, res.labels = res.features[keep], res.lengths[keep], res.labels[keep]
    res.start_time, res.end_time = res.start_time[keep], res.end_time[keep]
    res.video_ids = [res.video_ids[i] for i in keep]
    return notes


def load_split(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a converted split into memory (features stay uint8, labels bool)."""
    return load_splits([path])


def _open_cache(path: Path) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise CacheError(f"{path}: no such cache file") from None
    except OSError as e:
        raise CacheError(f"{path}: not a readable aer HDF5 cache ({first_line(e)})") from None
    version = f.attrs.get("format_version")
    problem = (f"cache format {version}, expected {FORMAT_VERSION}" if version != FORMAT_VERSION
               else _incomplete(f))
    if problem:
        f.close()
        raise CacheError(f"{path}: {problem}")
    return f


def load_splits(paths: list[str | os.PathLike], arrays: tuple[str, ...] = DATASETS) -> dict[str, np.ndarray]:
    """Converted splits read into memory as one, in order (features stay uint8, labels bool); each
    array is allocated once, not loaded per split and concatenated, which would hold every clip twice.
    `arrays` names the ones to read (e.g. only labels).

    Every chunk's checksum is verified on the way: a damaged cache raises CacheError naming it.
    """
    files: list[tuple[Path, h5py.File]] = []
    try:
        for path in map(Path, paths):
            files.append((path, _open_cache(path)))
        if len({f["labels"].shape[1] for _, f in files}) > 1:
            raise ValueError(f"{', '.join(map(str, paths))}: the splits have different numbers of classes")
        ends = np.cumsum([0] + [f["lengths"].shape[0] for _, f in files])
        out = {}
        for name in (a for a in DATASETS if a in arrays):
            d0 = files[0][1][name]
            dtype = {"lengths": np.int64, "video_id": object}.get(name, d0.dtype)
            out[name] = np.empty((ends[-1], *d0.shape[1:]), dtype=dtype)
            for (path, f), a, b in zip(files, ends[:-1], ends[1:]):
                if b > a:
                    _read_into(path, f[name], out[name], a, b)
        return out
    finally:
        for _, f in files:
            f.close()


def _read_into(path: Path, d: h5py.Dataset, out: np.ndarray, a: int, b: int) -> None:
    try:
        if out.dtype == object:  # fixed-length utf-8 bytes → str
            out[a:b] = np.char.decode(d[()], "utf-8")
        elif out.dtype != d.dtype:
            out[a:b] = d[()]
        else:
            d.read_direct(out, dest_sel=np.s_[a:b])
    except OSError as e:  # a checksum that fails, a chunk that cannot be read
        raise CacheError(f"{path}: dataset '{d.name.lstrip('/')}' is damaged ({first_line(e)})") from None

"""Files written safely: atomic writes, one-line full-disk errors, locks that a kill cannot leave held."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# The errors a write gets when the disk (or the user's quota or file-size limit) is full.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """A write that found no space; the message names the file it was writing."""

    def __init__(self, err: int, message: str):
        super().__init__(message)
        self.errno = err

    def __str__(self) -> str:
        return self.args[0]


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_disk_full(e: BaseException) -> bool:
    """True for ENOSPC and its kin, also where a library wrapped the OSError (h5py, torch)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return True
        text = str(e)
        if re.search(r"No space left on device|Disk quota exceeded|File too large|errno = 28\b", text):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full(path: str | os.PathLike, e: BaseException | None = None) -> DiskFullError:
    """The one-line error for a write to `path` that ran out of space."""
    err = e.errno if isinstance(e, OSError) and e.errno in DISK_FULL else errno.ENOSPC
    where = Path(path).parent
    return DiskFullError(err, f"{path}: no space left on {where} ({os.strerror(err)}); nothing was written "
                              f"there: free some space or write elsewhere")


# Temporary names carry the writer's pid, so that a later run can tell a dead writer's leftovers.
_PARTIAL = re.compile(r"^\..+\.(\d+)\.[^.]+\.partial$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary name beside `path`; renames it over `path` only if the block completes.

    Readers see the old file or the new one, never half of one; a failure or a kill leaves no
    partial file under the final name, and a full disk is reported in one line naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".partial")
    except (PermissionError, OSError) as e:
        if e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        raise unwritable(path.parent, e, f"{path.name} goes elsewhere with the setting that names this folder "
                                         f"(hydra.run.dir, data.cache_dir, out=, AER_HOME)") from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should be readable like any file
            os.replace(tmp, path)
        except Exception as e:
            if is_disk_full(e) and not isinstance(e, DiskFullError):
                raise disk_full(path, e) from None
            raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files of `atomic_path` writers in `folder` that are no longer alive."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for p in Path(folder).iterdir():
            m = _PARTIAL.match(p.name)
            if m and not pid_alive(int(m.group(1))):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left by killed writers in %s", len(removed), folder)
    return removed


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs):
    """`open()` on a temporary name, renamed over `path` once the block completes."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str, say=None):
    """Holds an exclusive lock on `path` (created, and removed again on release) for the block.

    POSIX record locks (lockf), not flock: the kernel drops them when their process dies, and a
    forked child (a conversion worker) does not inherit them, so a killed run never leaves one
    held. A lock that a live process holds is waited for, saying which pid holds it.
    """
    say = say or log.warning
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            holder = _try_lock(fd)
            if holder is not None:
                say(f"waiting for pid {holder}, which holds {path} ({what})")
                fcntl.lockf(fd, fcntl.LOCK_EX)
            # The holder before us may have removed the file on release: then we lock a ghost; retry.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue
            _claim(fd)
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # before the unlock: a waiter then sees the inode go
            return
        finally:
            os.close(fd)


def _try_lock(fd: int) -> str | None:
    """Locks `fd` if nobody holds it (None), else the pid its holder wrote into it ('?' if none yet)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    return None


def _claim(fd: int) -> None:
    """Writes our pid into a lock file we hold."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


_held: dict[Path, int] = {}  # the locks this process holds until it ends (hold_lock)


def hold_lock(path: str | os.PathLike) -> int | None:
    """Takes an exclusive lock on `path` for as long as this process lives (the kernel drops it when the process
    ends, however it ends), writing our pid into it; None when it is ours already, else the pid that holds it."""
    path = Path(path)
    if path in _held:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    holder = _try_lock(fd)
    if holder is not None:
        os.close(fd)
        return int(holder) if holder.isdigit() else -1
    _claim(fd)
    _held[path] = fd
    return None


def unwritable(folder: str | os.PathLike, e: OSError, moved_by: str) -> OSError:
    """The one-line error for a folder aer cannot write in, naming the setting that moves it."""
    return OSError(e.errno, f"{folder}: cannot write here ({os.strerror(e.errno)}): {moved_by}")


def writable_dir(folder: str | os.PathLike, moved_by: str) -> Path:
    """`folder`, made if missing; an OSError naming `moved_by` (the setting that moves it) when it cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as e:
        raise unwritable(folder, e, moved_by) from None
    return folder

"""Fetch the AudioSet embedding release into a data root, resumably (files and layout: aer.data.release).

Each file is downloaded into ``NAME.part`` with HTTP range requests (a retry resumes where the
last attempt stopped), checked for its size, renamed into place and recorded in SHA256SUMS; the
archive is then unpacked by aer.data.extract.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from aer.data.extract import extract as _extract_archive  # the download() argument `extract` shadows it
from aer.data.release import (
    ARCHIVE,
    CHECKSUMS,
    DEFAULT_BASE_URL,
    FILES,
    SPLITS,
    DownloadError,
    say,
)
from aer.errors import one_line
from aer.files import atomic_write_text, disk_full, is_disk_full

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_SUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


class _Transient(Exception):
    """A failure worth retrying: whatever is in the .part file is still a valid prefix."""


# --------------------------------------------------------------------------- download


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "aer-download/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise  # the caller decides by status code
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Transient(one_line(getattr(exc, "reason", exc))) from exc


def _fetch_once(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """One HTTP request that extends ``part``; returns only once the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            complete = _complete_after(exc, url, part, offset)
        if not complete:
            _fetch_once(url, part, timeout=timeout, progress=progress)
        return
    with response:
        body = _body_range(response, url, offset)
        if body is not None:
            _save_body(response, part, *body, progress=progress)
    if body is None:
        # Splicing a range we did not ask for would corrupt the file silently: start over.
        part.unlink()
        _fetch_once(url, part, timeout=timeout, progress=progress)
        return
    _check_size(part, body[2])


def _complete_after(exc: urllib.error.HTTPError, url: str, part: Path, offset: int) -> bool:
    """What an HTTP error answer means for ``part``: True when it holds the whole file already,
    False when it was removed to start over; else raises, retryable (_Transient) or not."""
    if exc.code == 416 and offset:
        # The answer carries "Content-Range: bytes */<size of the remote file>".
        total = _int_or_none(exc.headers.get("Content-Range", "").rpartition("/")[2])
        if total == offset:
            return True  # an earlier run got every byte but stopped before the rename
        # Otherwise the .part cannot be a prefix of the remote file: start over.
        part.unlink()
        return False
    if exc.code in (408, 429) or exc.code >= 500:
        raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
    raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc


def _body_range(response, url: str, offset: int) -> tuple[int, str, int | None] | None:
    """Where the response's body goes: (offset in ``part``, file mode, the file's total size if
    announced); None when it is another range than the one asked for."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != offset:
            if not offset:
                raise DownloadError(f"{url}: partial content (HTTP 206) to a plain request")
            return None
        return offset, "ab", None if match.group(3) == "*" else int(match.group(3))
    # A 200 to a range request means the server ignores ranges: the body is
    # the whole file, so the old prefix must go.
    return 0, "wb", _int_or_none(response.headers.get("Content-Length"))


def _save_body(response, part: Path, offset: int, mode: str, total: int | None, *, progress: bool) -> None:
    bar = tqdm(
        total=total,
        initial=offset,
        desc=part.name.removesuffix(".part"),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not (progress and sys.stderr.isatty()),
    )
    with bar, open(part, mode) as out:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(f"transfer interrupted: {one_line(exc)}") from exc
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as exc:  # the .part is kept: a rerun resumes once there is space
                raise (disk_full(part, exc) if is_disk_full(exc) else exc) from None
            bar.update(len(chunk))


def _check_size(part: Path, total: int | None) -> None:
    size = part.stat().st_size
    # http.client returns EOF instead of raising when a connection drops short of
    # Content-Length, so the size comparison is what detects a cut transfer.
    if total is not None and size != total:
        message = f"{part.name.removesuffix('.part')}: size mismatch, have {size} bytes, server announced {total}"
        if size < total:
            raise _Transient(message)
        raise DownloadError(message)


def _fetch(url: str, dest: Path, *, retries: int, backoff: float, timeout: float, progress: bool) -> None:
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            say(f"{dest.name}: {last}; retry {attempt}/{retries} in {delay:g}s")
            time.sleep(delay)
        try:
            _fetch_once(url, part, timeout=timeout, progress=progress)
            break
        except _Transient as exc:
            last = exc
    else:
        kept = f"; {part.name} kept, rerun to resume" if part.exists() else ""
        raise DownloadError(f"{dest.name}: giving up after {retries + 1} attempt(s) at {url}: {last}{kept}")
    os.replace(part, dest)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_sums(path: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            match = _SUM_LINE.fullmatch(line.strip())
            if match:
                sums[match.group(2)] = match.group(1).lower()
    return sums


def _write_sums(root: Path, sums: dict[str, str]) -> None:
    # Atomic so an interrupted run never leaves a truncated SHA256SUMS behind.
    atomic_write_text(root / CHECKSUMS, "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))


def _is_extracted(root: Path) -> bool:
    return all((root / split).is_dir() for split in SPLITS)


def download(
    root: str | os.PathLike,
    *,
    base_url: str = DEFAULT_BASE_URL,
    files: Iterable[str] | None = None,
    extract: bool = True,
    retries: int = 3,
    progress: bool = True,
    force: bool = False,
    keep_archive: bool = True,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> dict:
    """Download ``files`` (default: all of :data:`FILES`) into ``root`` and unpack the archive.

    A file already in place (no ``.part`` beside it) is skipped unless ``force``; so is
    the archive once the split folders exist. Returns ``{"root": Path, "files": {name:
    {"path", "status" ("downloaded"|"skipped"), "sha256"}}, "extracted": [Path, ...]}``.
    Raises :class:`DownloadError` with a one-line message on failure.
    """
    root = Path(root).expanduser()
    names = _names(files)
    if retries < 0:
        raise ValueError("retries must be >= 0")
    root.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    sums = _read_sums(root / CHECKSUMS)

    report: dict[str, dict] = {}
    for name in names:
        status = _get(root, name, urllib.parse.urljoin(base, FILES[name]), sums, force=force,
                      unpacked=name == ARCHIVE and extract and _is_extracted(root),
                      retries=retries, backoff=backoff, timeout=timeout, progress=progress)
        report[name] = {"path": root / name, "status": status, "sha256": sums.get(name)}

    extracted: list[Path] = []
    if extract and ARCHIVE in report:
        if report[ARCHIVE]["status"] == "skipped" and _is_extracted(root):
            say(f"skip extraction: {', '.join(SPLITS)} already in {root}")
        else:
            say(f"extracting {ARCHIVE} into {root}")
            extracted = _extract_archive(root / ARCHIVE, root, keep_archive=keep_archive)
    return {"root": root, "files": report, "extracted": extracted}


def _names(files: Iterable[str] | None) -> list[str]:
    names = list(FILES) if files is None else list(dict.fromkeys(files))
    unknown = [name for name in names if name not in FILES]
    if unknown:
        raise DownloadError(f"unknown file(s) {', '.join(unknown)}; known: {', '.join(FILES)}")
    return names


def _get(root: Path, name: str, url: str, sums: dict[str, str], *, force: bool, unpacked: bool,
         **fetch_kw) -> str:
    """Fetches ``root/name`` unless it is in place, or ``unpacked`` (the archive, whose contents
    are); keeps SHA256SUMS in step. Returns "downloaded" or "skipped"."""
    dest = root / name
    part = root / (name + ".part")
    if force:
        part.unlink(missing_ok=True)
    if not force and not part.exists() and (dest.exists() or unpacked):
        say(f"skip {name}: already {'downloaded' if dest.exists() else 'extracted'}")
        if dest.exists() and name not in sums:
            sums[name] = _sha256(dest)
            _write_sums(root, sums)
        return "skipped"
    say(f"{'resuming' if part.exists() else 'downloading'} {name} from {url}")
    _fetch(url, dest, **fetch_kw)
    sums[name] = _sha256(dest)
    _write_sums(root, sums)
    return "downloaded"

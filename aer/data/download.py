"""Fetch the AudioSet embedding release into a data root.

``python -m aer.data download ROOT`` (or :func:`download`) leaves::

    ROOT/class_labels_indices.csv
    ROOT/balanced_train_segments.csv, unbalanced_train_segments.csv, eval_segments.csv
    ROOT/bal_train/*.tfrecord, ROOT/eval/*.tfrecord, ROOT/unbal_train/*.tfrecord
    ROOT/features.tar.gz     (kept unless keep_archive=False)
    ROOT/SHA256SUMS          (``sha256sum -c`` format, one line per downloaded file)

The tarball stores the splits under ``audioset_v1_embeddings/``. Extraction drops
that prefix so the split folders sit directly in ROOT, where the rest of ``aer``
looks for them; any other top-level entry of the archive lands in ROOT unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from aer.utils import atomic_write_text, disk_full, is_disk_full, remove_stale_partials

# HTTPS rather than the bucket's plain-HTTP URL: Google publishes no checksums for
# this release, so transport integrity is the only guarantee the bytes are genuine.
DEFAULT_BASE_URL = "https://storage.googleapis.com/us_audioset/youtube_corpus/v1/"

ARCHIVE = "features.tar.gz"
ARCHIVE_PREFIX = "audioset_v1_embeddings"
SPLITS = ("bal_train", "eval", "unbal_train")
CHECKSUMS = "SHA256SUMS"

# Local file name -> path relative to the base URL. CSVs first: they are small,
# so a wrong base URL or a dead network shows up before the 2.4 GB transfer.
FILES = {
    "class_labels_indices.csv": "csv/class_labels_indices.csv",
    "balanced_train_segments.csv": "csv/balanced_train_segments.csv",
    "unbalanced_train_segments.csv": "csv/unbalanced_train_segments.csv",
    "eval_segments.csv": "csv/eval_segments.csv",
    ARCHIVE: "features/features.tar.gz",
}

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_SUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
# Names the archive must not be allowed to replace in ROOT.
_RESERVED = {CHECKSUMS, *FILES, *(name + ".part" for name in FILES)}
# Errors a damaged or non-tar archive raises from tarfile / gzip.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error)


class DownloadError(Exception):
    """A download or extraction failed; the message is one line naming the file or URL."""


class _Transient(Exception):
    """A failure worth retrying: whatever is in the .part file is still a valid prefix."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
        raise _Transient(_one_line(getattr(exc, "reason", exc))) from exc


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
                raise _Transient(f"transfer interrupted: {_one_line(exc)}") from exc
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
            _say(f"{dest.name}: {last}; retry {attempt}/{retries} in {delay:g}s")
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
            _say(f"skip extraction: {', '.join(SPLITS)} already in {root}")
        else:
            _say(f"extracting {ARCHIVE} into {root}")
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
        _say(f"skip {name}: already {'downloaded' if dest.exists() else 'extracted'}")
        if dest.exists() and name not in sums:
            sums[name] = _sha256(dest)
            _write_sums(root, sums)
        return "skipped"
    _say(f"{'resuming' if part.exists() else 'downloading'} {name} from {url}")
    _fetch(url, dest, **fetch_kw)
    sums[name] = _sha256(dest)
    _write_sums(root, sums)
    return "downloaded"


# --------------------------------------------------------------------------- extract


def _refuse(label: str, member: tarfile.TarInfo, reason: str) -> DownloadError:
    return DownloadError(f"{label}: refusing to extract member {member.name!r}: {reason}")


def _check_members(members: list[tarfile.TarInfo], label: str) -> None:
    """Reject the whole archive if any member could land outside the extraction dir.

    Judged on the member list alone, before anything is written. Paths may not be
    absolute, contain ``..`` or run through a symlink of the archive, so the lexical
    path is the real one; links must resolve inside by that same reasoning.
    """
    symlinks = {PurePosixPath(m.name).parts for m in members if m.issym()}

    def through_symlink(parts: tuple[str, ...]) -> bool:
        return any(parts[:i] in symlinks for i in range(1, len(parts)))

    for member in members:
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise _refuse(label, member, "only files, directories and links are allowed")
        path = PurePosixPath(member.name)
        if path.is_absolute():
            raise _refuse(label, member, "absolute path")
        if ".." in path.parts:
            raise _refuse(label, member, "path leaves the extraction directory")
        if not path.parts and not member.isdir():
            raise _refuse(label, member, "empty name")
        if through_symlink(path.parts):
            raise _refuse(label, member, "path runs through a symlink in the archive")
        top = path.parts[1:2] if path.parts[:1] == (ARCHIVE_PREFIX,) else path.parts[:1]
        if top and top[0] in _RESERVED:
            raise _refuse(label, member, f"would replace {top[0]} in the data root")

        if member.issym() or member.islnk():
            target = PurePosixPath(member.linkname)
            if not member.linkname or target.is_absolute():
                raise _refuse(label, member, f"link to absolute or empty path {member.linkname!r}")
            # Symlinks are relative to their directory, hard links to the archive root.
            resolved = list(path.parts[:-1]) if member.issym() else []
            for component in target.parts:
                # Stepping past (even "..") a symlink makes the lexical walk meaningless.
                if tuple(resolved) in symlinks:
                    raise _refuse(label, member, "link runs through a symlink in the archive")
                if component != "..":
                    resolved.append(component)
                elif resolved:
                    resolved.pop()
                else:
                    raise _refuse(label, member, f"link points outside: {member.linkname!r}")


def _place(staging: Path, root: Path) -> list[Path]:
    """Move the extracted tree from ``staging`` into ``root``, splits promoted to top level."""
    sources: list[Path] = []
    for entry in sorted(staging.iterdir()):
        if entry.name == ARCHIVE_PREFIX and entry.is_dir() and not entry.is_symlink():
            sources.extend(sorted(entry.iterdir()))
        else:
            sources.append(entry)
    # Previous versions are moved aside (same filesystem, so atomic) and deleted only
    # once every new entry is in place.
    trash = Path(tempfile.mkdtemp(prefix=f".replaced.{os.getpid()}.", suffix=".partial", dir=root))
    try:
        placed = []
        for i, src in enumerate(sources):
            dst = root / src.name
            if dst.is_symlink() or dst.exists():
                os.replace(dst, trash / str(i))
            os.replace(src, dst)
            placed.append(dst)
        return placed
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def extract(archive: str | os.PathLike, root: str | os.PathLike, *, keep_archive: bool = True) -> list[Path]:
    """Safely unpack ``archive`` into ``root``; returns the top-level paths created there.

    Every member is checked before anything is written (which costs one extra
    decompression pass); an unsafe one raises :class:`DownloadError` naming it.
    Unpacking goes to a temporary folder inside ``root`` that is moved into place
    only on success, so a failure leaves no partial tree. The
    ``audioset_v1_embeddings/`` prefix is dropped (see the module docstring).
    """
    archive, root = Path(archive), Path(root)
    try:
        tar = tarfile.open(archive, "r:*")
    except _ARCHIVE_ERRORS as exc:
        raise DownloadError(f"{archive.name}: not a readable tar archive: {_one_line(exc)}") from exc
    with tar:
        try:
            members = tar.getmembers()
        except _ARCHIVE_ERRORS as exc:
            raise DownloadError(f"{archive.name}: damaged archive: {_one_line(exc)}") from exc
        _check_members(members, archive.name)

        root.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(root)  # the staging folders of killed extractions
        staging = Path(tempfile.mkdtemp(prefix=f".extract.{os.getpid()}.", suffix=".partial", dir=root))
        try:
            # tarfile's own "data" filter (3.11.4+) is a second, independent guard that
            # checks real paths on disk as it goes.
            guard = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            try:
                tar.extractall(staging, members=members, **guard)
            except _ARCHIVE_ERRORS as exc:
                raise DownloadError(f"{archive.name}: extraction failed: {_one_line(exc)}") from exc
            except OSError as exc:
                raise (disk_full(staging, exc) if is_disk_full(exc) else exc) from None
            placed = _place(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    return placed


# The download() parameter named ``extract`` shadows the function inside it.
_extract_archive = extract


# --------------------------------------------------------------------------- CLI


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``download`` subcommand's arguments to ``parser``."""
    parser.add_argument("root", type=Path, metavar="ROOT", help="data root to fill")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, metavar="URL",
                        help="where the csv/ and features/ folders live (default: %(default)s)")
    parser.add_argument("--no-extract", dest="extract", action="store_false",
                        help=f"download only, leave {ARCHIVE} packed")
    parser.add_argument("--retries", type=_non_negative_int, default=3, metavar="N",
                        help="retries per file after a network error, resuming each time (default: %(default)s)")
    parser.add_argument("--only", dest="files", action="append", choices=list(FILES), metavar="NAME",
                        help=f"fetch only this file (repeatable); one of: {', '.join(FILES)}")
    parser.add_argument("--force", action="store_true", help="download again even if present")
    parser.add_argument("--delete-archive", dest="keep_archive", action="store_false",
                        help=f"remove {ARCHIVE} after a successful extraction")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    """Run a parsed ``download`` command; returns the exit code, errors as one line on stderr."""
    try:
        result = download(
            args.root,
            base_url=args.base_url,
            files=args.files,
            extract=args.extract,
            retries=args.retries,
            progress=args.progress,
            force=args.force,
            keep_archive=args.keep_archive,
        )
    except (DownloadError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    statuses = [entry["status"] for entry in result["files"].values()]
    print(f"{result['root']}: {statuses.count('downloaded')} downloaded, {statuses.count('skipped')} skipped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aer.data download",
                                     description="Fetch the AudioSet embeddings and CSVs.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Unpack the release's features.tar.gz into a data root, safely and atomically.

The member list is checked before anything is written (no absolute paths, no ``..``, no link
out of the root, nothing replacing the release's own files); the archive is unpacked into a
staging folder beside the root and its entries are then renamed into place, replacing earlier
ones only once the new ones are complete.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from aer.data.release import ARCHIVE_PREFIX, RESERVED, DownloadError
from aer.errors import one_line
from aer.files import disk_full, is_disk_full, remove_stale_partials

# Errors a damaged or non-tar archive raises from tarfile / gzip.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error)


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
        if top and top[0] in RESERVED:
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
        raise DownloadError(f"{archive.name}: not a readable tar archive: {one_line(exc)}") from exc
    with tar:
        try:
            members = tar.getmembers()
        except _ARCHIVE_ERRORS as exc:
            raise DownloadError(f"{archive.name}: damaged archive: {one_line(exc)}") from exc
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
                raise DownloadError(f"{archive.name}: extraction failed: {one_line(exc)}") from exc
            except OSError as exc:
                raise (disk_full(staging, exc) if is_disk_full(exc) else exc) from None
            placed = _place(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    return placed

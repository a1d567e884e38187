"""aer.data.download against a throwaway HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import random
import re
import socket
import sys
import tarfile
import threading
import urllib.parse
from pathlib import Path

import pytest

from aer.cli import data as data_main
from aer.data import download as dl
from aer.data import release
from aer.data.extract import extract

_RNG = random.Random(0)
# Incompressible payloads, so the archive is large enough to be cut mid-transfer.
TFRECORDS = {
    "audioset_v1_embeddings/bal_train/ab.tfrecord": _RNG.randbytes(40_000),
    "audioset_v1_embeddings/eval/cd.tfrecord": _RNG.randbytes(30_000),
    "audioset_v1_embeddings/unbal_train/ef.tfrecord": _RNG.randbytes(50_000),
}
CSVS = {
    "class_labels_indices.csv": b'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech"\n',
    "balanced_train_segments.csv":
        b"# YTID, start_seconds, end_seconds, positive_labels\n--PJHxphWEs, 30.000, 40.000, \"/m/09x0r\"\n",
    "unbalanced_train_segments.csv":
        b"# YTID, start_seconds, end_seconds, positive_labels\n---1_cCGK4M, 0.000, 10.000, \"/m/05zppz\"\n",
    "eval_segments.csv":
        b"# YTID, start_seconds, end_seconds, positive_labels\n--4gqARaEJE, 0.000, 10.000, \"/m/09x0r\"\n",
}


def _tar_gz(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


GOOD_ENTRIES = tuple(_file(name, data) for name, data in TFRECORDS.items())
ARCHIVE_BYTES = _tar_gz(*GOOD_ENTRIES)


class _State:
    """What the test server serves and what it saw; shared with the handler threads."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_once: dict[str, int] = {}  # path -> bytes sent before dropping the next response
        self.cut_always: dict[str, int] = {}
        self.ignore_range = False
        self.lock = threading.Lock()
        self.url = ""

    def serve(self, name: str, data: bytes) -> None:
        self.files["/v1/" + release.FILES[name]] = data

    def serve_all(self, archive: bytes = ARCHIVE_BYTES) -> None:
        for name, data in CSVS.items():
            self.serve(name, data)
        self.serve(release.ARCHIVE, archive)

    def requests_for(self, name: str) -> list[str | None]:
        """Range headers of the requests for ``name`` (None when there was none)."""
        with self.lock:
            return [rng for path, rng in self.requests if path == "/v1/" + release.FILES[name]]


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # bounds every socket operation of a handler thread

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        state: _State = self.server.state
        path = urllib.parse.urlsplit(self.path).path
        rng = self.headers.get("Range")
        with state.lock:
            state.requests.append((path, rng))
            cut = state.cut_once.pop(path, state.cut_always.get(path))
        data = state.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is None:
            self.wfile.write(body)
            return
        # Announce the full length, send part of it, then drop the connection.
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def server():
    state = _State()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1/"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _get(state: _State, root: Path, **kwargs) -> dict:
    kwargs = {"base_url": state.url, "progress": False, "backoff": 0, "timeout": 5, **kwargs}
    return dl.download(root, **kwargs)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".extract.", ".replaced.", ".SHA256SUMS.")))


def test_full_download_extracts_and_records_sha256(server, tmp_path):
    server.serve_all()
    root = tmp_path / "root"

    result = _get(server, root)

    expected = {**CSVS, release.ARCHIVE: ARCHIVE_BYTES}
    for name, data in expected.items():
        assert (root / name).read_bytes() == data
        assert result["files"][name]["status"] == "downloaded"
        assert result["files"][name]["sha256"] == _sha(data)
    for member, data in TFRECORDS.items():
        split, fname = member.split("/")[1:]
        assert (root / split / fname).read_bytes() == data
    assert sorted(p.name for p in result["extracted"]) == sorted(release.SPLITS)
    assert not (root / release.ARCHIVE_PREFIX).exists()
    assert not list(root.glob("*.part")) and not _leftovers(root)
    assert (root / "SHA256SUMS").read_text() == "".join(
        f"{_sha(data)}  {name}\n" for name, data in sorted(expected.items())
    )


def test_cut_transfer_is_resumed_with_range(server, tmp_path):
    server.serve_all()
    cut = len(ARCHIVE_BYTES) // 2
    server.cut_once["/v1/" + release.FILES[release.ARCHIVE]] = cut

    _get(server, tmp_path, files=[release.ARCHIVE], extract=False, retries=2)

    assert (tmp_path / release.ARCHIVE).read_bytes() == ARCHIVE_BYTES
    assert server.requests_for(release.ARCHIVE) == [None, f"bytes={cut}-"]
    assert not (tmp_path / (release.ARCHIVE + ".part")).exists()


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path, monkeypatch, capsys):
    server.serve_all()
    cut = len(ARCHIVE_BYTES) // 3
    server.cut_once["/v1/" + release.FILES[release.ARCHIVE]] = cut

    with pytest.raises(release.DownloadError, match="rerun to resume"):
        _get(server, tmp_path, files=[release.ARCHIVE], extract=False, retries=0)
    part = tmp_path / (release.ARCHIVE + ".part")
    assert part.read_bytes() == ARCHIVE_BYTES[:cut]
    assert not (tmp_path / release.ARCHIVE).exists()

    # With a (pretend) terminal the bar is drawn, starting from the resumed offset.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _get(server, tmp_path, files=[release.ARCHIVE], extract=False, retries=0, progress=True)
    assert (tmp_path / release.ARCHIVE).read_bytes() == ARCHIVE_BYTES
    assert server.requests_for(release.ARCHIVE)[-1] == f"bytes={cut}-"
    err = capsys.readouterr().err
    assert "resuming features.tar.gz" in err and "100%" in err


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.serve_all()
    server.ignore_range = True
    stale = b"stale bytes that must not survive"
    (tmp_path / "eval_segments.csv.part").write_bytes(stale)

    _get(server, tmp_path, files=["eval_segments.csv"])

    assert (tmp_path / "eval_segments.csv").read_bytes() == CSVS["eval_segments.csv"]
    assert server.requests_for("eval_segments.csv") == [f"bytes={len(stale)}-"]


def test_complete_part_is_finished_when_server_answers_416(server, tmp_path):
    server.serve_all()
    data = CSVS["class_labels_indices.csv"]
    (tmp_path / "class_labels_indices.csv.part").write_bytes(data)

    _get(server, tmp_path, files=["class_labels_indices.csv"])

    assert (tmp_path / "class_labels_indices.csv").read_bytes() == data
    assert server.requests_for("class_labels_indices.csv") == [f"bytes={len(data)}-"]


def test_second_call_skips_and_force_downloads_again(server, tmp_path, capsys):
    server.serve_all()
    _get(server, tmp_path)
    first = len(server.requests)
    sums = (tmp_path / "SHA256SUMS").read_text()
    capsys.readouterr()

    result = _get(server, tmp_path)

    assert len(server.requests) == first
    assert {entry["status"] for entry in result["files"].values()} == {"skipped"}
    assert result["extracted"] == []
    assert (tmp_path / "SHA256SUMS").read_text() == sums
    err = capsys.readouterr().err
    assert "skip features.tar.gz: already downloaded" in err and "skip extraction" in err

    result = _get(server, tmp_path, files=["eval_segments.csv"], force=True)
    assert result["files"]["eval_segments.csv"]["status"] == "downloaded"
    assert len(server.requests) == first + 1


def test_deleted_archive_is_not_fetched_again_once_extracted(server, tmp_path):
    server.serve_all()
    _get(server, tmp_path, keep_archive=False)
    assert not (tmp_path / release.ARCHIVE).exists()
    assert (tmp_path / "bal_train" / "ab.tfrecord").exists()

    result = _get(server, tmp_path)

    assert len(server.requests_for(release.ARCHIVE)) == 1
    assert result["files"][release.ARCHIVE]["status"] == "skipped"


def test_size_mismatch_names_file_and_both_sizes(server, tmp_path):
    server.serve_all()
    server.ignore_range = True
    data = CSVS["eval_segments.csv"]
    server.cut_always["/v1/" + release.FILES["eval_segments.csv"]] = 20

    with pytest.raises(release.DownloadError) as info:
        _get(server, tmp_path, files=["eval_segments.csv"], retries=1)

    message = str(info.value)
    assert "eval_segments.csv" in message and "20" in message and str(len(data)) in message
    assert "\n" not in message
    assert len(server.requests_for("eval_segments.csv")) == 2
    assert (tmp_path / "eval_segments.csv.part").read_bytes() == data[:20]
    assert not (tmp_path / "eval_segments.csv").exists()


def test_http_error_is_reported_without_retrying(server, tmp_path):
    with pytest.raises(release.DownloadError, match=r"HTTP 404") as info:
        _get(server, tmp_path, files=["eval_segments.csv"], retries=3)
    assert server.url + "csv/eval_segments.csv" in str(info.value)
    assert len(server.requests) == 1


@pytest.fixture
def no_extraction(monkeypatch):
    """Fail the test if tarfile gets to write anything: refusal must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("extractall called on an archive that should be refused")

    monkeypatch.setattr(tarfile.TarFile, "extractall", forbidden)


def test_archive_with_parent_member_is_refused(server, tmp_path, no_extraction):
    # The bad member comes last, so extracting member by member would already have
    # written the good ones before noticing.
    server.serve_all(archive=_tar_gz(*GOOD_ENTRIES, _file("../evil", b"pwned")))
    root = tmp_path / "root"

    with pytest.raises(release.DownloadError, match=re.escape("'../evil'")):
        _get(server, root)

    assert not (tmp_path / "evil").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert not any((root / split).exists() for split in release.SPLITS)
    assert not (root / release.ARCHIVE_PREFIX).exists() and not _leftovers(root)
    assert (root / release.ARCHIVE).exists()  # kept for inspection


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda out: _file(str(out / "abs-evil"), b"x"), id="absolute-path"),
        pytest.param(lambda out: _file("audioset_v1_embeddings/../../evil", b"x"), id="nested-dotdot"),
        pytest.param(lambda out: _special("audioset_v1_embeddings/eval/l", tarfile.SYMTYPE, str(out)),
                     id="symlink-absolute"),
        pytest.param(lambda out: _special("audioset_v1_embeddings/l", tarfile.SYMTYPE, "../../out"), id="symlink-up"),
        pytest.param(lambda out: _special("audioset_v1_embeddings/h", tarfile.LNKTYPE, "../out/x"), id="hardlink-up"),
        pytest.param(lambda out: _special("audioset_v1_embeddings/dev", tarfile.CHRTYPE), id="char-device"),
        pytest.param(lambda out: _special("audioset_v1_embeddings/fifo", tarfile.FIFOTYPE), id="fifo"),
        pytest.param(lambda out: _file("audioset_v1_embeddings/SHA256SUMS", b"x"), id="overwrites-checksums"),
    ],
)
def test_unsafe_member_is_refused(tmp_path, bad, no_extraction):
    root, out = tmp_path / "root", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    entry = bad(out)
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar_gz(*GOOD_ENTRIES, entry))
    with tarfile.open(archive) as tar:
        assert entry[0].name in tar.getnames()  # tarfile wrote the hostile name unchanged

    with pytest.raises(release.DownloadError, match=re.escape(repr(entry[0].name))):
        extract(archive, root)

    assert list(root.iterdir()) == [] and list(out.iterdir()) == []


def test_symlink_escaping_through_another_symlink_is_refused(tmp_path, no_extraction):
    # Lexically "d/e/a/../.." is ROOT/d, but d/e/a is ROOT itself, so "up" is ROOT/../..
    entries = (
        _special("d", tarfile.DIRTYPE),
        _special("d/e", tarfile.DIRTYPE),
        _special("d/e/a", tarfile.SYMTYPE, "../.."),
        _special("up", tarfile.SYMTYPE, "d/e/a/../.."),
    )
    archive = tmp_path / "chain.tar.gz"
    archive.write_bytes(_tar_gz(*entries))
    (tmp_path / "root").mkdir()
    with pytest.raises(release.DownloadError, match="'up'"):
        extract(archive, tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []


def test_symlink_inside_root_is_allowed(tmp_path):
    entries = (*GOOD_ENTRIES, _special("audioset_v1_embeddings/eval/latest.tfrecord", tarfile.SYMTYPE, "cd.tfrecord"))
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_tar_gz(*entries))
    root = tmp_path / "root"

    extract(archive, root, keep_archive=False)

    assert (root / "eval" / "latest.tfrecord").read_bytes() == TFRECORDS["audioset_v1_embeddings/eval/cd.tfrecord"]
    assert not archive.exists()


def test_truncated_archive_leaves_nothing(tmp_path):
    archive = tmp_path / "short.tar.gz"
    archive.write_bytes(ARCHIVE_BYTES[: len(ARCHIVE_BYTES) // 2])
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(release.DownloadError, match="short.tar.gz"):
        extract(archive, root)
    assert list(root.iterdir()) == []


def test_cli_as_subcommand(server, tmp_path, capsys):
    server.serve_all()
    assert data_main(["download", str(tmp_path), "--base-url", server.url, "--no-extract",
                      "--retries", "1", "--no-progress"]) == 0
    assert (tmp_path / release.ARCHIVE).read_bytes() == ARCHIVE_BYTES
    assert not (tmp_path / "bal_train").exists()
    assert "5 downloaded, 0 skipped" in capsys.readouterr().out

    server.files.clear()
    code = data_main(["download", str(tmp_path / "other"), "--base-url", server.url, "--retries", "0",
                      "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: ") and "HTTP 404" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_full_disk_is_one_line_naming_the_file_and_the_part_is_kept(server, tmp_path):
    """Disk full mid-transfer (a file-size limit on the child): one line, exit 1, nothing at the final path."""
    import subprocess
    import sys

    from conftest import ROOT, disk_full_after

    server.serve_all()
    root = tmp_path / "root"
    r = subprocess.run([sys.executable, "-m", "aer.data", "download", str(root), "--base-url", server.url,
                        "--only", release.ARCHIVE, "--retries", "0", "--no-progress"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, preexec_fn=disk_full_after(20_000))
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") <= 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no space left" in last and f"{release.ARCHIVE}.part" in last, last
    assert not (root / release.ARCHIVE).exists() and (root / f"{release.ARCHIVE}.part").stat().st_size <= 20_000

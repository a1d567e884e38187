"""A seeded, time-bounded mutation loop over real shards: the converter succeeds with correct
records, or stops with the data layer's one-line ShardError naming the shard and the record.

Never a hang, never another exception type, never a partial file at the output path (a valid
file already there is left byte for byte). Bit flips, truncations and splices of the raw bytes
exercise the framing and both CRCs; the same mutations applied to one payload and re-framed with
valid CRCs exercise the record parser, checked against protobuf's own reading of the bytes.

AER_FUZZ_SECONDS (default 15) sets the time budget, AER_FUZZ_SEED (default 0) the seed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest

from aer.data.convert import convert, partial_path
from aer.data.demo import generate
from aer.data.proto import SequenceExample
from aer.data.tfrecord import ShardError, frame
from conftest import ROOT, SHARED, independent_records, read_h5, wire_parse

pytestmark = pytest.mark.slow  # real shards, time-bounded; conversion workers and CLI runs

SECONDS = float(os.environ.get("AER_FUZZ_SECONDS", "15"))
SEED = int(os.environ.get("AER_FUZZ_SEED", "0"))
CALL_TIMEOUT = 20  # seconds for one conversion of a few shards: anything near it is a hang
CLI_RUNS = 4


class Hang(Exception):
    pass


def _alarm(signum, frame_):
    raise Hang()


# ---------------------------------------------------------------- the corpus and the oracles
def _pick_real() -> list[Path]:
    shards = sorted((SHARED / "bal_train").glob("*.tfrecord"))
    by_count = sorted(shards[::50], key=lambda s: (-len(independent_records(s.read_bytes())), s.name))[:5]
    short = next(s for s in shards
                 if any(len(wire_parse(p)["frames"]) < 10 for p in independent_records(s.read_bytes())))
    return sorted(set(by_count) | {short})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, bytes]:
    if SHARED.is_dir():
        return {s.name: s.read_bytes() for s in _pick_real()}
    warnings.warn(f"fuzzing demo shards: the real bal_train split is not at {SHARED}", UserWarning, stacklevel=2)
    root = tmp_path_factory.mktemp("fuzzdemo")
    generate(root, clips=48, eval_clips=0, seed=4)
    payloads = [p for s in sorted((root / "bal_train").glob("*.tfrecord")) for p in independent_records(s.read_bytes())]
    return {f"s{i}.tfrecord": b"".join(frame(p) for p in payloads[i::6]) for i in range(6)}


def _row(vid: str, frames: list[bytes], labels, start: float, end: float) -> tuple:
    blob = b"".join(frames)
    return (vid, len(frames), blob + bytes(1280 - len(blob)), tuple(sorted(set(int(x) for x in labels))),
            np.float32(start).tobytes(), np.float32(end).tobytes())


def intact_row(payload: bytes) -> tuple:
    c = wire_parse(payload)
    return _row(c["video_id"], c["frames"], c["labels"], c["start"], c["end"])


def protobuf_row(payload: bytes) -> tuple | None:
    """The clip protobuf reads from these bytes, or None where it is not a valid AudioSet clip.

    The rules, written out independently of aer.data.records: a UTF-8 video_id bytes_list of one
    value; labels an int64_list (possibly empty) within 0..526; optional float_list times; an
    audio_embedding of 1..10 frames, each a bytes_list of one 128-byte value.
    """
    try:
        ex = SequenceExample.FromString(payload)
    except Exception:  # noqa: BLE001 — protobuf's own verdict: not parseable
        return None
    ctx = ex.context.feature
    if "video_id" not in ctx or ctx["video_id"].WhichOneof("kind") != "bytes_list":
        return None
    vid = list(ctx["video_id"].bytes_list.value)
    if len(vid) != 1:
        return None
    try:
        vid = vid[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "labels" not in ctx or ctx["labels"].WhichOneof("kind") != "int64_list":
        return None
    labels = list(ctx["labels"].int64_list.value)
    if any(not 0 <= x < 527 for x in labels):
        return None
    times = []
    for key in ("start_time_seconds", "end_time_seconds"):
        if key in ctx:
            if ctx[key].WhichOneof("kind") != "float_list":
                return None
            v = ctx[key].float_list.value
            times.append(v[0] if len(v) else float("nan"))
        else:
            times.append(float("nan"))
    lists = ex.feature_lists.feature_list
    if "audio_embedding" not in lists:
        return None
    frames = []
    for f in lists["audio_embedding"].feature:
        if f.WhichOneof("kind") != "bytes_list" or len(f.bytes_list.value) != 1 or len(f.bytes_list.value[0]) != 128:
            return None
        frames.append(f.bytes_list.value[0])
    if not 1 <= len(frames) <= 10:
        return None
    return _row(vid, frames, labels, *times)


def output_rows(out: Path) -> list[tuple]:
    d = read_h5(out)
    return [_row(v, [d["features"][i, t].tobytes() for t in range(d["lengths"][i])], np.flatnonzero(d["labels"][i]),
                 d["start_time"][i], d["end_time"][i]) + (d["features"][i].tobytes(),)
            for i, v in enumerate(d["video_id"])]


# ---------------------------------------------------------------- mutations
def _boundaries(data: bytes) -> list[int]:
    """Start offsets of each record of an intact shard, and its end."""
    out, pos = [0], 0
    while pos < len(data):
        pos += 16 + int.from_bytes(data[pos:pos + 8], "little")
        out.append(pos)
    return out


def _mutate_bytes(rng: random.Random, data: bytes, donor: bytes) -> tuple[bytes, int, str]:
    """(mutated, offset of the first changed byte, kind); kind 'flip' changes bytes in place only."""
    kind = rng.choice(["flip", "flip", "truncate", "splice", "insert", "delete", "garbage"])
    if not data:
        return donor[:rng.randrange(1, len(donor))], 0, "splice"
    if kind == "flip":
        b = bytearray(data)
        offs = sorted(rng.sample(range(len(b)), k=min(len(b), rng.randint(1, 6))))
        for o in offs:
            b[o] ^= 1 << rng.randrange(8)
        return bytes(b), offs[0], kind
    if kind == "truncate":
        cut = rng.randrange(0, len(data))
        return data[:cut], cut, kind
    if kind == "splice":  # overwrite a range with bytes from elsewhere (this shard or another)
        src = rng.choice([data, donor])
        a = rng.randrange(len(data))
        n = rng.randint(1, 300)
        s = rng.randrange(max(1, len(src) - n))
        return data[:a] + src[s:s + n] + data[a + n:], a, kind
    if kind == "insert":
        a = rng.randrange(len(data) + 1)
        s = rng.randrange(len(donor))
        return data[:a] + donor[s:s + rng.randint(1, 200)] + data[a:], a, kind
    if kind == "delete":
        a = rng.randrange(len(data))
        return data[:a] + data[a + rng.randint(1, 200):], a, kind
    a = rng.randrange(len(data) + 1)
    return data[:a] + rng.randbytes(rng.randint(1, 64)) + data[a:], a, kind


# ---------------------------------------------------------------- one trial
class Trial:
    def __init__(self, rng: random.Random, corpus: dict[str, bytes], work: Path):
        self.rng, self.corpus = rng, corpus
        names = sorted(corpus)
        self.victim = rng.choice(names)
        self.reframed = rng.random() < 0.45
        self.mode = rng.choice(["error", "skip"])
        self.src = work / "src"
        shutil.rmtree(self.src, ignore_errors=True)
        self.src.mkdir()
        donor = corpus[rng.choice(names)]
        original = corpus[self.victim]
        if self.reframed:
            payloads = independent_records(original)
            self.index = rng.randrange(len(payloads))
            mutated, _, self.kind = _mutate_bytes(rng, payloads[self.index], independent_records(donor)[0])
            payloads[self.index] = mutated
            self.payloads = payloads
            data = b"".join(frame(p) for p in payloads)
        else:
            data, self.offset, self.kind = _mutate_bytes(rng, original, donor)
            bounds = _boundaries(original)
            self.index = max(i for i, b in enumerate(bounds) if b <= self.offset) if self.offset < len(original) \
                else len(bounds) - 1
        for name in names:
            (self.src / name).write_bytes(data if name == self.victim else corpus[name])

    def describe(self) -> str:
        how = "re-framed payload" if self.reframed else "raw bytes"
        return f"{self.kind} of {how} in {self.victim} (record {self.index}), on_bad_record={self.mode}"

    def check_success(self, rows: list[tuple], intact: dict[str, tuple], order: list[tuple[str, int, str]]) -> None:
        """The output holds correct records: all of them in error mode, the good ones in skip mode."""
        vid_rows = {r[0]: r for r in rows}
        for r in rows:
            assert r[6] == r[2], "padding past a clip's frames is not zero"
        if self.reframed:
            expect = []
            for name in sorted(self.corpus, key=os.fsencode):
                if name != self.victim:
                    expect += [intact_row(p) for p in independent_records(self.corpus[name])]
                else:
                    got = [protobuf_row(p) for p in self.payloads]
                    if self.mode == "error":
                        assert all(g is not None for g in got), "accepted a record that is not a valid clip"
                    expect += [g for g in got if g is not None]
            assert [r[:6] for r in rows] == expect
            return
        for r in rows:  # every record that made it is byte for byte a record of the corpus
            assert r[0] in intact, f"{r[0]}: a clip that is in no intact shard"
            assert r[:6] == intact[r[0]], f"{r[0]}: differs from the intact record"
        for name, i, vid in order:  # and nothing intact before the damage went missing
            if name != self.victim or i < self.index:
                assert vid in vid_rows, f"{name} record {i} ({vid}) lost"


def check_error(trial: Trial, err: ShardError) -> None:
    msg = str(err)
    assert "\n" not in msg
    if err.record is None:  # the only record-less error: nothing valid was left to write
        assert trial.mode == "skip" and msg.endswith("no valid clips in any shard"), msg
        return
    assert err.path == str(trial.src / trial.victim), f"blamed {err.path}, but {trial.victim} was mutated"
    assert msg.startswith(f"{err.path}: record {err.record}: ")
    if trial.reframed:
        assert err.record == trial.index
        assert protobuf_row(trial.payloads[trial.index]) is None, f"rejected a valid clip: {msg}"
    elif trial.kind == "flip" or trial.kind == "truncate":
        assert err.record == trial.index, msg
    else:
        assert err.record >= trial.index, msg


def test_fuzz_real_shards(corpus, tmp_path):
    rng = random.Random(SEED)
    intact = {}
    order = []
    for name in sorted(corpus, key=os.fsencode):
        for i, p in enumerate(independent_records(corpus[name])):
            row = intact_row(p)
            intact[row[0]] = row
            order.append((name, i, row[0]))
    # a valid file sits at the output path before every run: an error must leave it as it was
    template_src = tmp_path / "template_src"
    template_src.mkdir()
    for name, data in corpus.items():
        (template_src / name).write_bytes(data)
    template = tmp_path / "template.h5"
    convert(template_src, template, progress=False)
    before = template.read_bytes()
    out = tmp_path / "out" / "bal_train.h5"
    out.parent.mkdir()
    partial = partial_path(out)
    stats = {"ok": 0, "error": 0, "cli": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    t_end = time.monotonic() + SECONDS
    i = 0
    try:
        while time.monotonic() < t_end or i < 20:
            trial = Trial(rng, corpus, tmp_path)
            out.write_bytes(before)
            use_cli = stats["cli"] < CLI_RUNS and i % 25 == 7
            workers = 2 if i % 10 == 3 else 1
            where = f"iteration {i} (AER_FUZZ_SEED={SEED}): {trial.describe()}, workers={workers}"
            if use_cli:
                stats["cli"] += 1
                try:
                    r = subprocess.run([sys.executable, "-m", "aer.data", "convert", str(trial.src), str(out),
                                        "--on-bad-record", trial.mode, "--workers", str(workers)],
                                       cwd=ROOT, capture_output=True, text=True, timeout=60)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"{where}: the CLI hung")
                assert r.returncode in (0, 1), f"{where}: exit {r.returncode}\n{r.stderr}"
                assert "Traceback" not in r.stderr, f"{where}:\n{r.stderr}"
                if r.returncode == 1:
                    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), f"{where}: {r.stderr!r}"
                    line = r.stderr[len("error: "):].rstrip("\n")
                    path, rest = line.split(": record ", 1) if ": record " in line else (None, line)
                    err = ShardError(path, int(rest.split(":")[0]), rest.split(": ", 1)[1]) if path else \
                        ShardError(str(trial.src), None, "no valid clips in any shard")
                    _expect_error(trial, err, out, partial, before, where)
                    stats["error"] += 1
                else:
                    _expect_success(trial, out, partial, intact, order, where)
                    stats["ok"] += 1
            else:
                signal.setitimer(signal.ITIMER_REAL, CALL_TIMEOUT)
                try:
                    convert(trial.src, out, workers=workers, on_bad_record=trial.mode, progress=False)
                except Hang:
                    pytest.fail(f"{where}: no result after {CALL_TIMEOUT} s")
                except ShardError as e:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    _expect_error(trial, e, out, partial, before, where)
                    stats["error"] += 1
                except Exception:  # noqa: BLE001 — any other exception type is the bug being hunted
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    pytest.fail(f"{where}: {traceback.format_exc()}")
                else:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    _expect_success(trial, out, partial, intact, order, where)
                    stats["ok"] += 1
            i += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    print(f"fuzz: {i} iterations in {SECONDS:.0f} s, {stats}")
    assert stats["ok"] > 0 and stats["error"] > 0, stats
    assert stats["cli"] >= 1


def _expect_error(trial, err, out, partial, before, where):
    try:
        check_error(trial, err)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e} (error was: {err})") from None
    assert out.read_bytes() == before, f"{where}: the valid file at the output path changed after: {err}"
    assert not partial.exists(), f"{where}: a .partial file was left behind"


def _expect_success(trial, out, partial, intact, order, where):
    assert not partial.exists(), f"{where}: a .partial file was left behind"
    try:
        trial.check_success(output_rows(out), intact, order)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e}") from None

"""Synthetic shards in the exact release layout, with structure a tagger can learn.

Every class has a prototype direction in embedding space. "Stationary" classes add theirs to
every frame of a clip, so a flat FC finds them; "transient" classes add theirs to one or two
frames only, at a random position, which pooling over time or a recurrent model handles better.
Class frequencies are long-tailed and clips carry 1-4 labels, as in AudioSet. The set's ontology.json
is a made-up hierarchy over the classes (`demo_ontology`); the clips' labels do not follow it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import string
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from aer.data.ontology import ONTOLOGY_FILE
from aer.data.records import EMBED_DIM, MAX_FRAMES, NUM_CLASSES, Clip, serialize_clip
from aer.data.tfrecord import write_records
from aer.files import atomic_write_text, file_lock, remove_stale_partials, writable_dir

log = logging.getLogger(__name__)

_ID_CHARS = np.array(list(string.ascii_letters + string.digits + "-_"))
TRANSIENT_EVERY = 4  # every 4th class is transient
MARKER = "demo.json"
FAMILIES = 16  # demo_ontology: classes 0-15 head a family each; a multiple of TRANSIENT_EVERY


def _class_table(num_classes: int) -> list[tuple[int, str, str]]:
    return [(i, f"/t/demo{i:03d}", f"Demo {'transient' if i % TRANSIENT_EVERY == 3 else 'stationary'} {i}")
            for i in range(num_classes)]


def demo_ontology(num_classes: int) -> list[dict]:
    """ontology.json's entries for the demo classes: two top-level categories (not classes), "Demo
    stationary sounds" and "Demo transient sounds", holding the head classes 0-15 of their kind; under
    each head h a family node (not a class) holding the classes c >= 16 with c % 16 == h, which are of
    h's kind too. So class 35 is under family 3, under class 3, under "Demo transient sounds"."""
    table = _class_table(num_classes)
    heads = [(i, mid) for i, mid, _ in table[:FAMILIES]]
    members = {h: [mid for i, mid, _ in table[FAMILIES:] if i % FAMILIES == h] for h, _ in heads}
    entries = [{"id": f"/t/demo_{kind}", "name": f"Demo {kind} sounds", "child_ids": [
        mid for i, mid in heads if (i % TRANSIENT_EVERY == 3) == (kind == "transient")]}
        for kind in ("stationary", "transient")]
    for i, mid, name in table:
        entries.append({"id": mid, "name": name, "child_ids": [f"/t/demo_family{i:02d}"] if members.get(i) else []})
    entries += [{"id": f"/t/demo_family{h:02d}", "name": f"Demo family {h}", "child_ids": kids}
                for h, kids in members.items() if kids]
    return entries


def write_demo_ontology(out: Path, num_classes: int) -> None:
    atomic_write_text(out / ONTOLOGY_FILE, json.dumps(demo_ontology(num_classes), indent=1) + "\n")


def _video_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        for row in rng.integers(0, len(_ID_CHARS), size=(n, 11)):
            vid = "".join(_ID_CHARS[row])
            if vid not in taken:
                taken.add(vid)
                out.append(vid)
                if len(out) == n:
                    break
    return out


def _make_clips(rng: np.random.Generator, n: int, protos: np.ndarray, prior: np.ndarray,
                ids: list[str]) -> list[Clip]:
    num_classes = len(prior)
    n_labels = rng.choice([1, 2, 3, 4], size=n, p=[0.35, 0.35, 0.2, 0.1])
    lengths = np.where(rng.random(n) < 0.95, MAX_FRAMES, rng.integers(1, MAX_FRAMES, size=n))
    clips = []
    for i in range(n):
        labels = np.sort(rng.choice(num_classes, size=n_labels[i], replace=False, p=prior))
        T = int(lengths[i])
        x = 0.6 * rng.standard_normal(EMBED_DIM) + 0.8 * rng.standard_normal((T, EMBED_DIM))
        for c in labels:
            if c % TRANSIENT_EVERY == 3:
                where = rng.choice(T, size=min(T, int(rng.integers(1, 3))), replace=False)
                x[where] += 2.2 * protos[c]
            else:
                x += rng.uniform(0.5, 1.1) * protos[c]
        frames = np.clip(np.rint(128 + 24 * x), 0, 255).astype(np.uint8)
        start = float(rng.integers(0, 300))
        clips.append(Clip(ids[i], start, start + T, labels, frames))
    return clips


def _write_split(out: Path, clips: list[Clip]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    by_shard: dict[str, list[bytes]] = defaultdict(list)
    for c in clips:  # the release names each shard after its clips' first two id characters
        by_shard[c.video_id[:2]].append(serialize_clip(c))
    for name, payloads in by_shard.items():
        write_records(out / f"{name}.tfrecord", payloads)


def generate(out_dir: str | os.PathLike, clips: int = 20000, eval_clips: int | None = None, seed: int = 0,
             num_classes: int = NUM_CLASSES) -> dict:
    """Writes `bal_train/`, `eval/`, `class_labels_indices.csv` and `ontology.json` under `out_dir`; returns
    the spec.

    `out_dir` must be missing or empty: the set is built in a temporary folder beside it and renamed
    into place when complete, so a kill leaves nothing that looks like a demo set, and no file that
    was there before is ever touched.
    """
    out = Path(out_dir)
    _check_empty(out)
    eval_clips = clips // 2 if eval_clips is None else eval_clips
    spec = {"clips": clips, "eval_clips": eval_clips, "seed": seed, "num_classes": num_classes, "version": 1}
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out.parent)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".partial"))
    try:
        _write_set(stage, spec)
        with contextlib.suppress(FileNotFoundError):
            out.rmdir()  # an empty folder; one that is not empty (any more) is left alone: rename fails
        try:
            os.rename(stage, out)
        except OSError:
            if _read_marker(out) != spec:  # not another process's identical set, made meanwhile
                raise FileExistsError(f"{out}: files appeared there while the demo set was being made") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return spec


def _write_set(out: Path, spec: dict) -> None:
    rng = np.random.default_rng(spec["seed"])
    num_classes = spec["num_classes"]
    protos = rng.standard_normal((num_classes, EMBED_DIM))
    prior = 1.0 / (np.arange(num_classes) + 8.0)
    prior = rng.permutation(prior / prior.sum())
    taken: set[str] = set()
    for split, n in (("bal_train", spec["clips"]), ("eval", spec["eval_clips"])):
        _write_split(out / split, _make_clips(rng, n, protos, prior, _video_ids(rng, n, taken)))
    with open(out / "class_labels_indices.csv", "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        w.writerow(["index", "mid", "display_name"])
        w.writerows(_class_table(num_classes))
    write_demo_ontology(out, num_classes)
    (out / MARKER).write_text(json.dumps(spec, indent=2) + "\n")  # last: it says the set is whole


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _check_empty(out: Path) -> None:
    """The demo generator writes only where there is nothing to lose."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: is a file, expected a folder for the demo set")
    found = sorted(p.name for p in out.iterdir())[:3] if out.is_dir() else []
    if found:
        raise FileExistsError(
            f"data.root={out} holds files the demo generator did not make ({', '.join(found)}, ...): "
            f"to train on them use data=audioset data.root={out}; for demo data give data.root a new or empty folder")


def ensure_demo(out_dir: str | os.PathLike, clips: int, eval_clips: int | None, seed: int) -> bool:
    """Generates the demo set unless one with the same spec is already there; True if it wrote. A set made
    before demo sets had an ontology.json gets one."""
    out = Path(out_dir)
    want = {"clips": clips, "eval_clips": clips // 2 if eval_clips is None else eval_clips, "seed": seed}
    if _read_marker(out) is None:  # jobs making the same set at once take turns: one builds, the others find it
        writable_dir(out.parent, "set AER_DATA_DIR or AER_HOME (or data.root) to a folder you can write")
        with file_lock(out.with_name(f".{out.name}.lock"), f"making the demo set {out}", say=log.info):
            if _read_marker(out) is None:
                generate(out, clips, want["eval_clips"], seed)
                return True
    have = _read_marker(out)
    if not all(have.get(k) == v for k, v in want.items()):
        raise FileExistsError(f"{out_dir} holds a demo set made with {have}, not {want}; "
                              f"pick another data.root or delete it")
    if not (out / ONTOLOGY_FILE).exists():
        write_demo_ontology(out, int(have.get("num_classes", NUM_CLASSES)))
    return False


def is_demo(root: str | os.PathLike) -> bool:
    """True for a folder the demo generator made (and so may write beside its data)."""
    return _read_marker(Path(root)) is not None

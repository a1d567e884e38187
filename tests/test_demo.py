"""`python -m aer.data demo`: synthetic shards in exactly the release's layout, deterministic per seed."""

from __future__ import annotations

import csv
import json
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from aer.data.demo import ensure_demo, generate
from aer.data.proto import SequenceExample
from conftest import REAL_SKIP, ROOT, SHARED, independent_records, wire_parse

ID_CHARS = set(string.ascii_letters + string.digits + "-_")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _clips(split: Path) -> list[tuple[str, dict]]:
    return [(s.stem, wire_parse(p)) for s in sorted(split.glob("*.tfrecord"))
            for p in independent_records(s.read_bytes())]


@pytest.fixture(scope="module")
def cli_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "demo"
    r = subprocess.run([sys.executable, "-m", "aer.data", "demo", str(out), "--clips", "600", "--seed", "7"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote demo shards to {out}: 600 bal_train clips, 300 eval clips (seed 7)"
    return out


def test_layout_and_class_table(cli_demo):
    assert sorted(p.name for p in cli_demo.iterdir()) == ["bal_train", "class_labels_indices.csv", "demo.json", "eval",
                                                          "ontology.json"]
    with open(cli_demo / "class_labels_indices.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "mid", "display_name"] and len(rows) == 528
    assert [int(r[0]) for r in rows[1:]] == list(range(527))
    assert len({r[1] for r in rows[1:]}) == 527 and all(r[2] for r in rows[1:])
    assert json.loads((cli_demo / "demo.json").read_text())["seed"] == 7
    # the ontology holds the table's classes: each kind's under its top-level category, 16 families below
    from aer.data.ontology import class_ancestors, read_ontology, top_level_classes

    mids = [r[1] for r in rows[1:]]
    entries = read_ontology(cli_demo / "ontology.json")
    cats = top_level_classes(entries, mids)
    assert [c["name"] for c in cats] == ["Demo stationary sounds", "Demo transient sounds"]
    assert cats[1]["classes"] == [i for i in range(527) if i % 4 == 3] and len(cats[0]["classes"]) == 527 - 131
    above = class_ancestors(entries, mids)
    assert [list(np.flatnonzero(above[c])) for c in (3, 35, 526)] == [[3], [3, 35], [14, 526]]
    assert not list(cli_demo.rglob("*.partial"))


def test_records_are_valid_release_clips(cli_demo):
    seen = set()
    for split, n in (("bal_train", 600), ("eval", 300)):
        clips = _clips(cli_demo / split)
        assert len(clips) == n
        for shard, c in clips:
            vid = c["video_id"]
            assert len(vid) == 11 and set(vid) <= ID_CHARS and vid not in seen
            seen.add(vid)
            assert shard == vid[:2], "shards are named after their clips' first two id characters"
            assert 1 <= len(c["labels"]) <= 4 and len(set(c["labels"])) == len(c["labels"])
            assert all(0 <= x < 527 for x in c["labels"]) and c["labels"] == sorted(c["labels"])
            assert 1 <= len(c["frames"]) <= 10 and all(len(f) == 128 for f in c["frames"])
            assert c["end"] - c["start"] == len(c["frames"]) and c["start"] == int(c["start"])
        lengths = Counter(len(c["frames"]) for _, c in clips)
        assert lengths[10] > 0.85 * n and sum(v for k, v in lengths.items() if k < 10) > 0
        counts = Counter(len(c["labels"]) for _, c in clips)
        assert set(counts) == {1, 2, 3, 4}


def test_same_structure_as_a_release_record(cli_demo):
    payload = independent_records(next((cli_demo / "bal_train").glob("*.tfrecord")).read_bytes())[0]
    ex = SequenceExample.FromString(payload)
    kinds = {k: v.WhichOneof("kind") for k, v in ex.context.feature.items()}
    assert kinds == {"video_id": "bytes_list", "labels": "int64_list", "start_time_seconds": "float_list",
                     "end_time_seconds": "float_list"}
    assert list(ex.feature_lists.feature_list) == ["audio_embedding"]
    if SHARED.is_dir():
        real = independent_records(next((SHARED / "bal_train").glob("*.tfrecord")).read_bytes())[0]
        rex = SequenceExample.FromString(real)
        assert {k: v.WhichOneof("kind") for k, v in rex.context.feature.items()} == kinds
        assert list(rex.feature_lists.feature_list) == ["audio_embedding"]


def test_deterministic_per_seed_across_processes(cli_demo, tmp_path):
    """The same seed in another process gives byte-identical files; another seed different shards."""
    generate(tmp_path / "same", clips=600, seed=7)
    assert _files(tmp_path / "same") == _files(cli_demo)
    generate(tmp_path / "other", clips=600, seed=8)
    a, b = _files(tmp_path / "other"), _files(cli_demo)
    shards = [k for k in a if k.endswith(".tfrecord")]
    assert shards and set(shards) != {k for k in b if k.endswith(".tfrecord")}
    common = [k for k in shards if k in b]
    assert all(a[k] != b[k] for k in common)


def test_long_tailed_class_frequencies(tmp_path):
    generate(tmp_path, clips=3000, eval_clips=0, seed=0)
    counts = np.bincount([x for _, c in _clips(tmp_path / "bal_train") for x in c["labels"]], minlength=527)
    order = np.sort(counts)[::-1]
    assert order[:53].sum() > 0.35 * counts.sum(), "the top tenth of classes should hold a large share"
    assert order[0] > 8 * max(np.median(counts), 1)
    assert (counts > 0).sum() > 400, "most classes occur"


def test_eval_clips_zero_leaves_an_empty_eval_folder(tmp_path):
    spec = generate(tmp_path, clips=200, eval_clips=0, seed=1)
    assert spec["eval_clips"] == 0 and (tmp_path / "eval").is_dir()
    assert not list((tmp_path / "eval").iterdir())
    assert len(_clips(tmp_path / "bal_train")) == 200


def test_ensure_demo_reuses_or_refuses(tmp_path):
    assert ensure_demo(tmp_path, clips=50, eval_clips=10, seed=2) is True
    before = _files(tmp_path)
    assert ensure_demo(tmp_path, clips=50, eval_clips=10, seed=2) is False
    assert _files(tmp_path) == before
    with pytest.raises(FileExistsError, match="pick another data.root or delete it"):
        ensure_demo(tmp_path, clips=60, eval_clips=10, seed=2)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason=REAL_SKIP)
def test_demo_record_sizes_match_the_release(cli_demo):
    """Demo payloads are the size of real ones: the same fields, the same frame encoding."""
    def median_size(split: Path, k: int) -> float:
        return float(np.median([len(p) for s in sorted(split.glob("*.tfrecord"))[:k]
                                for p in independent_records(s.read_bytes())]))

    real, demo = median_size(SHARED / "bal_train", 200), median_size(cli_demo / "bal_train", 10_000)
    assert abs(demo - real) < 0.05 * real, (demo, real)

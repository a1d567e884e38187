"""bench/scale.py's replicated shards (new ids, valid CRCs)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from aer.data.convert import convert, load_split
from conftest import ROOT, TINY


def test_bench_replicas_convert_with_new_ids(demo_root, tmp_path):
    """bench/scale.py's replicas (its `_replicate` step, run as the bench runs it): the same clips under
    new, unique ids, in valid records."""
    out = tmp_path / "r03"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "_replicate", str(demo_root / "bal_train"),
                           str(out), "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])["clips"] == TINY
    a = load_split(convert(demo_root / "bal_train", tmp_path / "a.h5").out)
    b = load_split(convert(out, tmp_path / "b.h5").out)  # convert checks every record's CRCs
    for key in ("features", "labels", "lengths", "start_time", "end_time"):
        assert np.array_equal(a[key], b[key]), key
    assert list(b["video_id"]) == [f".03{i:08d}" for i in range(TINY)]

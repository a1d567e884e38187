"""Exported files against PyTorch on a checkpoint's dev split: agreement and clips/s, side by side.

    python bench/export.py CKPT [--batch 500] [--repeat 5] [--threads 1]

Exports CKPT as ONNX and TorchScript into a temporary folder (`aer.export.run`), then scores the
dev 20% held out of its training split (the clips the run validated on) with PyTorch (the Tagger
behind the same uint8 input, `Tagger.probabilities`), onnxruntime and the TorchScript file,
in batches of --batch; each is timed --repeat times after a warm-up, in turn in the same run
(median shown). Prints each file's largest |Δp| against PyTorch, how many (clip, class) decisions
at the checkpoint's thresholds differ, and clips/s. Exit status 1 when a file's probabilities
differ by more than aer.export.CHECK_ATOL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def dev_clips(ckpt):
    """(uint8 features, lengths) of the dev split in the order predict_split serves it."""
    dm = ckpt.datamodule("val")
    dm.setup("test")
    batches = list(dm.test_dataloader())
    feats = np.concatenate([b["features"].numpy() for b in batches])  # the release's uint8, as served
    return feats, np.concatenate([b["lengths"].numpy() for b in batches]).astype(np.int64)


def clips_per_s(fn, feats, lengths, batch: int, repeat: int) -> tuple[float, np.ndarray]:
    def once():
        return np.concatenate([fn(feats[i:i + batch], lengths[i:i + batch]) for i in range(0, len(lengths), batch)])

    out = once()  # warm-up
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        once()
        walls.append(time.perf_counter() - t0)
    return len(lengths) / statistics.median(walls), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from aer.checkpoint import Checkpoint
    from aer.export import CHECK_ATOL, load_runner, run
    from conftest import config

    ckpt = Checkpoint.load(args.ckpt)
    thr, thr_source = ckpt.decision_thresholds(None)
    model = ckpt.tagger().probabilities().eval()
    feats, lengths = dev_clips(ckpt)

    def pytorch(f, n):
        with torch.inference_mode():
            return model(torch.from_numpy(f), torch.from_numpy(n)).numpy()

    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="aer-bench-export-") as tmp:
        runners = {"pytorch": pytorch}
        for fmt in ("onnx", "torchscript"):
            out = Path(tmp) / f"model.{fmt}"
            run(config("export", [f"ckpt={args.ckpt}", f"format={fmt}", f"out={out}", f"paths.output_dir={tmp}"]))
            runners[fmt] = load_runner(out, fmt, args.threads)
        ref = None
        for name, fn in runners.items():
            speed, probs = clips_per_s(fn, feats, lengths, args.batch, args.repeat)
            ref = probs if ref is None else ref
            diff = float(np.abs(probs - ref).max())
            flips = int(((probs >= thr) != (ref >= thr)).sum())
            failed |= diff > CHECK_ATOL
            rows.append((name, speed, diff, flips))
    print(f"{args.ckpt}: dev split, {len(lengths)} clips ({(lengths < lengths.max()).sum()} shorter than "
          f"{lengths.max()} frames), batch {args.batch}, {args.threads} thread(s); thresholds {thr_source}")
    print(f"{'runtime':12} {'clips/s':>10} {'vs pytorch':>10} {'max |dp|':>10} {'decisions differing':>20}")
    for name, speed, diff, flips in rows:
        print(f"{name:12} {speed:10,.0f} {speed / rows[0][1]:9.2f}x {diff:10.2g} {flips:20d}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

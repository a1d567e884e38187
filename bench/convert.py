"""Conversion throughput: aer's converter (1 and 2 workers) against a hand-written parse loop.

    python bench/convert.py [--data /tmp/aer-bench-200k] [--clips 200000] [--repeat 1] [--before DIR]

The demo set is generated once (``aer.data.demo.generate(dir, clips, eval_clips=0)``) and cached
in --data. Every variant then runs in a fresh subprocess on the same shards, so each one's peak
RSS (``resource.getrusage``) is its own; the page cache is warmed first so none pays for the disk.

The baseline is what a user would write by hand: read each file, walk the TFRecord framing with
a minimal loop (no CRC checks), parse each ``SequenceExample`` with protobuf, and collect frames,
labels and ids into numpy arrays (no HDF5). aer does all of that and also checks both CRCs of
every record, validates every clip and streams the result into an HDF5 file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "--aer" in sys.argv:  # benchmark another copy of the package (e.g. `git archive` of an older commit)
    sys.path.insert(0, sys.argv[sys.argv.index("--aer") + 1])
else:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("plain", "aer-1", "aer-2")


def plain_loop(shards: list[Path]) -> int:
    """The baseline: framing by hand, protobuf parse, numpy arrays; no checks, no HDF5."""
    import numpy as np

    from aer.data.proto import SequenceExample

    unpack = struct.Struct("<Q").unpack_from
    frames, lengths, labels, vids, starts, ends = [], [], [], [], [], []
    for path in shards:
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (n,) = unpack(data, pos)
            ex = SequenceExample.FromString(data[pos + 12:pos + 12 + n])
            pos += 16 + n
            ctx = ex.context.feature
            seq = ex.feature_lists.feature_list["audio_embedding"].feature
            frames.append(np.frombuffer(b"".join(f.bytes_list.value[0] for f in seq), np.uint8).reshape(-1, 128))
            lengths.append(len(seq))
            labels.append(list(ctx["labels"].int64_list.value))
            vids.append(ctx["video_id"].bytes_list.value[0].decode())
            starts.append(ctx["start_time_seconds"].float_list.value[0])
            ends.append(ctx["end_time_seconds"].float_list.value[0])
    n = len(frames)
    x = np.zeros((n, 10, 128), np.uint8)
    y = np.zeros((n, 527), bool)
    for i, (fr, lab) in enumerate(zip(frames, labels)):
        x[i, :len(fr)] = fr
        y[i, lab] = True
    lengths, vids = np.array(lengths, np.uint8), np.array(vids, dtype=object)
    starts, ends = np.array(starts, np.float32), np.array(ends, np.float32)
    return n


def run_variant(variant: str, src: Path) -> dict:
    """Runs one variant in this process; its time (imports excluded) and peak RSS."""
    from aer.data.convert import convert, list_shards

    shards = list_shards(src)

    def cpu() -> tuple[float, float]:  # CPU seconds of this process, and of its (worker) children
        return tuple(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                       resource.getrusage(resource.RUSAGE_CHILDREN)))

    with tempfile.TemporaryDirectory(prefix="aer-bench-") as tmp:
        c0, t0 = cpu(), time.perf_counter()
        if variant == "plain":
            clips = plain_loop(shards)
        else:
            workers = int(variant.split("-")[1])
            summary = convert(src, Path(tmp) / "out.h5", workers=workers, force=True, progress=False)
            clips = summary.clips
        seconds, c1 = time.perf_counter() - t0, cpu()
    return {"variant": variant, "clips": clips, "seconds": seconds, "main_cpu": c1[0] - c0[0],
            "cpu_seconds": (c1[0] - c0[0]) + (c1[1] - c0[1]),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def ensure_data(data: Path, clips: int) -> Path:
    from aer.data.demo import MARKER

    marker = data / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("clips") == clips:
        return data / "bal_train"
    print(f"generating {clips:,} demo clips in {data} (once) ...", flush=True)
    t0 = time.perf_counter()
    # In a subprocess: a child forked from a parent that had grown would inherit its peak RSS.
    code = (f"from aer.data.demo import generate; "
            f"spec = generate({str(data)!r}, clips={clips}, eval_clips=0, seed=0); assert spec['eval_clips'] == 0")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return data / "bal_train"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/aer-bench-200k", help="demo set folder (generated once)")
    ap.add_argument("--clips", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=1, help="runs per variant; the fastest counts")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--aer", help="folder holding the aer package to measure (default: this checkout)")
    ap.add_argument("--before", help="folder holding an older aer package (e.g. `git archive HEAD aer | tar -x "
                    "-C DIR`): adds its 1- and 2-worker runs as before-1/before-2, interleaved with the others")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant here, print JSON
    args = ap.parse_args()

    if args.variant:
        print(json.dumps(run_variant(args.variant, Path(args.data) / "bal_train")))
        return 0

    src = ensure_data(Path(args.data), args.clips)
    shards = sorted(src.glob("*.tfrecord"))
    size = 0
    for p in shards:  # warm the page cache: every variant reads from memory
        with open(p, "rb") as f:
            size += len(f.read())
    print(f"{len(shards):,} shards, {size / 1e6:.0f} MB, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.2f} (other processes share these CPUs)")

    best: dict[str, dict] = {}
    variants = args.variants.split(",") + (["before-1", "before-2"] if args.before else [])
    for _ in range(args.repeat):
        for v in variants:
            pkg = args.before if v.startswith("before-") else args.aer
            extra = ["--aer", pkg] if pkg else []
            out = subprocess.run([sys.executable, __file__, "--data", args.data,
                                  "--variant", v.replace("before-", "aer-"), *extra],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["variant"] = v
            if v not in best or r["seconds"] < best[v]["seconds"]:
                best[v] = r
    base = best.get("plain")
    print(f"{'variant':<8} {'clips':>8} {'seconds':>8} {'CPU s':>7} {'clips/s':>9} {'vs plain':>9} "
          f"{'peak RSS':>9} {'workers RSS':>12}")
    for v, r in best.items():
        rate = r["clips"] / r["seconds"]
        ratio = f"{rate / (base['clips'] / base['seconds']):.2f}x" if base else "-"
        wrss = f"{r['worker_rss_mb']:.0f} MB" if v.endswith("-2") else "-"
        print(f"{v:<8} {r['clips']:>8,} {r['seconds']:>8.2f} {r['cpu_seconds']:>7.2f} {rate:>9,.0f} {ratio:>9} "
              f"{r['rss_mb']:>6.0f} MB {wrss:>12}")
    if "aer-2" in best:
        r = best["aer-2"]
        bound = max(r["main_cpu"], r["cpu_seconds"] / 2)
        print(f"aer-2 CPU: main process {r['main_cpu']:.2f} s, workers {r['cpu_seconds'] - r['main_cpu']:.2f} s: "
              f"on 2 otherwise idle CPUs its wall time could approach {bound:.2f} s "
              f"({r['clips'] / bound:,.0f} clips/s)")
    if base:
        for v, target in (("before-1", 1.0), ("before-2", 1.7), ("aer-1", 1.0), ("aer-2", 1.7)):
            if v in best:
                ratio = (best[v]["clips"] / best[v]["seconds"]) / (base["clips"] / base["seconds"])
                print(f"{v}: {ratio:.2f}x plain (target >= {target}x): {'OK' if ratio >= target else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

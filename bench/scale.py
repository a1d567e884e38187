"""Scale: the unbalanced split at 100k, 500k and 2M clips: conversion and training time and memory.

    python bench/scale.py [--sizes 100k,500k,2M] [--cache /tmp/aer-scale] [--train-batches 200]

Data (made once, cached in --cache): a 100k-clip demo set (`aer.data.demo.generate`), and the
bigger sets built from it by replicating its shards with new video ids (only the id bytes and
the CRCs of each record change: the replicas cost disk-write time, not generation time). Every
size is a data root with unbal_train/ (that many clips) and bal_train/ (a 20k-clip demo set).

Each measurement runs in a fresh subprocess, so each peak RSS (`resource.getrusage` ru_maxrss)
is its own; the parent stays small because a child's ru_maxrss starts from its parent's at exec.

  convert  unbal_train's shards -> HDF5 with 2 workers (aer.data.convert.convert, force=True):
           clips/s, peak RSS of the main process and of the largest worker.
  train    `aer.train.run` with data=audioset data.train_split=all (bal_train + unbal_train held
           in RAM as uint8 features and bool labels, converted to float per batch), model=fc,
           one epoch of --train-batches batches of 500 (trainer.limit_train_batches) and a few
           validation batches: load time, training clips/s, RSS once the data is held, peak RSS.
           The data held is 1280 B of features + 527 B of labels per clip (1.8 KB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = 100_000    # clips generated; larger sets replicate its shards
BAL = 20_000      # clips of the bal_train beside each size (the release's is 22,160)
HELD_PER_CLIP = 10 * 128 + 527  # uint8 features + bool labels, bytes
ID_FIELD = b"video_id\x12\x0f\x0a\x0d\x0a\x0b"  # the context entry serialize_clip writes, then the 11 id bytes


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "km" else s) * mult)


def fmt_size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def _child(*args: str) -> dict:
    """Runs this script with an internal command in a fresh process; its JSON result."""
    proc = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- data (internal commands, each in its own process)
def cmd_generate(out: str, clips: int, seed: int) -> dict:
    from aer.data.demo import generate

    t0 = time.perf_counter()
    generate(out, clips=clips, eval_clips=0, seed=seed)
    return {"clips": clips, "seconds": time.perf_counter() - t0, "rss_mb": peak_mb()}


def cmd_replicate(src: str, out: str, replica: int) -> dict:
    """Copies every shard of `src` into `out`, giving clip i the id '.RRIIIIIIII' (R: replica number).

    '.' is not in the release's id alphabet (letters, digits, '-', '_'), so the ids are new and unique.
    """
    from aer.data.convert import list_shards
    from aer.data.tfrecord import iter_records, write_records

    t0 = time.perf_counter()
    dst = Path(out)
    tmp = dst.with_name(dst.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    i = 0
    for shard in list_shards(src):
        payloads = []
        for p in iter_records(shard):
            at = p.index(ID_FIELD) + len(ID_FIELD)
            payloads.append(b"%s.%02d%08d%s" % (p[:at], replica, i, p[at + 11:]))
            i += 1
        write_records(tmp / shard.name, payloads)
    tmp.rename(dst)
    return {"clips": i, "seconds": time.perf_counter() - t0, "rss_mb": peak_mb()}


def cmd_convert(root: str) -> dict:
    from aer.data.convert import convert

    t0 = time.perf_counter()
    s = convert(Path(root) / "unbal_train", Path(root) / "aer_cache" / "unbal_train.h5", workers=2, force=True,
                progress=False)
    return {"clips": s.clips, "seconds": time.perf_counter() - t0, "rss_mb": peak_mb(),
            "worker_rss_mb": peak_mb(resource.RUSAGE_CHILDREN)}


def cmd_train(root: str, batches: int, split: str) -> dict:
    from hydra import compose, initialize_config_dir

    from aer.config import build
    from aer.data.datamodule import AudioSetDataModule
    from aer.train import run

    held: dict = {}
    setup = AudioSetDataModule.setup

    def timed_setup(self, stage=None):
        first = not self._sets
        t0 = time.perf_counter()
        setup(self, stage)
        if first:
            held.update(load_s=time.perf_counter() - t0, rss_held_mb=rss_now_mb(),
                        clips=len(self._meta["train"]["lengths"]))

    AudioSetDataModule.setup = timed_setup
    rss0 = rss_now_mb()
    with tempfile.TemporaryDirectory(prefix="aer-scale-") as out:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[
                "data=audioset", f"data.root={root}", f"data.train_split={split}", "data.batch_size=500",
                "model=fc", "trainer.accelerator=cpu", "trainer.max_epochs=1", f"trainer.limit_train_batches={batches}",
                "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
                "+trainer.enable_model_summary=false",
                "~logger", f"paths.output_dir={out}"])
        t0 = time.perf_counter()
        result = run(build("train", cfg))
    return {**held, "rss_start_mb": rss0, "seconds": time.perf_counter() - t0, "rss_mb": peak_mb(),
            "train_clips_per_s": result["train/clips_per_s"], "trained_clips": batches * 500,
            "status": result["status"]}


# ---- orchestration (this process stays small)
def ensure_sets(cache: Path, sizes: list[int]) -> dict:
    """Generates / replicates what the sizes need; returns how long the data took to make."""
    made = {}
    base = cache / f"base-{BASE}"
    for path, clips, seed in ((base, BASE, 0), (cache / f"bal-{BAL}", BAL, 1)):
        if not (path / "demo.json").exists():
            print(f"generating {clips:,} demo clips in {path} (once) ...", flush=True)
            made[f"generate {fmt_size(clips)}"] = _child("_generate", str(path), str(clips), str(seed))
    for k in range(1, -(-max(sizes) // BASE)):
        rep = cache / "replicas" / f"r{k:02d}"
        if not rep.exists():
            print(f"replica {k} of the {fmt_size(BASE)} set -> {rep} (once) ...", flush=True)
            made[f"replica {k}"] = _child("_replicate", str(base / "bal_train"), str(rep), str(k))
    for n in sizes:
        if n % BASE:
            sys.exit(f"--sizes: {n} is not a multiple of {BASE:,} (the sets are built from {BASE:,}-clip replicas)")
        root = cache / f"n{fmt_size(n)}"
        unbal = root / "unbal_train"
        if not unbal.exists():
            tmp = root / "unbal_train.partial"
            tmp.mkdir(parents=True, exist_ok=True)
            for k in range(n // BASE):
                src = base / "bal_train" if k == 0 else cache / "replicas" / f"r{k:02d}"
                for shard in sorted(src.glob("*.tfrecord")):
                    (tmp / f"r{k:02d}-{shard.name}").symlink_to(shard)
            tmp.rename(unbal)
        for name, target in (("bal_train", cache / f"bal-{BAL}" / "bal_train"),
                             ("class_labels_indices.csv", base / "class_labels_indices.csv")):
            if not (root / name).exists():
                (root / name).symlink_to(target)
    return made


def warm(paths: list[Path]) -> None:
    """Reads the files once, so the measurements do not depend on what the page cache holds."""
    for d in paths:
        for p in d.iterdir():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100k,500k,2M",
                    help="unbal_train sizes, multiples of 100k (default: %(default)s)")
    ap.add_argument("--cache", default="/tmp/aer-scale", help="where the generated data lives (default: %(default)s)")
    ap.add_argument("--train-batches", type=int, default=200, help="training batches of 500 per size")
    ap.add_argument("--train-split", default="all", choices=("all", "unbal_train"))
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    made_file = cache / "made.json"
    made = json.loads(made_file.read_text()) if made_file.exists() else {}
    made.update(ensure_sets(cache, sizes))
    made_file.write_text(json.dumps(made, indent=1))

    rows = []
    for n in sizes:
        root = cache / f"n{fmt_size(n)}"
        warm([root / "unbal_train"])
        print(f"{fmt_size(n)}: convert ...", flush=True)
        conv = _child("_convert", str(root))
        if args.skip_train:
            rows.append((n, conv, None))
            continue
        if not (root / "aer_cache" / "bal_train.h5").exists():
            subprocess.run([sys.executable, "-c", "import sys; from aer.data.convert import convert; "
                            "convert(sys.argv[1], sys.argv[2], progress=False)", str(root / "bal_train"),
                            str(root / "aer_cache" / "bal_train.h5")], cwd=ROOT, check=True)
        print(f"{fmt_size(n)}: train ...", flush=True)
        rows.append((n, conv, _child("_train", str(root), str(args.train_batches), args.train_split)))

    print()
    print(f"unbal_train at scale (2 cores; convert: 2 workers; train: fc, data.train_split={args.train_split}, "
          f"{args.train_batches} batches of 500, +{fmt_size(BAL)} bal_train)")
    head = ("clips", "convert s", "convert clips/s", "convert RSS MB", "worker RSS MB", "train clips held",
            "load s", "held RSS MB", "train clips/s", "train peak RSS MB", "peak B/clip", "data B/clip")
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for n, c, t in rows:
        cells = [f"{n:,}", f"{c['seconds']:.1f}", f"{c['clips'] / c['seconds']:,.0f}", f"{c['rss_mb']:,.0f}",
                 f"{c['worker_rss_mb']:,.0f}"]
        if t:
            held = t["clips"]
            cells += [f"{held:,}", f"{t['load_s']:.1f}", f"{t['rss_held_mb']:,.0f}", f"{t['train_clips_per_s']:,.0f}",
                      f"{t['rss_mb']:,.0f}", f"{(t['rss_mb'] - t['rss_start_mb']) * 2**20 / held:,.0f}",
                      f"{HELD_PER_CLIP:,}"]
        else:
            cells += [""] * 7
        print("| " + " | ".join(cells) + " |")
    print("\npeak B/clip: (train peak RSS - RSS before loading) / clips held; "
          "data B/clip: uint8 features + bool labels")
    print(f"\nmaking the data (once, cached in {cache}; each step in a fresh process):")
    reps = [r for k, r in made.items() if k.startswith("replica")]
    for what, r in [(k, r) for k, r in made.items() if k.startswith("generate")] + (
            [(f"replicate x{len(reps)}", {k: sum(r[k] for r in reps) if k != "rss_mb" else max(r[k] for r in reps)
                                          for k in ("clips", "seconds", "rss_mb")})] if reps else []):
        print(f"  {what}: {r['clips']:,} clips in {r['seconds']:.1f} s ({r['clips'] / r['seconds']:,.0f} clips/s), "
              f"peak RSS {r['rss_mb']:,.0f} MB")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        cmd, rest = sys.argv[1], sys.argv[2:]
        fn = {"_generate": lambda o, c, s: cmd_generate(o, int(c), int(s)),
              "_replicate": lambda s, o, k: cmd_replicate(s, o, int(k)),
              "_convert": cmd_convert, "_train": lambda r, b, s: cmd_train(r, int(b), s)}[cmd]
        print(json.dumps(fn(*rest)))
        sys.exit(0)
    sys.exit(main())

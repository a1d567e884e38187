"""Many small jobs on one machine: a sweep's throughput, in jobs per hour, with K jobs side by side.

Runs the same sweep (`experiment=report_fc`, one job per seed, on the real bal_train dev split) with
Hydra's joblib launcher at each K of --parallel (`hydra/launcher=joblib hydra.launcher.n_jobs=K`), each
job with --threads torch threads; with --trainer gpu every job trains on the one GPU (trainer=gpu,
devices=1), the case of many small FC/attention jobs that leave a large device mostly idle. Prints, per K,
the sweep's wall time (process start to exit), jobs per hour, the speed-up over K=1 and the jobs'
median time, and the largest peak RSS of a job's process (from the jobs' timing.json; a joblib worker
process runs several jobs, so it is the worker's peak). Everything is
written under a temp dir.

    python bench/sweep_throughput.py [--root ../shared/data/audioset] [--parallel 1,2,4,8] [--jobs 8]
        [--epochs 10] [--threads 1] [--trainer cpu|gpu] [--experiment report_fc]

On this 2-core laptop CPU only K = 1, 2 make sense (--parallel 1,2); on a GPU machine, K = 1, 2, 4, 8.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(args, k: int, out: Path) -> dict:
    seeds = ",".join(str(s) for s in range(1, args.jobs + 1))
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={args.experiment}", f"seed={seeds}",
           "data=audioset", f"data.root={args.root}", f"data.cache_dir={args.cache_dir}",
           f"trainer.max_epochs={args.epochs}", f"threads={args.threads}", f"trainer={args.trainer}",
           "trainer.enable_progress_bar=false", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={k}",
           f"hydra.sweep.dir={out}", f"paths.log_dir={out / 'logs'}"]
    if args.trainer == "gpu":
        cmd.append("trainer.devices=1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sweep with n_jobs={k} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    metrics = [json.loads((out / str(i) / "metrics.json").read_text()) for i in range(args.jobs)]
    bad = [m.get("error") for m in metrics if m.get("status") != "ok"]
    if bad:
        raise SystemExit(f"sweep with n_jobs={k}: {len(bad)} jobs failed, first: {bad[0]}")
    timing = [json.loads((out / str(i) / "timing.json").read_text()) for i in range(args.jobs)]
    return {"k": k, "wall": wall, "job_s": statistics.median(m["seconds"] for m in metrics),
            "rss": max(t["peak_rss_mb"] for t in timing)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "audioset"))
    p.add_argument("--cache-dir", default=None, help="where the HDF5 cache goes (default: a temp dir)")
    p.add_argument("--parallel", default="1,2,4,8", help="the K values: jobs side by side")
    p.add_argument("--jobs", type=int, default=8, help="jobs in each sweep (one per seed)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per job")
    p.add_argument("--trainer", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--experiment", default="report_fc")
    args = p.parse_args()
    if not (Path(args.root) / "bal_train").is_dir():
        print(f"skipped: no bal_train split at {args.root} (the real data lives in ../shared)")
        return 0
    if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        print("skipped: the joblib launcher is not installed (pip install -e '.[scale]')")
        return 0
    with tempfile.TemporaryDirectory(prefix="aer-sweeps-") as tmp:
        args.cache_dir = args.cache_dir or os.path.join(tmp, "cache")
        rows = []
        for k in (int(v) for v in args.parallel.split(",")):
            rows.append(run_sweep(args, k, Path(tmp) / f"k{k}"))
            print(f"measured n_jobs={k}: {rows[-1]['wall']:.1f} s", flush=True)
    base = rows[0]["wall"]
    print(f"\n{args.jobs} jobs of experiment={args.experiment}, {args.epochs} epochs each, trainer={args.trainer}, "
          f"{args.threads} torch threads a job, {os.cpu_count()} CPUs")
    print(f"{'K side by side':>14} {'sweep wall s':>13} {'jobs/hour':>10} {'speed-up':>9} {'median job s':>13} "
          f"{'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['k']:14d} {r['wall']:13.1f} {args.jobs / r['wall'] * 3600:10.0f} {base / r['wall']:9.2f} "
              f"{r['job_s']:13.1f} {r['rss']:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a whole aer job cost little more than a plain script doing the same work? `train.py` against plain PyTorch.

Each side is one process, timed from its start to its exit. aer's is
`python train.py experiment=report_fc data=audioset ...` (imports, Hydra, the cache's load, 50 epochs
each followed by validation, last.ckpt and best.ckpt, TensorBoard curves, metrics.json); the plain one
is bench/plain_job.py (torch, h5py, numpy and TensorBoard's SummaryWriter: the same cache, the dev
split aer's rule gives, the same FC 1280-500-527, xavier, Adam lr 1e-3, batch 500, 50 epochs, and after
every epoch a validation with mAP and mAUC, last.ckpt and best.ckpt and the epoch's curves). They run
alternately, plain first and last (plain, aer, plain, aer, ..., plain), and each aer job's ratio is
over the mean of the plain jobs on either side of it; the headline is the median ratio (target
<= 1.05). The breakdown of aer's time comes from the job's own timing.json (aer.timing): start-up
(process start to aer's run: interpreter, imports, Hydra), data, training, validation, checkpoints,
logging, the rest (building, Lightning's loop, the progress bar, finishing) and the exit after
metrics.json; the plain job stamps the same phases. Then: aer's slowest validation against the plain
job's median one (target <= 1.3), the share of the job that writing checkpoints and curves held it up
(target <= 2%), the start-up difference, the peak RSS of each process (wait4) and the resident memory at
every epoch's end of both, which shows whether it stays flat.

With `--variants init` the same is done for the report's initialization study: the 6-job sweep
`python train.py -m experiment=report_init ...` (one process, jobs one after another) against the
plain script training the 6 inits one after another in one process.

    python bench/job_speed.py [--root ../shared/data/audioset] [--cache-dir DIR] [--epochs 50]
        [--threads 1] [--rounds 1] [--variants fc,init]

Everything is written under a temp dir (the cache too, unless --cache-dir names one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 1.05
VALIDATION_TARGET = 1.3  # aer's slowest validation over the plain one
WRITES_TARGET = 0.02  # checkpoints and curves: the share of the job they hold it up
INITS = "xavier,kaiming,orthogonal,normal,uniform,default"  # conf/experiment/report_init.yaml's sweep
PHASES = ("startup", "data", "train", "validation", "checkpoints", "logging", "other", "exit")


def prepare(root: str, cache_dir: str, tmp: Path) -> tuple[Path, Path]:
    """(the bal_train cache, converted here when missing; an .npz of the dev split's train and val rows)."""
    import h5py
    import numpy as np

    from aer.data.datamodule import AudioSetDataModule, dev_split

    dm = AudioSetDataModule(root=root, cache_dir=cache_dir)
    cache = dm.prepare_split("bal_train")
    with h5py.File(cache, "r") as f:
        ids = np.char.decode(f["video_id"][()], "utf-8")
    train, val = dev_split(ids, dm.hparams["val_fraction"], dm.hparams["split_seed"])
    np.savez(tmp / "split.npz", train=train, val=val)
    return cache, tmp / "split.npz"


def timed(cmd: list[str], log: Path, env: dict) -> tuple[float, float, float, int]:
    """(start time, wall seconds, peak RSS MB, exit status) of one process, its output in `log`."""
    with open(log, "w") as out:
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return t0, wall, usage.ru_maxrss * 1024 / 1e6, proc.returncode  # ru_maxrss: KiB


def plain_run(args, cache: Path, split: Path, inits: str, tmp: Path, i: int, env: dict) -> dict:
    from aer.settings import INITS as SCHEMES

    options = {name: SCHEMES[name].build({}).as_dict() for name in inits.split(",")}
    out = tmp / f"plain-{i}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "plain_job.py"), "--cache", str(cache), "--split", str(split),
           "--out", str(out), "--run-dir", str(tmp / f"plain-{i}"), "--epochs", str(args.epochs),
           "--threads", str(args.threads), "--inits", inits, "--init-options", json.dumps(options)]
    t0, wall, rss, rc = timed(cmd, tmp / f"plain-{i}.log", env)
    if rc:
        raise SystemExit(f"the plain job failed (exit {rc}): see {tmp / f'plain-{i}.log'}")
    t = json.loads(out.read_text())
    phases = dict.fromkeys(PHASES, 0.0)
    phases["startup"], phases["data"] = t["imported"] - t0, t["loaded"] - t["imported"]
    for r in t["runs"]:
        for k, v in r["seconds"].items():
            phases[k] += v
    phases["other"] = t["finished"] - t["loaded"] - sum(phases[k] for k in ("train", "validation", "checkpoints",
                                                                              "logging"))
    phases["exit"] = wall - (t["finished"] - t0)
    return {"wall": wall, "rss": rss, "phases": phases, "mAP": [r["mAP"] for r in t["runs"]],
            "rss_epochs": [v for r in t["runs"] for v in r["epochs_rss_mb"]],
            "validations": [v for r in t["runs"] for v in r["validations_s"]]}


def aer_run(args, cache_dir: str, variant: str, tmp: Path, i: int, env: dict) -> dict:
    run_dir = tmp / f"aer-{i}"
    common = ["data=audioset", f"data.root={args.root}", f"data.cache_dir={cache_dir}", f"threads={args.threads}",
              f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false"]
    if variant == "fc":
        cmd = [sys.executable, "train.py", "experiment=report_fc", *common, f"hydra.run.dir={run_dir}"]
    else:
        cmd = [sys.executable, "train.py", "-m", "experiment=report_init", *common, f"hydra.sweep.dir={run_dir}"]
    t0, wall, rss, rc = timed(cmd, tmp / f"aer-{i}.log", env)
    timings = sorted(run_dir.glob("**/timing.json"), key=lambda p: json.loads(p.read_text())["began_at"])
    if rc or not timings:
        raise SystemExit(f"the aer job failed (exit {rc}): see {tmp / f'aer-{i}.log'}")
    phases = dict.fromkeys(PHASES, 0.0)
    maps, rss_epochs, validations, total = [], [], [], 0.0
    for path in timings:
        t = json.loads(path.read_text())
        for p in ("startup", "data", "train", "validation", "checkpoints", "logging"):
            phases[p] += t[f"{p}_s"]
        phases["other"] += t["build_s"] + t["other_fit_s"] + t["finish_s"]
        total += t["total_s"]
        rss_epochs += t["epochs_rss_mb"]
        validations += t["validations_s"]
        maps.append(json.loads((path.parent / "metrics.json").read_text()).get("val/mAP"))
    phases["exit"] = wall - total  # after the last metrics.json: Hydra's job end, the interpreter's exit
    return {"wall": wall, "rss": rss, "phases": phases, "mAP": maps, "rss_epochs": rss_epochs,
            "validations": validations}


def flatness(rss: list[float]) -> str:
    """Resident memory over the epochs (a sweep's jobs one after another): from the third epoch on, after
    the allocator has settled (training and validation buffers, the first checkpoints' bytes), the
    later half's peak against the earlier half's."""
    if len(rss) < 6:
        return f"{len(rss)} epochs, too few to judge: " + ", ".join(f"{v:.0f}" for v in rss) + " MB"
    settled = rss[2:]
    half = len(settled) // 2
    grow = max(settled[half:]) - max(settled[:half])
    verdict = "flat" if grow <= max(20.0, 0.03 * max(settled)) else "GROWS"
    return (f"epoch 1 {rss[0]:.0f} MB, epochs 3-{len(rss)} {min(settled):.0f}-{max(settled):.0f} MB, last "
            f"{rss[-1]:.0f} MB; the later half's peak {grow:+.0f} MB over the earlier half's: {verdict}")


def measure(args, variant: str, cache: Path, split: Path, tmp: Path, env: dict) -> None:
    inits = INITS if variant == "init" else "xavier"
    plains, aers = [plain_run(args, cache, split, inits, tmp / variant, 0, env)], []
    for i in range(args.rounds):
        aers.append(aer_run(args, str(cache.parent), variant, tmp / variant, i, env))
        plains.append(plain_run(args, cache, split, inits, tmp / variant, i + 1, env))
    ratios = [a["wall"] / ((p0["wall"] + p1["wall"]) / 2) for a, p0, p1 in zip(aers, plains, plains[1:])]
    name = {"fc": "train.py experiment=report_fc", "init": "train.py -m experiment=report_init (6 jobs)"}[variant]
    print(f"\n== {name}, {args.epochs} epochs, {args.threads} thread(s), {args.rounds} round(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'process':10} {'wall s':>7} " + " ".join(f"{p:>11}" for p in PHASES) + f" {'peak RSS MB':>12}  val mAP")
    order = [x for pair in zip(plains, aers) for x in pair] + [plains[-1]]
    for k, r in enumerate(order):
        label = "aer" if k % 2 else "plain"
        print(f"{label:10} {r['wall']:7.1f} " + " ".join(f"{r['phases'][p]:11.2f}" for p in PHASES)
              + f" {r['rss']:12.0f}  " + ",".join(f"{m:.4f}" for m in r["mAP"] if m is not None))
    med = statistics.median(ratios)
    print(f"aer / plain wall time: median {med:.3f} over {len(ratios)} pair(s) "
          f"(each over the mean of the plain runs before and after it; range {min(ratios):.3f}-{max(ratios):.3f}); "
          f"target <= {TARGET}: {'ok' if med <= TARGET else 'MISSED'}")
    plain_val = statistics.median(v for p in plains for v in p["validations"])
    for i, a in enumerate(aers):
        v = a["validations"]
        worst = max(v) / plain_val
        print(f"aer run {i}: {len(v)} validations, median {statistics.median(v) * 1e3:.0f} ms, slowest "
              f"{max(v) * 1e3:.0f} ms, against the plain job's median {plain_val * 1e3:.0f} ms: slowest / plain "
              f"{worst:.2f}, median / plain {statistics.median(v) / plain_val:.2f} (target <= {VALIDATION_TARGET}: "
              f"{'ok' if worst <= VALIDATION_TARGET else 'MISSED'})")
        held = (a["phases"]["checkpoints"] + a["phases"]["logging"]) / a["wall"]
        print(f"aer run {i}: checkpoints and logging held the job up {a['phases']['checkpoints']:.2f} + "
              f"{a['phases']['logging']:.2f} s = {held:.1%} of its wall time (target <= {WRITES_TARGET:.0%}: "
              f"{'ok' if held <= WRITES_TARGET else 'MISSED'}); start-up "
              f"{a['phases']['startup'] - statistics.mean(p['phases']['startup'] for p in plains):+.2f} s over plain")
        print(f"aer run {i} resident memory at each epoch's end: {flatness(a['rss_epochs'])}")
    print(f"plain run 0 resident memory at each epoch's end: {flatness(plains[0]['rss_epochs'])}")
    print("phases: startup = process start to the first line of work (interpreter, imports, Hydra; in a sweep "
          "also the time between jobs), data = cache load and split, checkpoints and logging = the time the job "
          "waited for them (aer writes checkpoint bytes in a background thread), other = building, Lightning's "
          "loop and finishing, exit = after the last metrics.json (aer) or epoch (plain)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "audioset"))
    p.add_argument("--cache-dir", default=None, help="where the HDF5 cache is or goes (default: a temp dir)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="aer jobs, each between two plain ones")
    p.add_argument("--variants", default="fc,init", help="fc: one report_fc job; init: the 6-job report_init sweep")
    args = p.parse_args()
    if not (Path(args.root) / "bal_train").is_dir():
        print(f"skipped: no bal_train split at {args.root} (the real data lives in ../shared)")
        return 0
    variants = args.variants.split(",")
    if set(variants) - {"fc", "init"}:
        p.error(f"--variants {args.variants}: expected some of fc, init")
    with tempfile.TemporaryDirectory(prefix="aer-job-speed-") as tmp:
        tmp = Path(tmp)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's aer
        env = {**os.environ, "AER_HOME": str(tmp / "home"), "PYTHONPATH": path}
        cache, split = prepare(args.root, args.cache_dir or str(tmp / "cache"), tmp)
        for v in variants:
            (tmp / v).mkdir()
            measure(args, v, cache, split, tmp, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())

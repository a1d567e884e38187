"""Does a whole aer job cost little more than a plain script? `train.py` against plain PyTorch, process to process.

Each side is one process, timed from its start to its exit. aer's is
`python train.py experiment=report_fc data=audioset ...` (imports, Hydra, the cache's load, 50 epochs
each followed by validation, checkpoints, TensorBoard, metrics.json); the plain one is
bench/plain_job.py (torch, h5py and numpy only: the same cache, the dev split aer's rule gives, the
same FC 1280-500-527, xavier, Adam lr 1e-3, batch 500, 50 epochs, one validation at the end). They run
alternately, plain first and last (plain, aer, plain, aer, ..., plain), and each aer job's ratio is
over the mean of the plain jobs on either side of it; the headline is the median ratio (target
<= 1.10). The breakdown of aer's time comes from the job's own timing.json (aer.timing): start-up
(process start to aer's run: interpreter, imports, Hydra), data, training, validation, checkpoints,
logging, the rest (building, Lightning's loop, the progress bar, finishing) and the exit after
metrics.json; the plain job stamps the same phases. Peak RSS is each process's own (wait4), and
aer's resident memory at every epoch's end shows whether it stays flat.

With `--variants init` the same is done for the report's initialization study: the 6-job sweep
`python train.py -m experiment=report_init ...` (one process, jobs one after another) against the
plain script training the 6 inits one after another in one process. With `--variants once` the aer
job does the plain script's work: `trainer.check_val_every_n_epoch=EPOCHS`, one validation, at the
end. For fc and init the bench also prints what the validations the plain script does not run cost
(aer's own seconds per validation times their number) and what their forward passes alone would
cost (a plain, warm forward pass over the validation clips, timed in the bench's own process),
each against the plain job's time.

    python bench/job_speed.py [--root ../shared/data/audioset] [--cache-dir DIR] [--epochs 50]
        [--threads 1] [--rounds 1] [--variants fc,init,once]

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

TARGET = 1.10
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
           "--out", str(out), "--epochs", str(args.epochs), "--threads", str(args.threads), "--inits", inits,
           "--init-options", json.dumps(options)]
    t0, wall, rss, rc = timed(cmd, tmp / f"plain-{i}.log", env)
    if rc:
        raise SystemExit(f"the plain job failed (exit {rc}): see {tmp / f'plain-{i}.log'}")
    t = json.loads(out.read_text())
    phases = dict.fromkeys(PHASES, 0.0)
    phases["startup"], phases["data"] = t["imported"] - t0, t["loaded"] - t["imported"]
    prev = t["loaded"]
    for r in t["runs"]:
        phases["train"] += r["trained"] - prev
        phases["validation"] += r["validated"] - r["trained"]
        prev = r["validated"]
    phases["exit"] = wall - (prev - t0)
    return {"wall": wall, "rss": rss, "phases": phases, "mAP": [r["mAP"] for r in t["runs"]], "rss_epochs": []}


def aer_run(args, cache_dir: str, variant: str, tmp: Path, i: int, env: dict) -> dict:
    run_dir = tmp / f"aer-{i}"
    common = ["data=audioset", f"data.root={args.root}", f"data.cache_dir={cache_dir}", f"threads={args.threads}",
              f"trainer.max_epochs={args.epochs}"]
    if variant in ("fc", "once"):
        cmd = [sys.executable, "train.py", "experiment=report_fc", *common, f"hydra.run.dir={run_dir}"]
        if variant == "once":  # the plain script's one validation, at the end
            cmd.append(f"trainer.check_val_every_n_epoch={args.epochs}")
    else:
        cmd = [sys.executable, "train.py", "-m", "experiment=report_init", *common, f"hydra.sweep.dir={run_dir}"]
    t0, wall, rss, rc = timed(cmd, tmp / f"aer-{i}.log", env)
    timings = sorted(run_dir.glob("**/timing.json"))
    if rc or not timings:
        raise SystemExit(f"the aer job failed (exit {rc}): see {tmp / f'aer-{i}.log'}")
    phases = dict.fromkeys(PHASES, 0.0)
    maps, rss_epochs, total = [], [], 0.0
    for path in timings:
        t = json.loads(path.read_text())
        for p in ("startup", "data", "train", "validation", "checkpoints", "logging"):
            phases[p] += t[f"{p}_s"]
        phases["other"] += t["build_s"] + t["other_fit_s"] + t["finish_s"]
        total += t["total_s"]
        rss_epochs += t["epochs_rss_mb"]
        maps.append(json.loads((path.parent / "metrics.json").read_text()).get("val/mAP"))
    phases["exit"] = wall - total  # after the last metrics.json: Hydra's job end, the interpreter's exit
    return {"wall": wall, "rss": rss, "phases": phases, "mAP": maps, "rss_epochs": rss_epochs}


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


def forward_seconds(cache: Path, split: Path, threads: int, passes: int = 7) -> float:
    """The median time of the plain script's validation forward pass (bench/plain_job.py's val_probs: FC
    1280-500-527 over the dev split's validation clips, no metrics), warm, in this process: what a
    validation cannot cost less than."""
    import h5py
    import numpy as np
    import torch
    from plain_job import fc_net, val_probs  # bench/, this script's folder

    torch.set_num_threads(threads)
    with h5py.File(cache, "r") as f:
        x, y = torch.from_numpy(f["features"][()]), torch.from_numpy(f["labels"][:1])
    val = torch.from_numpy(np.load(split)["val"])
    net = fc_net(x, y)
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        val_probs(net, x, val)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])  # the first pass allocates


def measure(args, variant: str, cache: Path, split: Path, tmp: Path, env: dict, forward_s: float) -> None:
    inits = INITS if variant == "init" else "xavier"
    plains, aers = [plain_run(args, cache, split, inits, tmp / variant, 0, env)], []
    for i in range(args.rounds):
        aers.append(aer_run(args, str(cache.parent), variant, tmp / variant, i, env))
        plains.append(plain_run(args, cache, split, inits, tmp / variant, i + 1, env))
    ratios = [a["wall"] / ((p0["wall"] + p1["wall"]) / 2) for a, p0, p1 in zip(aers, plains, plains[1:])]
    name = {"fc": "train.py experiment=report_fc", "init": "train.py -m experiment=report_init (6 jobs)",
            "once": f"train.py experiment=report_fc trainer.check_val_every_n_epoch={args.epochs}"}[variant]
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
    if variant != "once":
        jobs = len(inits.split(","))
        validations, plain_s = jobs * args.epochs, statistics.mean(p["wall"] for p in plains)
        each = statistics.mean(a["phases"]["validation"] for a in aers) / validations
        extra = (validations - jobs) * each
        forward = forward_s * (validations - jobs)
        print(f"validations the plain script does not run: {validations - jobs}, {extra:.1f} s ({each * 1e3:.0f} ms "
              f"each, aer's own) = {extra / plain_s:.1%} of the plain job's {plain_s:.1f} s; their forward passes "
              f"alone, at a plain forward pass over the validation clips ({forward_s * 1e3:.0f} ms), {forward:.1f} s = "
              f"{forward / plain_s:.1%}; start-up "
              f"{statistics.mean(a['phases']['startup'] for a in aers) - plains[0]['phases']['startup']:+.1f} s")
    for i, a in enumerate(aers):
        rss = a["rss_epochs"]
        if variant == "once":  # the job's one validation runs in its last epoch: judged over the others
            print(f"aer run {i} resident memory at each epoch's end, the last (with the one validation: "
                  f"{rss[-1]:.0f} MB) left out: {flatness(rss[:-1])}")
        else:
            print(f"aer run {i} resident memory at each epoch's end: {flatness(rss)}")
    print("phases: startup = process start to the first line of work (interpreter, imports, Hydra; in a sweep "
          "also the time between jobs), data = cache load and split, other = building, Lightning's loop, the "
          "progress bar and finishing, exit = after the last metrics.json (aer) or validation (plain)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "audioset"))
    p.add_argument("--cache-dir", default=None, help="where the HDF5 cache is or goes (default: a temp dir)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="aer jobs, each between two plain ones")
    p.add_argument("--variants", default="fc,init", help="fc: one report_fc job; init: the 6-job report_init sweep; "
                   "once: the report_fc job validating once, at the end, as the plain script does")
    args = p.parse_args()
    if not (Path(args.root) / "bal_train").is_dir():
        print(f"skipped: no bal_train split at {args.root} (the real data lives in ../shared)")
        return 0
    variants = args.variants.split(",")
    if set(variants) - {"fc", "init", "once"}:
        p.error(f"--variants {args.variants}: expected some of fc, init, once")
    with tempfile.TemporaryDirectory(prefix="aer-job-speed-") as tmp:
        tmp = Path(tmp)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's aer
        env = {**os.environ, "AER_HOME": str(tmp / "home"), "PYTHONPATH": path}
        cache, split = prepare(args.root, args.cache_dir or str(tmp / "cache"), tmp)
        forward_s = forward_seconds(cache, split, args.threads)
        for v in variants:
            (tmp / v).mkdir()
            measure(args, v, cache, split, tmp, env, forward_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())

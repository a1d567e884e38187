"""Runs each framework's trainer as a subprocess on the same data and threads, and scores its epochs.

The data are aer's HDF5 cache of the training split and the DataModule's dev split (the same
function cuts it); each trainer gets them as .npy files (the format: trainers/protocol.py) and
hands back each epoch's validation probabilities, which are scored here by aer.metrics.summarize,
the function the Tagger's validation uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aer.data.convert import load_split
from aer.data.datamodule import AudioSetDataModule, dev_split
from aer.files import atomic_open, write_json
from aer.metrics import summarize
from studies.frameworks.envs import python_for
from studies.frameworks.trainers import protocol

TRAINERS = Path(__file__).resolve().parent / "trainers"
# the checkout holding `studies`: on the aer trainer's path (python -m studies.frameworks.aer_trainer)
# whatever its working directory
CHECKOUT = Path(__file__).resolve().parents[2]
SCRIPTS = {"torch": "torch_plain.py", "tensorflow": "keras_tf.py", "mxnet": "mxnet_gluon.py", "jax": "jax_flax.py"}
FRAMEWORKS = ("torch", "aer", "tensorflow", "mxnet", "jax")
# The report's base model and its training; eps is PyTorch's and MXNet's Adam default (Keras': 1e-7).
BASE = {"batch_size": 500, "eval_batch_size": 2048, "hidden": 500, "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8}


def prepare_data(root: str, cache_dir: str | None, data_dir: Path, val_fraction: float = 0.2,
                 split_seed: int = 0) -> np.ndarray:
    """Writes the dev split's arrays into `data_dir` as the trainers read them; the val labels."""
    dm = AudioSetDataModule(root=root, cache_dir=cache_dir, val_fraction=val_fraction, split_seed=split_seed,
                            convert_workers=1)
    dm.check_layout()
    arrays = load_split(dm.prepare_split("bal_train"))
    train_rows, val_rows = dev_split(arrays["video_id"], val_fraction, split_seed)
    for name, a in (("train_x", arrays["features"][train_rows]), ("train_y", arrays["labels"][train_rows]),
                    ("val_x", arrays["features"][val_rows])):
        with atomic_open(data_dir / f"{name}.npy", "wb") as f:
            np.save(f, np.ascontiguousarray(a, dtype=np.uint8))
    return arrays["labels"][val_rows].astype(bool)


def thread_env(threads: int) -> dict[str, str]:
    """Every framework told to use `threads` cores by its own knob (each trainer also sets its API's)."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "MXNET_CPU_WORKER_NTHREADS": "1", "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1",
            "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}"}


def pinned_cpus(threads: int) -> list[int]:
    """The first `threads` CPUs this process may use: every trainer runs pinned to the same ones."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads > len(cpus):
        raise ValueError(f"--threads {threads}: this process may use only {len(cpus)} CPUs")
    return cpus[:threads]


def command(framework: str, python: str, job_dir: Path) -> list[str]:
    if framework == "aer":
        return [python, "-m", "studies.frameworks.aer_trainer", str(job_dir)]
    return [python, str(TRAINERS / SCRIPTS[framework]), str(job_dir)]


def start_trainer(framework: str, python: str, job: dict, job_dir: Path) -> subprocess.Popen:
    """Starts one job's trainer, pinned to the run's CPUs, its output in the job dir."""
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / "job.json", job)
    cpus = pinned_cpus(job["threads"])
    env = {**os.environ, **thread_env(job["threads"]), "PYTHONWARNINGS": "ignore"}
    if framework == "aer":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH")) if p)
    with open(job_dir / "stdout.txt", "w") as out, open(job_dir / "stderr.txt", "w") as err:
        return subprocess.Popen(command(framework, python, job_dir), stdout=out, stderr=err, env=env,
                                preexec_fn=lambda: os.sched_setaffinity(0, cpus))


def finish_trainer(proc: subprocess.Popen, job_dir: Path, deadline: float) -> str | None:
    """Waits for a trainer until `deadline` (time.monotonic); None when it finished, else why not."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "timed out (--timeout)"
    except BaseException:  # interrupted: no trainer outlives the harness
        proc.kill()
        raise
    if proc.returncode:
        lines = [ln for ln in (job_dir / "stderr.txt").read_text().splitlines() if ln.strip()]
        return f"trainer exited {proc.returncode}: {lines[-1].strip() if lines else 'no message'}"
    return None


def _wait_for(path: Path, proc: subprocess.Popen, deadline: float) -> bool:
    """True once `path` exists; False if the trainer exits or the deadline passes first."""
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def take_turns(jobs: list[tuple[subprocess.Popen, Path]], epochs: int, deadline: float) -> None:
    """Lets the lockstep trainers work one at a time, epoch by epoch (protocol.py: "Taking turns").

    A turn ends when the trainer is ready for its next epoch (or has exited), so the work it does
    between epochs (aer's checkpoints) falls in its own turn.
    """
    for epoch in range(1, epochs + 1):
        for proc, job_dir in jobs:
            if _wait_for(job_dir / f"ready_{epoch:03d}", proc, deadline):
                (job_dir / f"go_{epoch:03d}").touch()
                if epoch < epochs:
                    _wait_for(job_dir / f"ready_{epoch + 1:03d}", proc, deadline)
                else:
                    finish_trainer(proc, job_dir, deadline)


def score_job(job_dir: Path, labels: np.ndarray, keep_probs: bool = False) -> dict:
    """result.json with each epoch's val mAP and mAUC added, scored from its probabilities."""
    path = job_dir / "result.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable result file ({e})") from None
    y = torch.from_numpy(labels)
    for rec in result.get("epochs", []):
        p = job_dir / protocol.probs_name(rec["epoch"])
        try:
            probs = np.load(p)
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: not a readable .npy file ({e})") from None
        if probs.shape != labels.shape:
            raise ValueError(f"{p}: probabilities of shape {probs.shape}, expected {labels.shape}")
        s = summarize(torch.from_numpy(probs.astype(np.float32)), y)
        rec["mAP"], rec["mAUC"] = s["mAP"], s["mAUC"]
        if not keep_probs:
            p.unlink()
    return result


def collect(job: dict, job_dir: Path, labels: np.ndarray, why: str | None) -> dict:
    """One finished job: {"status": "ok", ...scored result} or {"status": "failed", "error": why}."""
    if why is None:
        try:
            result = score_job(job_dir, labels)
        except (ValueError, OSError) as e:
            why = str(e)
        else:
            if len(result["epochs"]) != job["epochs"]:
                why = f"trainer wrote {len(result['epochs'])} of {job['epochs']} epochs"
            else:
                return {"status": "ok", "seed": job["seed"], **result}
    return {"status": "failed", "seed": job["seed"], "error": why}


def run_job(framework: str, python: str, job: dict, job_dir: Path, labels: np.ndarray, timeout: float) -> dict:
    """One framework, one seed, alone."""
    proc = start_trainer(framework, python, {**job, "lockstep": False}, job_dir)
    return collect(job, job_dir, labels, finish_trainer(proc, job_dir, time.monotonic() + timeout))


def run_seed(jobs: dict[str, tuple[str, dict, Path]], labels: np.ndarray, timeout: float, lockstep: bool) -> dict:
    """The jobs of one seed ({framework: (python, job, job dir)}), in turns or one after another."""
    if not lockstep or not jobs:
        return {fw: run_job(fw, py, job, d, labels, timeout) for fw, (py, job, d) in jobs.items()}
    deadline = time.monotonic() + timeout * len(jobs)  # in turns, each still gets `timeout` in all
    procs = {fw: start_trainer(fw, py, {**job, "lockstep": True}, d) for fw, (py, job, d) in jobs.items()}
    try:
        take_turns([(procs[fw], d) for fw, (_, _, d) in jobs.items()], max(j["epochs"] for _, j, _ in jobs.values()),
                   deadline)
    except BaseException:
        for proc in procs.values():
            proc.kill()
        raise
    whys = {fw: finish_trainer(procs[fw], d, deadline) for fw, (_, _, d) in jobs.items()}
    return {fw: collect(job, d, labels, whys[fw]) for fw, (_, job, d) in jobs.items()}


def run_all(frameworks: list[str], seeds: list[int], epochs: int, threads: int, root: str, cache_dir: str | None,
            work: Path, install: bool = True, timeout: float = 7200, lockstep: bool = True, log=print) -> dict:
    """Every framework × seed, seed-major: a seed's frameworks run in turns, epoch by epoch
    (`lockstep`), or back to back; {framework: {"python", "where", "runs": [...]} or {"not_run": why}}."""
    data_dir = work / "data"
    labels = prepare_data(root, cache_dir, data_dir)
    n_train = len(np.load(data_dir / "train_y.npy", mmap_mode="r"))
    log(f"data: {n_train} training clips, {len(labels)} validation clips, {threads} thread(s) per trainer")
    out: dict[str, dict] = {}
    for fw in frameworks:
        python, where = python_for(fw, install=install, log=log)
        out[fw] = {"python": python, "where": where, "runs": []} if python else {"not_run": where}
    ready = [fw for fw in frameworks if "not_run" not in out[fw]]
    for seed in seeds:
        job = {"data_dir": str(data_dir), "seed": seed, "epochs": epochs, "threads": threads, **BASE,
               "data_root": str(root), "cache_dir": cache_dir, "val_fraction": 0.2, "split_seed": 0}
        log(f"seed {seed}: {', '.join(ready)}, {epochs} epoch(s) each, " + ("in turns" if lockstep else "one by one"))
        runs = run_seed({fw: (out[fw]["python"], {**job, "framework": fw}, work / f"{fw}-{seed}") for fw in ready},
                        labels, timeout, lockstep)
        for fw, run in runs.items():
            log(f"  {fw} seed {seed}: " + (f"val mAP {run['epochs'][-1]['mAP']:.4f}" if run["status"] == "ok"
                                           else f"failed: {run['error']}"))
            out[fw]["runs"].append(run)
    return {"n_train": n_train, "n_val": int(len(labels)), "threads": threads, "epochs": epochs, "seeds": seeds,
            "lockstep": lockstep, "cpus": pinned_cpus(threads), "host_cpus": os.cpu_count(),
            "python": sys.version.split()[0], "frameworks": out}

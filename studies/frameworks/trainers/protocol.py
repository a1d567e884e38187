"""The file format between `python -m studies.frameworks` (the parent) and a framework's trainer (the child).

Needs only numpy and the standard library: it runs in every framework's venv, where aer is absent.

The parent writes, in a data dir shared by all jobs:
    train_x.npy  uint8 (N, frames, 128)   the training clips' embeddings, as in aer's cache
    train_y.npy  uint8 (N, classes)       their labels, 0/1
    val_x.npy    uint8 (M, frames, 128)   the validation clips (their labels stay with the parent)
and, in the job's own dir, job.json:
    {"framework", "data_dir", "seed", "epochs", "batch_size", "eval_batch_size", "hidden", "lr",
     "betas": [b1, b2], "eps", "threads"}  (aer's own trainer also gets "data_root", "cache_dir",
     "val_fraction", "split_seed": it reads the data through its DataModule)
The child, run as `python <trainer>.py JOB_DIR`, divides the inputs by 255, trains, and after
each epoch writes (each file under a temporary name, then renamed):
    probs_EEE.npy  float32 (M, classes)   validation probabilities after epoch EEE (1-based)
    result.json    {"framework", "versions": {package: version}, "threads": {what was set},
                    "epochs": [{"epoch", "train_s", "eval_s", "elapsed_s", "loss"}, ...]}
train_s is the epoch's training loop, eval_s the validation pass, elapsed_s the time from the
start of training to the end of this epoch's validation (all of the framework's work in between
included, turns waited for not). The parent scores each probs file with aer.metrics; a child that
exits non-zero prints a one-line `error: ...` on stderr.

Taking turns (job.json "lockstep": true): the trainers of one seed run at once, and before each
epoch EEE a child creates `ready_EEE` and waits for the parent to create `go_EEE`. The parent
lets one child at a time work, epoch by epoch in turn, so that every framework's epoch EEE meets
the same load from the rest of the machine.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

JOB_KEYS = ("framework", "data_dir", "seed", "epochs", "batch_size", "eval_batch_size", "hidden", "lr",
            "betas", "eps", "threads")
ARRAYS = {"train_x": 3, "train_y": 2, "val_x": 3}


def probs_name(epoch: int) -> str:
    return f"probs_{epoch:03d}.npy"


def read_job(job_dir: str | os.PathLike) -> dict:
    path = Path(job_dir) / "job.json"
    try:
        job = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable job file ({e})") from None
    missing = [k for k in JOB_KEYS if k not in job]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    return job


def load_array(data_dir: str | os.PathLike, name: str) -> np.ndarray:
    path = Path(data_dir) / f"{name}.npy"
    try:
        a = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None
    if a.dtype != np.uint8 or a.ndim != ARRAYS[name]:
        raise ValueError(f"{path}: expected a {ARRAYS[name]}-d uint8 array, got {a.ndim}-d {a.dtype}")
    return a


def load_inputs(job: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train y, val x) as float32, x flattened per clip and divided by 255."""
    x, y, v = (load_array(job["data_dir"], n) for n in ARRAYS)
    if len(x) != len(y) or x.shape[1:] != v.shape[1:]:
        raise ValueError(f"{job['data_dir']}: train_x {x.shape}, train_y {y.shape} and val_x {v.shape} do not match")
    flat = lambda a: (a.reshape(len(a), -1).astype(np.float32) / 255.0)  # noqa: E731
    return flat(x), y.astype(np.float32), flat(v)


def batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's shuffled batches of row indices; the last one may be short."""
    perm = rng.permutation(n)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def _save(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


class Recorder:
    """Times the epochs and writes each one's probabilities and the running result.json."""

    def __init__(self, job_dir: str | os.PathLike, framework: str, versions: dict, threads: dict):
        self.dir = Path(job_dir)
        self.result = {"framework": framework, "versions": versions, "threads": threads, "epochs": []}
        self.t_start = self.t_epoch = self.t_train = None
        self.waited = 0.0  # seconds spent waiting for turns since training started
        try:
            self.lockstep = bool(json.loads((self.dir / "job.json").read_text()).get("lockstep"))
        except (OSError, ValueError):
            self.lockstep = False

    def _turn(self, epoch: int) -> None:
        t = time.perf_counter()
        (self.dir / f"ready_{epoch:03d}").touch()
        go = self.dir / f"go_{epoch:03d}"
        while not go.exists():
            time.sleep(0.002)
        if self.t_start is not None:
            self.waited += time.perf_counter() - t

    def epoch_start(self) -> None:
        if self.lockstep:
            self._turn(len(self.result["epochs"]) + 1)
        self.t_epoch = time.perf_counter()
        if self.t_start is None:
            self.t_start = self.t_epoch

    def train_end(self) -> None:
        self.t_train = time.perf_counter()

    def eval_end(self, probs: np.ndarray, loss: float, **extra) -> None:
        t = time.perf_counter()
        epochs = self.result["epochs"]
        epoch = len(epochs) + 1
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        _save(self.dir / probs_name(epoch), lambda f: np.save(f, probs))
        epochs.append({"epoch": epoch, "train_s": self.t_train - self.t_epoch, "eval_s": t - self.t_train,
                       "elapsed_s": t - self.t_start - self.waited, "loss": float(loss), **extra})
        _save(self.dir / "result.json", lambda f: f.write(json.dumps(self.result, indent=1).encode()))


def run_loop(job: dict, rec: Recorder, train_epoch, predict) -> None:
    """The epochs of a loop-style trainer: `train_epoch(batches) -> mean loss`, `predict() -> probs`.

    Both must return only when the framework has finished the work (asynchronous frameworks wait
    for it), so that the times are the work's.
    """
    rng = np.random.default_rng(job["seed"])
    n = job["n_train"]
    for _ in range(job["epochs"]):
        rec.epoch_start()
        loss = train_epoch(batches(n, job["batch_size"], rng))
        rec.train_end()
        rec.eval_end(predict(), loss)


def main(train) -> int:
    """Entry point of a trainer script: `train(job, job_dir)`; errors become one line on stderr."""
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} JOB_DIR", file=sys.stderr)
        return 2
    try:
        train(read_job(sys.argv[1]), Path(sys.argv[1]))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

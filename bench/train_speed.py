"""Does Lightning add little? aer's training loop against a plain PyTorch loop, side by side, for every
registered network at the report's batch sizes.

Both train the same network (the Tagger's, so the same init) with the same batch size, Adam and loss
on the same in-memory uint8 tensors of the real bal_train (dev split), gathering a batch at a time.
They alternate every fetch: after each of aer's training fetches (a block of data.steps_per_fetch
batches, from aer.settings unless --steps-per-fetch says otherwise) the plain loop takes as many
steps, so both see the same load on the machine, however it comes and goes. aer's time is all that
is not the plain loop's: its data fetches, steps, Lightning's hooks, logging and the epoch's start.
A cell's ratio is the median over its epochs (after the first, which pays for warm-up) of aer's time
over the plain loop's; aer's epoch-level work (validation, checkpoint writes, logging) is timed
separately, as "epoch overheads".

Memory: the peak resident set (RSS) of each aer epoch (training and its validation); a cell prints its
peak and the growth of the epochs' peaks from the second epoch to the last (flat: within a few MB).
With --device cuda the peak device memory per cell (torch.cuda.max_memory_allocated) too; there the
data lives on the device (data.device_resident) and the plain loop gathers its batches there as well,
reading the loss only at logging steps.

    python bench/train_speed.py [--root ../shared/data/audioset] [--epochs 4]
        [--batch-sizes 50,100,500,1000,2000] [--models fc,skiplstm,attention,multiattention]
        [--threads 1] [--clips N] [--device cpu|cuda]

--clips N trains on the first N clips of the dev split's training 80% (an epoch of N clips; both loops
alike), to keep the slow networks' cells short. The exit status is 0 even when a target is missed: this
is a measurement, printed as one; "MISSED" marks the cells above the target.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aer.config  # noqa: E402,F401 — registers the config schema and resolvers
from aer.callbacks import FrozenHeap  # noqa: E402
from aer.data.datamodule import AudioSetDataModule  # noqa: E402
from aer.models import NETS  # noqa: E402
from aer.module import Tagger  # noqa: E402
from aer.timing import rss_mb  # noqa: E402

# The report's two models as the report sized them; the attention models at their aer defaults.
MODEL_KWARGS = {"fc": {"hidden": [500]}, "skiplstm": {"layers": 2, "hidden": 128}}
TARGET = {"cpu": 1.05, "cuda": 1.2}
LOG_EVERY = 10


class PlainLoop:
    """A hand-written loop: permutation, gather, forward, backward, step. Same data, net, batch size."""

    def __init__(self, ds, net_name: str, batch_size: int, seed: int, device: torch.device):
        torch.manual_seed(seed)
        self.net = Tagger(model=net_name, init="xavier", model_kwargs=MODEL_KWARGS.get(net_name)).net.to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.ds, self.bs, self.device = ds, batch_size, device
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.step = 0
        self._batches = iter(())

    def new_epoch(self) -> None:
        n = len(self.ds)
        perm = torch.randperm(n, device=self.device)
        self._batches = (perm[i:i + self.bs] for i in range(0, n, self.bs))

    def steps(self, k: int) -> float:
        """Takes the epoch's next `k` steps; returns the seconds they took."""
        self.sync()
        t0 = time.perf_counter()
        for idx in itertools.islice(self._batches, k):
            b = self.ds[idx]
            x = Tagger.scale(b["features"], b["lengths"])
            loss = F.binary_cross_entropy_with_logits(self.net(x, b["lengths"]), b["y"])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.step += 1
            if self.device.type == "cpu" or self.step % LOG_EVERY == 0:
                loss.item()
        self.sync()
        return time.perf_counter() - t0


class Interleave(pl.Callback):
    """After each of aer's training fetches, the plain loop takes as many steps, so the two alternate every
    fetch (a block of data.steps_per_fetch steps) and see the same machine load. aer's time is everything
    between those plain turns: its fetches, steps, hooks, logging and epoch start. Also keeps each epoch's
    peak RSS, sampled after every training fetch and validation batch (a read of /proc, ~20 µs)."""

    def __init__(self, plain: PlainLoop):
        self.plain = plain
        self.aer_times: list[float] = []
        self.plain_times: list[float] = []
        self.rss: list[float] = []
        self._peak = self._mark = self._aer = self._plain = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.plain.new_epoch()
        self._aer = self._plain = 0.0
        self.plain.sync()
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.plain.sync()
        self._aer += time.perf_counter() - self._mark
        self._peak = max(self._peak, rss_mb())
        self._plain += self.plain.steps(len(batch.get("steps", [None])))
        self._mark = time.perf_counter()

    def on_validation_batch_end(self, *_) -> None:
        self._peak = max(self._peak, rss_mb())

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after this epoch's validation
        self.aer_times.append(self._aer)
        self.plain_times.append(self._plain)
        self.rss.append(max(self._peak, rss_mb()))
        self._peak = 0.0


def measure(args, net_name: str, batch_size: int, seed: int = 0) -> dict:
    device = torch.device(args.device)
    pl.seed_everything(seed, verbose=False)
    settings = {"steps_per_fetch": args.steps_per_fetch} if args.steps_per_fetch else {}
    dm = AudioSetDataModule(root=args.root, cache_dir=args.cache_dir, batch_size=batch_size, seed=seed, **settings)
    dm.prepare_data()
    dm.setup("fit")
    train = dm._sets["train"]
    if args.clips:
        train.rows = train.rows[:args.clips]
    served = train.to(device, {}) if device.type != "cpu" else train
    model = Tagger(model=net_name, init="xavier", model_kwargs=MODEL_KWARGS.get(net_name))
    inter = Interleave(PlainLoop(served, net_name, batch_size, seed, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=out, filename="best", monitor="val/mAP", mode="max",
                                            save_last=True, auto_insert_metric_name=False)
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                             logger=pl.loggers.TensorBoardLogger(out), callbacks=[ckpt, FrozenHeap(), inter],
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             use_distributed_sampler=False, log_every_n_steps=LOG_EVERY)
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        wall = time.perf_counter() - t0
    n = len(train)
    aer_times, plain_times = inter.aer_times, inter.plain_times
    if args.verbose:
        print(f"{net_name} batch {batch_size}: aer epochs {[round(t, 3) for t in aer_times]} s, "
              f"plain {[round(t, 3) for t in plain_times]} s", flush=True)
    pairs = [a / p for a, p in zip(aer_times[1:], plain_times[1:])] or [aer_times[0] / plain_times[0]]
    return {
        "net": net_name, "batch": batch_size, "clips": n, "steps_per_fetch": dm.steps_per_fetch,
        "plain_rate": n / statistics.median(plain_times[1:] or plain_times),
        "aer_rate": n / statistics.median(aer_times[1:] or aer_times),
        "ratio": statistics.median(pairs), "lo": min(pairs), "hi": max(pairs),
        "overhead": wall - sum(aer_times) - sum(plain_times),
        "rss_peak": max(inter.rss), "rss_growth": inter.rss[-1] - inter.rss[min(1, len(inter.rss) - 1)],
        "cuda_peak": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "audioset"))
    p.add_argument("--cache-dir", default=None, help="where the HDF5 cache goes (default: a temp dir)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-sizes", default="50,100,500,1000,2000")
    p.add_argument("--models", default=",".join(sorted(NETS)))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--clips", type=int, default=None, help="train on this many clips an epoch (default: all)")
    p.add_argument("--steps-per-fetch", type=int, default=None, help="data.steps_per_fetch (default: aer's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--verbose", action="store_true", help="print each epoch's times")
    args = p.parse_args()
    if not (Path(args.root) / "bal_train").is_dir():
        print(f"skipped: no bal_train split at {args.root} (the real data lives in ../shared)")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda but torch sees no CUDA device")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="aer-bench-")
    target = TARGET[args.device]
    rows = []
    for name in args.models.split(","):
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            rows.append(measure(args, name, bs))
            r = rows[-1]
            print(f"measured {name} batch {bs}: aer/plain {r['ratio']:.3f}", flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nreal bal_train dev split, {rows[0]['clips']} training clips an epoch, {args.epochs} epochs a cell, "
          f"torch {torch.__version__}, {device}; steps: data.steps_per_fetch")
    print(f"{'model':15} {'batch':>5} {'steps':>5} {'plain clips/s':>14} {'aer clips/s':>12} {'aer/plain':>10} "
          f"{'target':>7} "
          f"{'(pairs range)':>14} {'epoch overheads s':>18} {'RSS peak MB':>12} {'RSS growth MB':>14}"
          + (f" {'CUDA peak MB':>13}" if args.device == "cuda" else ""))
    for r in rows:
        ok = "ok" if r["ratio"] <= target else "MISSED"
        print(f"{r['net']:15} {r['batch']:5d} {r['steps_per_fetch']:5d} {r['plain_rate']:14,.0f} "
              f"{r['aer_rate']:12,.0f} {r['ratio']:10.3f} "
              f"{'<=' + str(target):>7} {r['lo']:6.3f}-{r['hi']:<7.3f} {r['overhead']:18.2f} {r['rss_peak']:12.0f} "
              f"{r['rss_growth']:14.1f}" + (f" {r['cuda_peak']:13.0f}" if args.device == "cuda" else "") + f"  {ok}")
    print("clips/s: the median training epoch after the first, of each; aer/plain: the median over the epochs "
          "after the first of aer's time over the plain loop's; (pairs range): the lowest and highest epoch")
    print("epoch overheads: validation + checkpoint writes + logging + setup (aer's wall time minus its "
          "training-loop time and the interleaved plain epochs); RSS growth: the last epoch's peak minus the second's")
    return 0


if __name__ == "__main__":
    sys.exit(main())

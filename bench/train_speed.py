"""Does Lightning add little? aer's training throughput against a plain PyTorch loop, side by side.

Both train the same network with the same batch size, Adam and loss on the same in-memory
uint8 tensors of the real bal_train (dev split), gathering a batch at a time. The plain loop runs
one epoch right after each of aer's epochs, so each pair of epochs is timed under the same load on
the machine; the headline ratio is the median over the pairs (after the first, which pays for
warm-up) of aer's epoch time over the plain epoch's. Timing is inside the training loop; aer's
epoch-level work (validation, checkpoint writes, logging) is timed separately.

    python bench/train_speed.py [--root ../shared/data/audioset] [--epochs 10]
"""

from __future__ import annotations

import argparse
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
from aer.data.datamodule import AudioSetDataModule  # noqa: E402
from aer.module import Tagger  # noqa: E402

MODELS = {"fc": {"hidden": [500]}, "skiplstm": {"layers": 2, "hidden": 128}}
TARGETS = {"fc": 1.15, "skiplstm": 1.10}


class PlainLoop:
    """A hand-written epoch: permutation, gather, forward, backward, step. Same data, net, batch size."""

    def __init__(self, dm: AudioSetDataModule, net_name: str, seed: int):
        torch.manual_seed(seed)
        self.net = Tagger(model=net_name, init="xavier", model_kwargs=MODELS[net_name]).net
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.ds, self.bs = dm.train_dataloader().dataset, dm.batch_size
        self.rates: list[float] = []

    def epoch(self) -> None:
        n = len(self.ds)
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for i in range(0, n, self.bs):
            b = self.ds[perm[i:i + self.bs]]
            x = Tagger.scale(b["features"], b["lengths"])
            loss = F.binary_cross_entropy_with_logits(self.net(x, b["lengths"]), b["y"])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            loss.item()
        self.rates.append(n / (time.perf_counter() - t0))


class Interleave(pl.Callback):
    """Runs one plain epoch after each aer epoch, so both see the same machine load."""

    def __init__(self, plain: PlainLoop):
        self.plain = plain

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.plain.epoch()


def measure(root: str, cache_dir: str, net_name: str, epochs: int, seed: int, batch_size: int):
    from aer.callbacks import FrozenHeap, Throughput

    pl.seed_everything(seed, verbose=False)
    dm = AudioSetDataModule(root=root, cache_dir=cache_dir, batch_size=batch_size, seed=seed)
    dm.prepare_data()
    dm.setup("fit")
    model = Tagger(model=net_name, init="xavier", model_kwargs=MODELS[net_name])
    tp, plain = Throughput(), PlainLoop(dm, net_name, seed)
    with tempfile.TemporaryDirectory() as out:
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=out, filename="best", monitor="val/mAP", mode="max",
                                            save_last=True, auto_insert_metric_name=False)
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=pl.loggers.TensorBoardLogger(out),
                             callbacks=[tp, ckpt, FrozenHeap(), Interleave(plain)], enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
                             log_every_n_steps=10)
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        wall = time.perf_counter() - t0
    n = len(dm.train_dataloader().dataset)
    aer_train = sum(n / r for r in tp.epoch_rates)
    plain_time = sum(n / r for r in plain.rates)
    return tp.epoch_rates, plain.rates, wall - aer_train - plain_time, wall - plain_time, n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "audioset"))
    p.add_argument("--cache-dir", default=None, help="where the HDF5 cache goes (default: a temp dir)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--models", default="fc,skiplstm")
    args = p.parse_args()
    if not (Path(args.root) / "bal_train").is_dir():
        print(f"skipped: no bal_train split at {args.root} (the real data lives in ../shared)")
        return 0
    cache = args.cache_dir or tempfile.mkdtemp(prefix="aer-bench-")
    rows = []
    for name in args.models.split(","):
        rates, plain, overhead, wall, n = measure(args.root, cache, name, args.epochs, 0, args.batch_size)
        # Paired: aer's epoch i and the plain epoch run right after it saw the same machine; the
        # median of the pairs' ratios is robust to load that comes and goes (other processes, a
        # CPU's clock). The ratio of the fastest epochs is printed beside it.
        pairs = [p_rate / a_rate for a_rate, p_rate in zip(rates[1:], plain[1:])] or [plain[0] / rates[0]]
        fastest = max(plain[1:] or plain) / max(rates[1:] or rates)
        rows.append((name, statistics.median(plain[1:] or plain), statistics.median(rates[1:] or rates),
                     statistics.median(pairs), fastest, min(pairs), max(pairs), overhead, wall))
    print(f"\nreal bal_train dev split, {n} training clips, batch {args.batch_size}, "
          f"{args.epochs} epochs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':10} {'plain clips/s':>14} {'aer clips/s':>12} {'aer/plain time':>15} {'target':>7} "
          f"{'(fastest)':>10} {'(pairs range)':>14} {'epoch overheads s':>18} {'aer wall s':>11}")
    for name, pr, ar, ratio, fastest, lo, hi, over, wall in rows:
        ok = "ok" if ratio <= TARGETS[name] else "MISSED"
        print(f"{name:10} {pr:14,.0f} {ar:12,.0f} {ratio:15.3f} {'<=' + str(TARGETS[name]):>7} {fastest:10.3f} "
              f"{lo:6.3f}-{hi:<7.3f} {over:18.2f} {wall:11.2f}  {ok}")
    print("clips/s: median training epoch after the first, of each; aer/plain time: median over epoch pairs "
          "after the first; (fastest): the fastest epochs' ratio; (pairs range): the lowest and highest pair")
    print("epoch overheads: validation + checkpoint writes + logging + setup (aer's wall time minus its "
          "training-loop time and the interleaved plain epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

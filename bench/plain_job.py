"""The plain PyTorch job that bench/job_speed.py measures aer's train.py against: torch, h5py and numpy only.

It does the work an aer report_fc job does, written as a competent engineer writes a plain script:
it reads the same HDF5 cache aer trains from, takes the dev split's rows that aer's rule gives
(written by the bench into --split, an .npz of train and val rows), trains FC 1280-500-527
(xavier or another torch.nn.init scheme, zero biases) with Adam and sigmoid cross-entropy in
shuffled batches, and after every epoch validates (one forward pass over the validation clips, their
loss, mAP and mAUC from one sort of every class's scores and binary searches, ties grouped), keeps
last.ckpt and best.ckpt (weights, optimizer, epoch; written under a temporary name and renamed) and
logs the epoch's curves
(train loss, learning rate, val loss, mAP, mAUC) with TensorBoard's SummaryWriter. It writes the
wall clock at each phase's end to --out (JSON) for the bench to turn into a breakdown:

    python bench/plain_job.py --cache CACHE.h5 --split SPLIT.npz --out OUT.json --run-dir DIR [--epochs 50]
        [--threads 1] [--inits xavier] [--init-options '{"xavier": {"gain": 1.0}}']

With several --inits (comma-separated) it trains one model after another in the one process, as
a plain script of the report's initialization study would (each in DIR/<init>); the cache is read once.
"""

import argparse
import json
import os
import resource
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter


def ap_auc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean AP and mean AUC over the classes with positives (and negatives, for AUC); ties grouped.
    One sort of every class's scores (one call), then each class's positives found in them by binary search:
    a class's AP is the mean over its positives of (positives scored >= it) / (clips scored >= it), its AUC
    the share of (positive, negative) pairs the positive wins, ties counting half."""
    s = np.ascontiguousarray(scores.T)  # classes as rows
    y = np.ascontiguousarray(labels.T)
    ranked = np.sort(s, axis=1)
    n = s.shape[1]
    aps, aucs = [], []
    for c in np.flatnonzero(y.any(1)):
        p = np.sort(s[c, y[c]])  # the positives' scores
        k = len(p)
        all_lt, all_le = np.searchsorted(ranked[c], p, "left"), np.searchsorted(ranked[c], p, "right")
        pos_lt, pos_le = np.searchsorted(p, p, "left"), np.searchsorted(p, p, "right")
        aps.append(np.mean((k - pos_lt) / (n - all_lt)))
        if k < n:
            below = (all_lt - pos_lt) + 0.5 * ((all_le - all_lt) - (pos_le - pos_lt))  # negatives under, tied
            aucs.append(below.sum() / (k * (n - k)))
    return float(np.mean(aps)), float(np.mean(aucs))


def init_net(net: nn.Module, name: str, options: dict) -> None:
    fns = {"xavier": nn.init.xavier_uniform_, "kaiming": nn.init.kaiming_uniform_, "orthogonal": nn.init.orthogonal_,
           "normal": nn.init.normal_, "uniform": nn.init.uniform_}
    if name == "default":
        return
    kwargs = dict(options)
    if name == "uniform":
        kwargs = {"a": -options["a"], "b": options["a"]}
    if name == "kaiming":
        kwargs["mode"] = "fan_in"
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                fns[name](m.weight, **kwargs)
                m.bias.zero_()


def fc_net(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """FC 1280-500-527 for features x (clips, frames, dims) and labels y (clips, classes)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(x.shape[1] * x.shape[2], 500), nn.ReLU(), nn.Linear(500, y.shape[1]))


def val_logits(net: nn.Module, x: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """The validation's forward pass: logits of the `val` clips, in one batch."""
    with torch.no_grad():
        return net(x[val].float().div(255))


def save(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def train_one(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, val: torch.Tensor, init: str, options: dict,
              epochs: int, batch: int, seed: int, run_dir: Path) -> dict:
    """Trains one model; the seconds it spent in each phase."""
    torch.manual_seed(seed)
    net = fc_net(x, y)
    init_net(net, init, options)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(run_dir))
    y_val = y[val]
    y_val_np = y_val.numpy().astype(bool)
    seconds = dict.fromkeys(("train", "validation", "checkpoints", "logging"), 0.0)
    best, rss, validations = -1.0, [], []
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        net.train()
        perm = train[torch.randperm(len(train))]
        total, count = torch.zeros(()), 0
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            loss = F.binary_cross_entropy_with_logits(net(x[idx].float().div(255)), y[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            count += len(idx)
        t1 = time.perf_counter()
        net.eval()
        logits = val_logits(net, x, val)
        val_loss = float(F.binary_cross_entropy_with_logits(logits, y_val.float()))
        mean_ap, mean_auc = ap_auc(torch.sigmoid(logits).numpy(), y_val_np)
        t2 = time.perf_counter()
        state = {"state_dict": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "mAP": mean_ap}
        if mean_ap > best:
            best = mean_ap
            save(state, run_dir / "checkpoints" / "best.ckpt")
        save(state, run_dir / "checkpoints" / "last.ckpt")
        t3 = time.perf_counter()
        for k, v in {"train/loss_epoch": float(total) / count, "train/lr": opt.param_groups[0]["lr"],
                     "val/loss": val_loss, "val/mAP": mean_ap, "val/mAUC": mean_auc}.items():
            writer.add_scalar(k, v, epoch)
        writer.flush()
        t4 = time.perf_counter()
        for k, a, b in (("train", t, t1), ("validation", t1, t2), ("checkpoints", t2, t3), ("logging", t3, t4)):
            seconds[k] += b - a
        rss.append(round(rss_mb(), 1))
        validations.append(t2 - t1)
    writer.close()
    return {"init": init, "seconds": seconds, "mAP": mean_ap, "mAUC": mean_auc, "best": best, "epochs_rss_mb": rss,
            "validations_s": validations}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inits", default="xavier")
    p.add_argument("--init-options", default="{}", help="JSON: {scheme: {option: value}}")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    options = json.loads(args.init_options)
    t = {"imported": time.time()}  # the imports are done
    with h5py.File(args.cache, "r") as f:  # the checksummed chunks are verified as they are read
        x, y = torch.from_numpy(f["features"][()]), torch.from_numpy(f["labels"][()])
    rows = np.load(args.split)
    train, val = torch.from_numpy(rows["train"]), torch.from_numpy(rows["val"])
    t["loaded"] = time.time()
    t["runs"] = [train_one(x, y, train, val, name, options.get(name, {}), args.epochs, args.batch_size, args.seed,
                           Path(args.run_dir) / name) for name in args.inits.split(",")]
    t["finished"] = time.time()
    t["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    with open(args.out, "w") as f:
        json.dump(t, f)


if __name__ == "__main__":
    main()

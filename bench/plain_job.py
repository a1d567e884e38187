"""The plain PyTorch job that bench/job_speed.py measures aer's train.py against: torch, h5py and numpy only.

It reads the same HDF5 cache aer trains from, takes the dev split's rows that aer's rule gives
(written by the bench into --split, an .npz of train and val rows), trains FC 1280-500-527
(xavier or another torch.nn.init scheme, zero biases) with Adam and sigmoid cross-entropy in
shuffled batches, validates once at the end (mAP and mAUC, ties grouped), and writes the wall
clock at each phase's end to --out (JSON) for the bench to turn into a breakdown:

    python bench/plain_job.py --cache CACHE.h5 --split SPLIT.npz --out OUT.json [--epochs 50] [--threads 1]
        [--inits xavier] [--init-options '{"xavier": {"gain": 1.0}}']

With several --inits (comma-separated) it trains one model after another in the one process, as
a plain script of the report's initialization study would; the cache is read once.
"""

import argparse
import json
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def ap_auc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean AP and mean AUC over the classes with positives (and negatives, for AUC); ties grouped."""
    aps, aucs = [], []
    n = len(scores)
    for c in range(scores.shape[1]):
        y = labels[:, c]
        pos = int(y.sum())
        if pos == 0:
            continue
        s = scores[:, c]
        order = np.argsort(-s, kind="stable")
        s, y = s[order], y[order]
        tps = np.cumsum(y)
        last = np.r_[s[1:] != s[:-1], True]  # each tie group's last rank
        tp, rank = tps[last], np.flatnonzero(last) + 1
        fp = rank - tp
        dtp = np.diff(np.r_[0, tp])
        aps.append(float((dtp * tp / rank).sum() / pos))
        if pos < n:
            dfp, tp_prev = np.diff(np.r_[0, fp]), np.r_[0, tp[:-1]]
            aucs.append(float((dfp * (tp + tp_prev) / 2).sum() / (pos * (n - pos))))
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


def val_probs(net: nn.Module, x: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """The validation's forward pass: probabilities of the `val` clips."""
    with torch.no_grad():
        return torch.sigmoid(net(x[val].float().div(255)))


def train_one(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, val: torch.Tensor, init: str, options: dict,
              epochs: int, batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    net = fc_net(x, y)
    init_net(net, init, options)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = train[torch.randperm(len(train))]
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            loss = F.binary_cross_entropy_with_logits(net(x[idx].float().div(255)), y[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    t_trained = time.time()
    probs = val_probs(net, x, val).numpy()
    mean_ap, mean_auc = ap_auc(probs, y[val].numpy())
    return {"init": init, "trained": t_trained, "validated": time.time(), "mAP": mean_ap, "mAUC": mean_auc,
            "loss": loss.item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
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
    t["runs"] = [train_one(x, y, train, val, name, options.get(name, {}), args.epochs, args.batch_size, args.seed)
                 for name in args.inits.split(",")]
    with open(args.out, "w") as f:
        json.dump(t, f)


if __name__ == "__main__":
    main()

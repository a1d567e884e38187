"""The base model in plain PyTorch: a hand-written loop, no Lightning. `python torch_plain.py JOB_DIR`."""

from __future__ import annotations

import protocol
import torch
import torch.nn.functional as F
from torch import nn


def build(job: dict, in_dim: int, classes: int) -> nn.Module:
    net = nn.Sequential(nn.Linear(in_dim, job["hidden"]), nn.ReLU(), nn.Linear(job["hidden"], classes))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def train(job: dict, job_dir) -> None:
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    x, y, v = (torch.from_numpy(a) for a in protocol.load_inputs(job))
    job["n_train"] = len(x)
    net = build(job, x.shape[1], y.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=job["lr"], betas=tuple(job["betas"]), eps=job["eps"])
    rec = protocol.Recorder(job_dir, "torch", {"torch": torch.__version__},
                            {"torch.set_num_threads": torch.get_num_threads()})

    def train_epoch(batches) -> float:
        net.train()
        total = torch.zeros(())
        for idx in batches:
            idx = torch.from_numpy(idx)
            loss = F.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        return float(total) / len(x)

    @torch.no_grad()
    def predict():
        net.eval()
        bs = job["eval_batch_size"]
        return torch.cat([torch.sigmoid(net(v[i:i + bs])) for i in range(0, len(v), bs)]).numpy()

    protocol.run_loop(job, rec, train_epoch, predict)


if __name__ == "__main__":
    raise SystemExit(protocol.main(train))

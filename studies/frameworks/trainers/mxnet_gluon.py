"""The base model in MXNet Gluon (hybridized). `python mxnet_gluon.py JOB_DIR`.

Threads: MXNet reads OMP_NUM_THREADS (the threads of one operator) and MXNET_CPU_WORKER_NTHREADS
(operators run at once) from the environment when it is imported; the parent sets both.
"""

from __future__ import annotations

import os

import mxnet as mx
import numpy as np
import protocol
from mxnet import autograd, gluon, nd


def build(job: dict, in_dim: int, classes: int) -> gluon.nn.HybridSequential:
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(job["hidden"], activation="relu", in_units=in_dim),
            gluon.nn.Dense(classes, in_units=job["hidden"]))
    # Xavier(uniform, avg, 3) is Glorot uniform: U(±sqrt(6 / (fan_in + fan_out))); biases start at zero.
    net.initialize(mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3))
    net.hybridize()
    return net


def train(job: dict, job_dir) -> None:
    mx.random.seed(job["seed"])
    x, y, v = protocol.load_inputs(job)
    job["n_train"] = len(x)
    net = build(job, x.shape[1], y.shape[1])
    b1, b2 = job["betas"]
    trainer = gluon.Trainer(net.collect_params(), "adam",
                            {"learning_rate": job["lr"], "beta1": b1, "beta2": b2, "epsilon": job["eps"]})
    loss_fn = gluon.loss.SigmoidBinaryCrossEntropyLoss()  # on logits; mean over classes per clip
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS")}
    rec = protocol.Recorder(job_dir, "mxnet", {"mxnet": mx.__version__, "numpy": np.__version__}, threads)

    def train_epoch(batches) -> float:
        total = nd.zeros(1)
        for idx in batches:
            xb, yb = nd.array(x[idx]), nd.array(y[idx])
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(len(idx))  # gradients of the summed clip losses, divided by the batch size
            total += loss.sum()
        out = float(total.asscalar()) / len(x)
        nd.waitall()  # MXNet runs asynchronously: the epoch ends when its work has
        return out

    def predict() -> np.ndarray:
        bs = job["eval_batch_size"]
        return nd.concat(*[net(nd.array(v[i:i + bs])).sigmoid() for i in range(0, len(v), bs)], dim=0).asnumpy()

    protocol.run_loop(job, rec, train_epoch, predict)


if __name__ == "__main__":
    raise SystemExit(protocol.main(train))

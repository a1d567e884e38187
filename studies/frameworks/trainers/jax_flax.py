"""The base model in JAX with Flax (linen) and Optax. `python jax_flax.py JOB_DIR`.

Threads: XLA's CPU backend takes its thread count from XLA_FLAGS
(`--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=N`), which the parent sets, and
is held to N cores by the CPU affinity the parent gives every trainer.
"""

from __future__ import annotations

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import protocol
from flax import linen as nn


class MLP(nn.Module):
    hidden: int
    classes: int

    @nn.compact
    def __call__(self, x):
        xavier = nn.initializers.xavier_uniform()  # biases: Dense's default, zeros
        x = nn.relu(nn.Dense(self.hidden, kernel_init=xavier)(x))
        return nn.Dense(self.classes, kernel_init=xavier)(x)


def train(job: dict, job_dir) -> None:
    x, y, v = protocol.load_inputs(job)
    job["n_train"] = len(x)
    model = MLP(job["hidden"], y.shape[1])
    params = model.init(jax.random.PRNGKey(job["seed"]), jnp.zeros((1, x.shape[1]), jnp.float32))
    b1, b2 = job["betas"]
    tx = optax.adam(job["lr"], b1=b1, b2=b2, eps=job["eps"])
    state = [params, tx.init(params)]

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            return optax.sigmoid_binary_cross_entropy(model.apply(p, xb), yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    probs = jax.jit(lambda p, xb: jax.nn.sigmoid(model.apply(p, xb)))
    versions = {"jax": jax.__version__, "jaxlib": jax.lib.__version__, "flax": flax.__version__,
                "optax": optax.__version__}
    threads = {"XLA_FLAGS": os.environ.get("XLA_FLAGS"), "cpus": len(os.sched_getaffinity(0))}
    rec = protocol.Recorder(job_dir, "jax", versions, threads)

    def train_epoch(batches) -> float:
        losses = []
        for idx in batches:
            state[0], state[1], loss = step(state[0], state[1], x[idx], y[idx])
            losses.append(loss * len(idx))
        jax.block_until_ready(state)  # dispatch is asynchronous: the epoch ends when its work has
        return float(sum(jax.device_get(losses))) / len(x)

    def predict() -> np.ndarray:
        bs = job["eval_batch_size"]
        return np.concatenate([np.asarray(probs(state[0], v[i:i + bs])) for i in range(0, len(v), bs)])

    protocol.run_loop(job, rec, train_epoch, predict)


if __name__ == "__main__":
    raise SystemExit(protocol.main(train))

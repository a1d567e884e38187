"""DDP: `trainer=ddp_cpu` (2 processes, gloo) trains as one run, scores every clip exactly once, and
its metrics equal a single-process evaluation of the checkpoint it wrote (also when a rank has no
clips to score: the metric gather must still be complete); the presets build the Trainers they
describe (`trainer=ddp`: devices x num_nodes ranks). The samplers' sharding is checked without processes.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aer.data.sampler import BalancedBatchSampler, EpochBatchSampler, EvalBatchSampler
from conftest import TINY, compose_cfg, run_script

# The tiny demo set: 600 clips, 300 eval clips; 100 clips per rank and training batch.
DDP_ARGS = ("trainer=ddp_cpu", "data.convert_workers=1", f"data.demo.clips={TINY}", "data.demo.eval_clips=300",
            "data.batch_size=100", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1")


def _single_process_scores(ckpt: Path, split: str) -> tuple[dict, int]:
    """What `python evaluate.py ckpt=... split=...` computes, in this process."""
    from aer.checkpoint import Checkpoint
    from aer.inference import predict_split
    from aer.metrics import summarize

    c = Checkpoint.load(ckpt)
    probs, labels, _ = predict_split(c.tagger(), c.datamodule(split))
    return summarize(torch.from_numpy(probs), torch.from_numpy(labels)), len(probs)


def _run_ok(*args: str) -> None:
    proc = run_script("train.py", *args, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])


@pytest.mark.slow
def test_ddp_cpu_dev_run_matches_single_process_evaluate(demo_root, tmp_path):
    # val_fraction=0.195: 111 val clips in 3 batches of <= 50: rank 0 scores 61 clips, rank 1 50
    _run_ok(*DDP_ARGS, f"data.root={demo_root}", "data.val_fraction=0.195", "data.eval_batch_size=50",
            "trainer.max_epochs=2",
            f"paths.log_dir={tmp_path}")
    runs = list((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 1, f"one Hydra run dir for both ranks, found {runs}"
    run_dir = runs[0]
    assert [p.parent for p in tmp_path.rglob("metrics.json")] == [run_dir]
    assert [p.parent for p in tmp_path.rglob(".hydra")] == [run_dir], "rank 1 must not write a config dir"
    # rank 1 really ran, in the same dir, under its own job name
    assert (run_dir / "train.log").exists() and (run_dir / "train_ddp_process_1.log").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list(run_dir.rglob("events.out.tfevents.*"))) == 1, "only rank 0 logs"

    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok" and m["epochs"] == 2
    # 489 training clips over 2 ranks: 245 each (one padded by wrapping), 3 batches of <= 100 per rank
    assert m["global_step"] == 2 * math.ceil(math.ceil(489 / 2) / 100)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["epoch"] == 1, "last.ckpt must hold the last epoch's weights"

    ref, clips = _single_process_scores(run_dir / "checkpoints" / "last.ckpt", "val")
    assert clips == 111
    assert m["val/mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
    assert m["val/mAUC"] == pytest.approx(ref["mAUC"], abs=1e-6)
    assert m["val/classes_scored"] == ref["classes_scored"], "a clip was dropped or scored twice"


@pytest.mark.slow
def test_ddp_cpu_final_multirun_matches_single_process_evaluate(demo_root, tmp_path):
    """Two DDP jobs in one sweep (the basic launcher): rank 1 re-runs its job only, in that job's dir.

    The 300 eval clips fit one test batch of 2048: rank 1 scores none and still joins the gather.
    """
    _run_ok("-m", "seed=1,2", *DDP_ARGS, f"data.root={demo_root}", "data.mode=final", "data.eval_batch_size=2048",
            "trainer.max_epochs=1",
            f"paths.log_dir={tmp_path}")
    sweeps = list((tmp_path / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, f"rank 1 must not start a sweep of its own: {sweeps}"
    sweep = sweeps[0]
    assert not (tmp_path / "train" / "runs").exists()
    assert sorted(p.parent.name for p in sweep.rglob("metrics.json")) == ["0", "1"]
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok")], rows
    for job in ("0", "1"):
        assert (sweep / job / "train_ddp_process_1.log").exists()
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert m["status"] == "ok", m
        ref, clips = _single_process_scores(sweep / job / "checkpoints" / "final.ckpt", "eval")
        assert clips == 300
        assert m["test/mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
        assert m["test/mAUC"] == pytest.approx(ref["mAUC"], abs=1e-6)
        assert m["test/classes_scored"] == ref["classes_scored"]


def test_ddp_presets_build_the_trainers_they_describe(tmp_path):
    """What Lightning makes of each preset (no process starts before fit); `trainer=ddp` is built on
    the CPU here, since there is no GPU: devices x num_nodes ranks."""
    import hydra.utils
    from pytorch_lightning.strategies import DDPStrategy

    def build(*overrides: str):
        cfg = compose_cfg("train", [*overrides, f"paths.output_dir={tmp_path}"])
        return hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)

    cpu = build("trainer=ddp_cpu")
    assert isinstance(cpu.strategy, DDPStrategy) and cpu.strategy.process_group_backend == "gloo"
    assert cpu.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 0}
    many = build("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=4", "trainer.num_nodes=2")
    assert isinstance(many.strategy, DDPStrategy)
    assert (many.num_devices, many.num_nodes, many.world_size) == (4, 2, 8)
    assert many.distributed_sampler_kwargs == {"num_replicas": 8, "rank": 0}


# ---- the pieces, without processes
def _ranks(make, world: int) -> list[list[np.ndarray]]:
    out = []
    for rank in range(world):
        s = make()
        if world > 1:
            s.set_distributed(rank, world)
        assert len(list(s)) == len(s)
        out.append(list(s))
    return out


@pytest.mark.parametrize("n", [0, 1, 5, 117, 300, 4097])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_eval_sampler_serves_one_process_batches_once_each(n, world):
    """Ranks take whole batches in turn: together, exactly the batches one process serves."""
    single = [b.tolist() for b in EvalBatchSampler(n, 50)]
    batches = _ranks(lambda: EvalBatchSampler(n, 50), world)
    served = [b.tolist() for r in batches for b in r if len(b)]
    assert sorted(served) == single
    assert all(len(r) >= 1 for r in batches) or world == 1, "Lightning needs a batch on every rank"


@pytest.mark.parametrize("n,bs,world,drop_last", [(483, 100, 2, False), (483, 100, 3, True), (7, 100, 8, False),
                                                   (1000, 64, 4, False), (101, 10, 2, True)])
def test_train_sampler_gives_every_rank_the_same_batch_count(n, bs, world, drop_last):
    batches = _ranks(lambda: EpochBatchSampler(n, bs, True, seed=3, drop_last=drop_last), world)
    assert len({len(r) for r in batches}) == 1, [len(r) for r in batches]
    per_rank = math.ceil(n / world)
    assert all(sum(len(b) for b in r) == (per_rank // bs * bs if drop_last else per_rank) for r in batches)
    if not drop_last:  # every clip is trained on; only the padding (wrapped around) repeats
        seen = np.concatenate([b for r in batches for b in r])
        assert set(seen.tolist()) == set(range(n)) and len(seen) - n == per_rank * world - n
    labels = np.random.default_rng(0).random((n, 20)) < 0.1
    labels[:, 0] = True
    balanced = _ranks(lambda: BalancedBatchSampler(labels, bs, seed=3, drop_last=drop_last), world)
    assert [len(r) for r in balanced] == [len(r) for r in batches]

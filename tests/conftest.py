"""Shared fixtures: tiny demo shards, composed configs, and one short training run to reuse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import aer.config  # noqa: F401 — registers the resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED = ROOT.parent / "shared" / "data" / "audioset"
REAL_SKIP = f"the real AudioSet bal_train split is not at {SHARED} (it lives in ../shared beside the checkout)"

TINY = 600  # clips in the tests' demo set: a few seconds end to end


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    from aer.data.demo import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root, clips=TINY, eval_clips=300, seed=0)
    return root


def train_overrides(demo_root: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that point a train config at the tiny demo set and a temporary output dir."""
    return [f"data.root={demo_root}", f"data.demo.clips={TINY}", "data.demo.eval_clips=300",
            "data.batch_size=100", "data.convert_workers=1", f"paths.output_dir={out}",
            f"paths.log_dir={out}", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", *extra]


def disk_full_after(max_bytes: int):
    """A preexec_fn: the child's files cannot grow past `max_bytes`, so every write beyond fails as on a
    full disk (EFBIG, with SIGXFSZ ignored) wherever it happens: h5py, torch.save, json, PNG, download."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


def compose_cfg(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    return cfg


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs a root script as a user would, in a subprocess (the Hydra CLI path included)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory) -> Path:
    """One short fc training run on the demo set (dev mode); its run dir."""
    from aer.train import run

    out = tmp_path_factory.mktemp("trained")
    cfg = compose_cfg("train", train_overrides(demo_root, out))
    with open_dict(cfg):
        cfg.callbacks.lr_monitor = None
    run(cfg)
    return out


@pytest.fixture(scope="session")
def thresholded_ckpt(trained_run, tmp_path_factory) -> Path:
    """A copy of trained_run's best.ckpt with per-class thresholds chosen on its dev split (best F1)."""
    from aer.thresholds import run

    out = tmp_path_factory.mktemp("thresholded")
    ckpt = out / "best.ckpt"
    run(compose_cfg("thresholds", [f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", f"out={ckpt}",
                                   f"paths.output_dir={out}"]))
    return ckpt

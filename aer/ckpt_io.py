"""Checkpoint writes that a kill cannot tear: write beside the target, then rename over it."""

from __future__ import annotations

import os

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from aer.utils import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())

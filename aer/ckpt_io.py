"""Checkpoint writes that a kill cannot tear: write beside the target, then rename over it."""

from __future__ import annotations

import io

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from aer.utils import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        # Serialised in memory first: torch's zip writer turns a full disk into "unexpected pos";
        # a plain write of the bytes gets the OSError, which atomic_path names in one line.
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getbuffer(), fsync=True)

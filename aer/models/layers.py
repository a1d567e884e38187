"""What the networks share: the frame mask, padding, fully connected blocks, the real frames scattered back."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """Boolean (B, frames) mask, True on real frames."""
    return torch.arange(frames, device=lengths.device) < lengths[:, None]


def exporting() -> bool:
    """True while torch.jit.trace, torch.onnx.export or torch.export records a network."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def fc_blocks(
    in_dim: int,
    sizes: Sequence[int],
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> list[nn.Module]:
    """Linear → [BatchNorm] → activation → [Dropout] for each size in `sizes`."""
    blocks: list[nn.Module] = []
    for size in sizes:
        blocks.append(nn.Linear(in_dim, size))
        if batch_norm:
            blocks.append(nn.BatchNorm1d(size))
        blocks.append(ACTIVATIONS[activation]())
        # Only materialise Dropout when it does something, so the default FC is
        # exactly Linear-ReLU-Linear as in the report.
        if dropout > 0:
            blocks.append(nn.Dropout(dropout))
        in_dim = size
    return blocks


def pad_frames(x: torch.Tensor, max_frames: int) -> torch.Tensor:
    """Zero-pad (B, T, D) clips to (B, max_frames, D), as the dataset pads short clips."""
    frames = x.shape[1]
    if frames > max_frames:
        raise ValueError(f"got {frames} frames but the model was built for max_frames={max_frames}")
    return F.pad(x, (0, 0, 0, max_frames - frames)) if frames < max_frames else x


def scatter_frames(values: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Place (N, D) real-frame rows back into a (B, T, D) tensor, `fill` elsewhere."""
    out = values.new_full((*mask.shape, values.shape[-1]), fill)
    out[mask] = values
    return out

"""Fully connected tagger over the flattened clip (the report's base model)."""

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


class FC(nn.Module):
    """Flatten all frames, then an MLP; padded frames are zero so `lengths` is not needed."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_dim: int,
        max_frames: int,
        hidden: Sequence[int] | int,
        dropout: float,
        activation: str,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        if isinstance(hidden, int):  # `model.hidden=256` on the command line means one hidden layer
            hidden = [hidden]
        sizes = [int(h) for h in hidden or []]
        self.max_frames = max_frames
        flat_dim = in_dim * max_frames
        self.net = nn.Sequential(
            *fc_blocks(flat_dim, sizes, activation, dropout, batch_norm),
            nn.Linear(sizes[-1] if sizes else flat_dim, num_classes),
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(pad_frames(x, self.max_frames).flatten(1))

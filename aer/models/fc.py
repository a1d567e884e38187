"""Fully connected tagger over the flattened clip (the report's base model)."""

from collections.abc import Sequence

import torch
from torch import nn

from aer.models.layers import fc_blocks, pad_frames


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

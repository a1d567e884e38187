"""Multi-level attention (Yu et al. 2018): attention pooling of every level's frame features.

As in attention.py, frame-wise layers run on the real frames only, so padding never reaches BatchNorm.
"""

import torch
from torch import nn

from aer.models.layers import fc_blocks, frame_mask, scatter_frames


class MultiLevelAttention(nn.Module):
    """Yu et al. 2018 multi-level attention, with per-dimension feature attention.

    Level k is one more frame-wise FC block; its features are pooled over the
    real frames with softmax(``W_k h``) weights per feature dimension, and the
    pooled vectors of all levels are concatenated and classified by one Linear.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_dim: int,
        max_frames: int,
        hidden: int,
        levels: int,
        dropout: float,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        # max_frames is accepted for the common constructor signature; pooling
        # over frames works for any clip length.
        self.blocks = nn.ModuleList(
            nn.Sequential(*fc_blocks(in_dim if k == 0 else hidden, [hidden], "relu", dropout, batch_norm))
            for k in range(levels)
        )
        self.attends = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(levels))
        self.classify = nn.Linear(levels * hidden, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = frame_mask(lengths, x.shape[1])
        h = x[mask]
        pooled = []
        for block, attend in zip(self.blocks, self.attends):
            h = block(h)
            weights = scatter_frames(attend(h), mask, float("-inf")).softmax(dim=1)
            pooled.append((weights * scatter_frames(h, mask)).sum(dim=1))
        return self.classify(torch.cat(pooled, dim=-1))

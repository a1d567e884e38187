"""Attention-pooling taggers: Kong et al. 2018 and Yu et al. 2018.

Frame-wise layers run on the real frames only (gathered with the length mask),
so padding never reaches BatchNorm's batch statistics and a clip's output does
not depend on what its padded frames hold, in training as in evaluation.
"""

import torch
import torch.nn.functional as F
from torch import nn

from aer.models.fc import fc_blocks
from aer.models.skiplstm import frame_mask

ATTENTIONS = ("sigmoid", "softmax")


def scatter_frames(values: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Place (N, D) real-frame rows back into a (B, T, D) tensor, `fill` elsewhere."""
    out = values.new_full((*mask.shape, values.shape[-1]), fill)
    out[mask] = values
    return out


class DecisionAttention(nn.Module):
    """Kong et al. 2018: decision-level attention, ``p(clip) = sum_t a_t * sigmoid(W_c h_t)``.

    ``a`` is normalised over the real frames, by softmax of ``W_a h`` or, as in
    Kong's paper, by sigmoid(``W_a h``) divided by its sum. The returned logits
    are exactly ``logit(p(clip))``: they are computed as ``log p - log(1 - p)``
    with log-sum-exp over frames, so ``sigmoid(logits)`` is the attention-pooled
    probability and BCE-with-logits on them is BCE on that probability, without
    the clamping (and the zero gradients it causes) that ``logit(p)`` would need.
    """

    def __init__(
        self,
        num_classes: int = 527,
        in_dim: int = 128,
        max_frames: int = 10,
        hidden: int = 512,
        layers: int = 3,
        dropout: float = 0.4,
        batch_norm: bool = True,
        attention: str = "softmax",
    ) -> None:
        super().__init__()
        # max_frames is accepted for the common constructor signature; pooling
        # over frames works for any clip length.
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; allowed: {', '.join(ATTENTIONS)}")
        self.attention = attention
        self.embed = nn.Sequential(*fc_blocks(in_dim, [hidden] * layers, "relu", dropout, batch_norm))
        feat_dim = hidden if layers else in_dim
        self.classify = nn.Linear(feat_dim, num_classes)
        self.attend = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = frame_mask(lengths, x.shape[1])
        h = self.embed(x[mask])
        cla = scatter_frames(self.classify(h), mask)
        att = self.attend(h)
        if self.attention == "sigmoid":
            att = F.logsigmoid(att)
        # log a_t over real frames; padded frames get log a = -inf, i.e. weight 0.
        log_att = scatter_frames(att, mask, float("-inf")).log_softmax(dim=1)
        log_p = (log_att + F.logsigmoid(cla)).logsumexp(dim=1)
        # Weights sum to one, so 1 - p = sum_t a_t * (1 - p_t) = sum_t a_t * sigmoid(-z_t).
        log_not_p = (log_att + F.logsigmoid(-cla)).logsumexp(dim=1)
        return log_p - log_not_p


class MultiLevelAttention(nn.Module):
    """Yu et al. 2018 multi-level attention, with per-dimension feature attention.

    Level k is one more frame-wise FC block; its features are pooled over the
    real frames with softmax(``W_k h``) weights per feature dimension, and the
    pooled vectors of all levels are concatenated and classified by one Linear.
    """

    def __init__(
        self,
        num_classes: int = 527,
        in_dim: int = 128,
        max_frames: int = 10,
        hidden: int = 512,
        levels: int = 2,
        dropout: float = 0.4,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        # max_frames is accepted for the common constructor signature; pooling
        # over frames works for any clip length.
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
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

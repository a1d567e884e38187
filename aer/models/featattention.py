"""Feature-level attention (Kong et al. 2019): each feature dimension pooled over frames with its own weights.

As in attention.py, frame-wise layers run on the real frames only, so padding never reaches BatchNorm.
"""

import torch
import torch.nn.functional as F
from torch import nn

from aer.models.layers import fc_blocks, frame_mask, scatter_frames


class FeatureAttention(nn.Module):
    """Kong, Yu, Xu, Iqbal, Wang and Plumbley, "Weakly labelled AudioSet tagging with attention neural
    networks", IEEE/ACM TASLP 27(11), 2019: the feature-level attention model.

    ``layers`` frame-wise blocks (Linear, BatchNorm, ReLU, dropout) embed each frame to ``h_t``; then,
    per feature dimension k, ``pooled_k = sum_t a_{t,k} f_k(h_t)`` with ``f`` a Linear map and ``a``
    normalised over the real frames: ``sigmoid(W_a h)`` divided by its sum (the paper's choice) or a
    softmax of ``W_a h``; then BatchNorm, ReLU, dropout and a Linear classifier to the logits.

    Followed: the sizes of the authors' public code (3 layers of 1024, dropout 0.5) and its
    BatchNorm-ReLU-dropout between the pooling and the classifier. Differs: the sigmoid weights are
    normalised in log space (log-sigmoid, then log-softmax over frames) instead of clipping them to
    [1e-7, 1 - 1e-7], so saturated weights keep their gradients; padded frames get weight 0 rather
    than being pooled as zero-valued frames; and the network returns logits (the loss applies the
    sigmoid), not probabilities.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_dim: int,
        max_frames: int,
        hidden: int,
        layers: int,
        dropout: float,
        batch_norm: bool,
        attention: str,
    ) -> None:
        super().__init__()
        # max_frames is accepted for the common constructor signature; pooling
        # over frames works for any clip length.
        self.attention = attention
        self.embed = nn.Sequential(*fc_blocks(in_dim, [hidden] * layers, "relu", dropout, batch_norm))
        self.value = nn.Linear(hidden, hidden)
        self.attend = nn.Linear(hidden, hidden)
        head: list[nn.Module] = [nn.BatchNorm1d(hidden)] if batch_norm else []
        head.append(nn.ReLU())
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*head)
        self.classify = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = frame_mask(lengths, x.shape[1])
        h = self.embed(x[mask])
        att = self.attend(h)
        if self.attention == "sigmoid":
            att = F.logsigmoid(att)  # softmax of log sigmoid = sigmoid normalised over the frames
        weights = scatter_frames(att, mask, float("-inf")).softmax(dim=1)
        pooled = (weights * scatter_frames(self.value(h), mask)).sum(dim=1)
        return self.classify(self.head(pooled))

"""Decision-level attention pooling (Kong et al. 2018); multiattention.py builds on its frame gathering.

Frame-wise layers run on the real frames only (gathered with the length mask),
so padding never reaches BatchNorm's batch statistics and a clip's output does
not depend on what its padded frames hold, in training as in evaluation.
"""

import torch
import torch.nn.functional as F
from torch import nn

from aer.models.layers import fc_blocks, frame_mask, scatter_frames


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

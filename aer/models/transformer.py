"""A transformer encoder over the clip's frames (pre-LN), pooled to one vector per clip.

Padded frames are zeroed and masked as attention keys (src_key_padding_mask), and pooling reads real
frames only, so a clip's logits do not depend on its padding nor on the other clips of its batch.
"""

import math

import torch
from torch import nn

from aer.models.layers import frame_mask


def sinusoids(positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al.'s fixed (positions, dim) table: sin on even dimensions, cos on odd ones."""
    t = torch.arange(positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim)
    table[:, 0::2] = torch.sin(t * freq)
    table[:, 1::2] = torch.cos(t * freq)[:, : dim // 2]
    return table


class Transformer(nn.Module):
    """Linear 128 -> d_model, [class token], [positions], dropout, ``layers`` pre-LN encoder layers
    (GELU feed-forward) and a final LayerNorm; then one vector per clip and a Linear classifier.

    pool: ``attention`` weights the real frames by a softmax of a learned score; ``cls`` reads the
    output at a learned token put before the frames; ``mean`` averages the real frames. Positions
    (``learned``: one vector per position, ``sinusoidal``: fixed) cover max_frames (+1 with the
    class token, which takes position 0), so any clip of at most max_frames frames is taken.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_dim: int,
        max_frames: int,
        d_model: int,
        heads: int,
        layers: int,
        ff_dim: int,
        dropout: float,
        positions: str,
        pool: str,
    ) -> None:
        super().__init__()
        self.max_frames = max_frames
        self.pool = pool
        self.project = nn.Linear(in_dim, d_model)
        tokens = max_frames + (pool == "cls")
        if pool == "cls":
            self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, d_model), std=0.02))
        if positions == "learned":
            self.positions = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, tokens, d_model), std=0.02))
        elif positions == "sinusoidal":  # not in the state dict: rebuilt from max_frames and d_model
            self.register_buffer("positions", sinusoids(tokens, d_model)[None], persistent=False)
        else:
            self.positions = None
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff_dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        # nested tensors are refused with norm_first anyway; saying so keeps torch from warning about it
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        if pool == "attention":
            self.attend = nn.Linear(d_model, 1, bias=False)  # a bias would shift every frame's score alike
        self.classify = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        if frames > self.max_frames:
            raise ValueError(f"got {frames} frames but the model was built for max_frames={self.max_frames}")
        mask = frame_mask(lengths, frames)
        h = self.project(x.masked_fill(~mask[..., None], 0.0))
        if self.pool == "cls":
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        if self.positions is not None:
            h = h + self.positions[:, : h.shape[1]]
        h = self.encoder(self.dropout(h), src_key_padding_mask=~mask)
        if self.pool == "cls":
            return self.classify(h[:, 0])
        h = h.masked_fill(~mask[..., None], 0.0)
        if self.pool == "mean":
            pooled = h.sum(dim=1) / lengths[:, None].to(h.dtype)
        else:
            weights = self.attend(h).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(dim=1)
            pooled = (weights[..., None] * h).sum(dim=1)
        return self.classify(pooled)

"""Stacked (Bi)LSTM whose layers see their input concatenated with their output."""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from aer.models.fc import fc_blocks, pad_frames

POOLS = ("flatten", "max", "mean")


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """Boolean (B, frames) mask, True on real frames."""
    return torch.arange(frames, device=lengths.device) < lengths[:, None]


class SkipLSTM(nn.Module):
    """The report's skip-connection LSTM tagger.

    With ``skip`` the representation grows layer by layer: layer k reads
    ``in_dim + k * out`` features (``out`` = hidden * directions) and the
    classifier reads ``in_dim + layers * out`` per frame. Without it this is a
    plain stacked LSTM whose classifier reads ``out`` per frame.
    """

    def __init__(
        self,
        num_classes: int = 527,
        in_dim: int = 128,
        max_frames: int = 10,
        layers: int = 2,
        hidden: int = 128,
        skip: bool = True,
        bidirectional: bool = True,
        packed: bool = False,
        pool: str = "flatten",
        dropout: float = 0.0,
        fc_hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; allowed: {', '.join(POOLS)}")
        self.max_frames = max_frames
        self.skip = skip
        self.packed = packed
        self.pool = pool
        out_dim = hidden * (2 if bidirectional else 1)
        self.lstms = nn.ModuleList()
        dim = in_dim
        for _ in range(layers):
            self.lstms.append(nn.LSTM(dim, hidden, batch_first=True, bidirectional=bidirectional))
            dim = dim + out_dim if skip else out_dim
        self.feature_dim = dim
        self.dropout = nn.Dropout(dropout)
        head_in = dim * max_frames if pool == "flatten" else dim
        sizes = [] if fc_hidden is None else [int(h) for h in fc_hidden]
        self.head = nn.Sequential(
            *fc_blocks(head_in, sizes, "relu", dropout),
            nn.Linear(sizes[-1] if sizes else head_in, num_classes),
        )

    def _encode_packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packing once and concatenating the packed data keeps every layer on
        # real frames only, with no re-packing between layers; unpacking then
        # zeroes the padded steps of the raw input and of every layer's output.
        seq = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        for lstm in self.lstms:
            out = self.dropout(lstm(seq)[0].data)
            seq = seq._replace(data=torch.cat([seq.data, out], dim=-1) if self.skip else out)
        feats, _ = pad_packed_sequence(seq, batch_first=True, total_length=x.shape[1])
        return feats

    def _encode_padded(self, x: torch.Tensor) -> torch.Tensor:
        feats = x
        for lstm in self.lstms:
            out = self.dropout(lstm(feats)[0])
            feats = torch.cat([feats, out], dim=-1) if self.skip else out
        return feats

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Unpacked layers read the padding, so a batch shorter than max_frames
        # must be padded to give the same result as the dataset's padded clips.
        x = pad_frames(x, self.max_frames)
        mask = frame_mask(lengths, x.shape[1])
        feats = self._encode_packed(x, lengths) if self.packed else self._encode_padded(x)
        if self.pool == "flatten":
            pooled = feats.flatten(1)
        elif self.pool == "mean":
            pooled = (feats * mask[..., None]).sum(1) / lengths[:, None].to(feats.dtype)
        else:
            pooled = feats.masked_fill(~mask[..., None], float("-inf")).amax(1)
        return self.head(pooled)

"""Stacked (Bi)LSTM whose layers see their input concatenated with their output."""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from aer.models.layers import exporting, fc_blocks, frame_mask, pad_frames


def _roll_frames(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Row b's frames rotated by shift[b] along time: out[b, t] = x[b, (t - shift[b]) mod T]."""
    frames = x.shape[1]
    t = torch.arange(frames, device=x.device)
    idx = torch.remainder(t[None, :] - shift[:, None], frames)
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))


class SkipLSTM(nn.Module):
    """The report's skip-connection LSTM tagger.

    With ``skip`` the representation grows layer by layer: layer k reads
    ``in_dim + k * out`` features (``out`` = hidden * directions) and the
    classifier reads ``in_dim + layers * out`` per frame. Without it this is a
    plain stacked LSTM whose classifier reads ``out`` per frame.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_dim: int,
        max_frames: int,
        layers: int,
        hidden: int,
        skip: bool,
        bidirectional: bool,
        packed: bool,
        pool: str,
        dropout: float,
        fc_hidden: Sequence[int],
    ) -> None:
        super().__init__()
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
            data = torch.cat([seq.data, out], dim=-1) if self.skip else out
            seq = PackedSequence(data, seq.batch_sizes, seq.sorted_indices, seq.unsorted_indices)
        feats, _ = pad_packed_sequence(seq, batch_first=True, total_length=x.shape[1])
        return feats

    def _encode_masked(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # _encode_packed's result with static shapes, for the exporters, which cannot record packed
        # sequences of dynamic lengths: the forward direction reads the clip left-aligned (its padding
        # comes after the real frames), the backward one reads it right-aligned (padding before them).
        mask = frame_mask(lengths, x.shape[1])[..., None].to(x.dtype)
        shift = x.shape[1] - lengths
        feats = x * mask
        for lstm in self.lstms:
            out = lstm(feats)[0]
            if lstm.bidirectional:
                h = lstm.hidden_size
                back = lstm(_roll_frames(feats, shift))[0][..., h:]
                out = torch.cat([out[..., :h], _roll_frames(back, -shift)], dim=-1)
            out = self.dropout(out) * mask
            feats = torch.cat([feats, out], dim=-1) if self.skip else out
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
        if not self.packed:
            feats = self._encode_padded(x)
        else:
            feats = self._encode_masked(x, lengths) if exporting() else self._encode_packed(x, lengths)
        if self.pool == "flatten":
            pooled = feats.flatten(1)
        elif self.pool == "mean":
            pooled = (feats * mask[..., None]).sum(1) / lengths[:, None].to(feats.dtype)
        else:
            pooled = feats.masked_fill(~mask[..., None], float("-inf")).amax(1)
        return self.head(pooled)

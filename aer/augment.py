"""Training-time changes to a batch of scaled clips (x on [0, 1], padding zero): frames left out, noise.

The Tagger applies them in training only (augment.* in the config, aer.settings.AugmentSettings);
validation, test and inference see the clips as they are.
"""

from __future__ import annotations

import torch

from aer.models.layers import frame_mask


def drop_frames(x: torch.Tensor, lengths: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each real frame of each clip left out with probability `p`, at least one kept (the first real one
    where all were drawn out); the kept frames move up in their order, the clips get shorter and the
    frames past their new lengths are zero. Returns (x, lengths)."""
    frames = x.shape[1]
    real = frame_mask(lengths, frames)
    keep = (torch.rand(real.shape, device=x.device) >= p) & real
    keep[:, 0] |= ~keep.any(dim=1) & real[:, 0]
    # a stable sort of "dropped" (0 before 1) lists each clip's kept frames first, in their order
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    new_lengths = keep.sum(dim=1).to(lengths.dtype)
    x = x.gather(1, order.unsqueeze(-1).expand_as(x)) * frame_mask(new_lengths, frames).unsqueeze(-1)
    return x, new_lengths


def add_noise(x: torch.Tensor, lengths: torch.Tensor, sd: float) -> torch.Tensor:
    """Gaussian noise of standard deviation `sd` added to the real frames (padding stays zero)."""
    return x + sd * torch.randn_like(x) * frame_mask(lengths, x.shape[1]).unsqueeze(-1)

"""Tagging networks: ``forward(x (B, T, in_dim), lengths (B,)) -> logits (B, num_classes)``."""

import inspect
from typing import Any

from torch import nn

from aer.models.attention import DecisionAttention, MultiLevelAttention
from aer.models.fc import FC
from aer.models.skiplstm import SkipLSTM

NETS: dict[str, type[nn.Module]] = {
    "attention": DecisionAttention,
    "fc": FC,
    "multiattention": MultiLevelAttention,
    "skiplstm": SkipLSTM,
}


class NetOptionError(TypeError, ValueError):
    """Options that the chosen network does not take (a TypeError and a ValueError, for either kind of handler)."""


def build_net(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the network registered as `name` with keyword options `kwargs`."""
    if name not in NETS:
        raise ValueError(f"unknown net {name!r}; allowed: {', '.join(sorted(NETS))}")
    cls = NETS[name]
    allowed = list(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise NetOptionError(
            f"net {name!r} got unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return cls(**kwargs)


__all__ = ["NETS", "DecisionAttention", "FC", "MultiLevelAttention", "NetOptionError", "SkipLSTM", "build_net"]

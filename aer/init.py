"""Weight initialisation schemes applied uniformly across a network.

Every scheme but ``default`` initialises each ``nn.Linear`` weight, each
``nn.LSTM`` ``weight_ih_l*`` / ``weight_hh_l*`` (one gate block of
``hidden_size`` rows at a time, so fan-in/fan-out and orthogonality are per
gate, not over the stacked 4 gates) and each ``nn.MultiheadAttention`` input
projection (query, key and value one at a time, likewise), zeroes their biases,
and resets BatchNorm and LayerNorm to weight 1, bias 0. Other parameters (a
transformer's positions and class token) keep their own initialisation.
``default`` keeps PyTorch's own initialisation.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from aer.schema import Section
from aer.settings import INITS, registered

TensorInit = Callable[..., Any]
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm)


# The options of each scheme (init.* in the config), their defaults and allowed values: aer.settings.INITS.
def _xavier(w: torch.Tensor, *, gain: float) -> None:
    nn.init.xavier_uniform_(w, gain=gain)


def _kaiming(w: torch.Tensor, *, nonlinearity: str, a: float) -> None:
    nn.init.kaiming_uniform_(w, a=a, mode="fan_in", nonlinearity=nonlinearity)


def _orthogonal(w: torch.Tensor, *, gain: float) -> None:
    nn.init.orthogonal_(w, gain=gain)


def _normal(w: torch.Tensor, *, std: float) -> None:
    nn.init.normal_(w, mean=0.0, std=std)


def _uniform(w: torch.Tensor, *, a: float) -> None:
    nn.init.uniform_(w, -a, a)


@torch.no_grad()
def _init_weights(module: nn.Module, init: TensorInit, **kwargs: Any) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            init(m.weight, **kwargs)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.LSTM):
            for pname, p in m.named_parameters():
                if pname.startswith(("weight_ih", "weight_hh")):
                    for gate in p.chunk(4, dim=0):
                        init(gate, **kwargs)
                elif pname.startswith("bias"):
                    p.zero_()
        elif isinstance(m, nn.MultiheadAttention):  # its out_proj is an nn.Linear, met on its own
            if m.in_proj_weight is not None:  # query, key and value stacked
                for block in m.in_proj_weight.chunk(3, dim=0):
                    init(block, **kwargs)
            else:
                for w in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight):
                    init(w, **kwargs)
            if m.in_proj_bias is not None:
                m.in_proj_bias.zero_()
        elif isinstance(m, NORMS):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()


# None: PyTorch's own initialisation, untouched
SCHEMES: dict[str, TensorInit | None] = {
    "default": None,
    "kaiming": _kaiming,
    "normal": _normal,
    "orthogonal": _orthogonal,
    "uniform": _uniform,
    "xavier": _xavier,
}


def apply_init(module: nn.Module, name: str, settings: Section | None = None, **options: Any) -> nn.Module:
    """Initialise `module` in place with scheme `name` and its init.* settings (aer.settings.INITS[name]), or
    those built from `options` (checked, so a typo cannot leave the module half initialised); returns it."""
    settings = settings if settings is not None else registered(INITS, name, "init").build(options)
    if SCHEMES[name] is not None:
        _init_weights(module, SCHEMES[name], **settings.as_dict())
    return module

"""Weight initialisation schemes applied uniformly across a network.

Every scheme but ``default`` initialises each ``nn.Linear`` weight and each
``nn.LSTM`` ``weight_ih_l*`` / ``weight_hh_l*`` (one gate block of
``hidden_size`` rows at a time, so fan-in/fan-out and orthogonality are per
gate, not over the stacked 4 gates), zeroes their biases, and resets BatchNorm
to weight 1, bias 0. ``default`` keeps PyTorch's own initialisation.
"""

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

TensorInit = Callable[..., Any]


def _xavier(w: torch.Tensor, gain: float = 1.0) -> None:
    nn.init.xavier_uniform_(w, gain=gain)


def _kaiming(w: torch.Tensor, nonlinearity: str = "relu", a: float = 0.0) -> None:
    nn.init.kaiming_uniform_(w, a=a, mode="fan_in", nonlinearity=nonlinearity)


def _orthogonal(w: torch.Tensor, gain: float = 1.0) -> None:
    nn.init.orthogonal_(w, gain=gain)


def _normal(w: torch.Tensor, std: float = 0.01) -> None:
    nn.init.normal_(w, mean=0.0, std=std)


def _uniform(w: torch.Tensor, a: float = 0.05) -> None:
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
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.fill_(1.0)
            m.bias.zero_()


def _scheme(init: TensorInit) -> Callable[..., None]:
    def apply(module: nn.Module, **kwargs: Any) -> None:
        # Check the options before touching any weight, so a typo cannot leave
        # the module half initialised.
        inspect.signature(init).bind(None, **kwargs)
        _init_weights(module, init, **kwargs)

    apply.__doc__ = f"Apply {init.__name__.lstrip('_')} to every Linear/LSTM weight; zero biases."
    return apply


def _default(module: nn.Module) -> None:
    """Leave PyTorch's initialisation untouched."""


INITS: dict[str, Callable[..., None]] = {
    "default": _default,
    "kaiming": _scheme(_kaiming),
    "normal": _scheme(_normal),
    "orthogonal": _scheme(_orthogonal),
    "uniform": _scheme(_uniform),
    "xavier": _scheme(_xavier),
}


def apply_init(module: nn.Module, name: str, **kwargs: Any) -> nn.Module:
    """Initialise `module` in place with scheme `name` (options as keywords); returns it."""
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; allowed: {', '.join(sorted(INITS))}")
    INITS[name](module, **kwargs)
    return module

"""Tagging networks: ``forward(x (B, T, in_dim), lengths (B,)) -> logits (B, num_classes)``.

model=NAME is the network registered as NAME here, defined in aer/models/NAME.py.

A network's options (model.* in the config), their defaults and allowed values are declared in
aer.settings.MODELS under the same name as here; the constructors take them all as keywords.
"""

from typing import Any

from torch import nn

from aer.data.records import EMBED_DIM, MAX_FRAMES, NUM_CLASSES
from aer.models.attention import DecisionAttention
from aer.models.fc import FC
from aer.models.featattention import FeatureAttention
from aer.models.multiattention import MultiLevelAttention
from aer.models.skiplstm import SkipLSTM
from aer.models.transformer import Transformer
from aer.schema import Section
from aer.settings import MODELS, registered

NETS: dict[str, type[nn.Module]] = {
    "attention": DecisionAttention,
    "fc": FC,
    "featattention": FeatureAttention,
    "multiattention": MultiLevelAttention,
    "skiplstm": SkipLSTM,
    "transformer": Transformer,
}


def build_net(name: str, settings: Section | None = None, *, num_classes: int = NUM_CLASSES, in_dim: int = EMBED_DIM,
              max_frames: int = MAX_FRAMES, **options: Any) -> nn.Module:
    """The network registered as `name`, with its model.* settings (aer.settings.MODELS[name]), or with those
    built from `options` (checked; the rest their defaults)."""
    settings = settings if settings is not None else registered(MODELS, name, "model").build(options)
    return NETS[name](num_classes=num_classes, in_dim=in_dim, max_frames=max_frames, **settings.as_dict())


__all__ = ["NETS", "DecisionAttention", "FC", "FeatureAttention", "MultiLevelAttention", "SkipLSTM", "Transformer",
           "build_net"]

"""Hydra glue: the settings' schema in Hydra's ConfigStore, the resolvers the configs use, and `build`, which
turns a composed config into its command's settings object once, before any work.

Importing this module registers everything the commands' configs need: the `data` schema (`data/base`,
which conf/data/*.yaml extend, and `data/overrides`, the every-field-null overlay that the scoring
commands take), one `model/NAME` and `init/NAME` node per registered network and init scheme, and each
command's top-level schema (`train_schema`, `evaluate_schema`, ...).
"""

from __future__ import annotations

import dataclasses

from hydra.core.config_store import ConfigStore
from hydra.utils import to_absolute_path
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

import aer.paths  # noqa: F401 — registers the path resolvers the configs use
from aer.schema import structured
from aer.settings import (
    INITS,
    MODELS,
    Choice,
    DataSettings,
    EnsembleConfig,
    EvaluateConfig,
    ExportConfig,
    PredictConfig,
    ThresholdsConfig,
    TrainConfig,
    TrainerSettings,
    TrainSettings,
    registered,
)

if not OmegaConf.has_resolver("aer.by_mode"):
    # ${aer.by_mode:${data.mode},DEV,FINAL}: the one value of a setting that differs in final mode
    # (no validation split there), written in the config so that .hydra/config.yaml is what ran.
    OmegaConf.register_new_resolver("aer.by_mode", lambda mode, dev, final: final if mode == "final" else dev)


def _run_name(default: str) -> str:
    from aer.loggers import run_name

    return run_name(default)


def _tensorboard_dir(output_dir: str, default: str) -> str:
    from aer.loggers import tensorboard_dir

    return tensorboard_dir(output_dir, default)


if not OmegaConf.has_resolver("aer.run_name"):
    # a run's name on the dashboards, and where its TensorBoard events go (aer.loggers: by what a sweep varies)
    OmegaConf.register_new_resolver("aer.run_name", _run_name)
    OmegaConf.register_new_resolver("aer.tensorboard_dir", _tensorboard_dir)

# command → the settings object its config builds (train: TrainConfig, built by build_train)
COMMANDS = {"evaluate": EvaluateConfig, "ensemble": EnsembleConfig, "thresholds": ThresholdsConfig,
            "predict": PredictConfig, "export": ExportConfig}
# the Lightning nodes of a train config, instantiated as they are (Hydra's `_target_`)
LIGHTNING = ("trainer", "callbacks", "logger")
# data.* keys that name files: given relative to where the user ran the command
PATH_KEYS = ("root", "cache_dir")


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="data", name="base", node=structured(DataSettings))
    cs.store(group="data", name="overrides", node=structured(DataSettings, optional=True))
    for name, settings in MODELS.items():
        cs.store(group="model", name=name, node=structured(settings, name=name))
    for name, settings in INITS.items():
        cs.store(group="init", name=name, node=structured(settings, name=name))
    # the config groups' nodes are typed by their own schemas (data, model, init) or by Lightning's classes
    groups = dict.fromkeys(("data", "model", "init", *LIGHTNING, "paths"))
    cs.store(name="train_schema", node=structured(TrainSettings, **groups))
    for name, cls in COMMANDS.items():
        cs.store(name=f"{name}_schema", node=structured(cls, open_fields=("data", "output_dir"), paths=None))


register()


def _plain(node):
    """A config node as plain values, resolved; an interpolation that cannot resolve here (the Hydra run
    dir, outside a Hydra run) is MISSING, so that the setting is named as missing."""
    if isinstance(node, DictConfig):
        out = {}
        for key in node:
            if OmegaConf.is_missing(node, key):
                out[key] = MISSING
                continue
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 — an interpolation OmegaConf cannot resolve outside Hydra
                out[key] = MISSING
                continue
            out[key] = _plain(value)
        return out
    if isinstance(node, ListConfig):
        return [_plain(v) for v in node]
    return node


def _absolute(data: dict) -> dict:
    return {k: to_absolute_path(str(v)) if k in PATH_KEYS and v else v for k, v in data.items()}


def choice(registry: dict, values: dict, key: str) -> Choice:
    """model=NAME / init=NAME with its options, as a Choice."""
    values = {k: v for k, v in values.items() if k != "_target_"}
    name = values.pop("name")
    return Choice(name, registered(registry, name, key).build(values))


def build_train(values: dict) -> TrainConfig:
    """TrainConfig from a composed train config's plain values."""
    values = dict(values)
    lightning = {k: values.pop(k, None) or {} for k in LIGHTNING}
    trainer_keys = {f.name for f in dataclasses.fields(TrainerSettings)}
    output_dir = (values.pop("paths", None) or {}).get("output_dir")
    return TrainConfig.build({
        **values,
        "data": DataSettings.build(_absolute(values.pop("data"))),
        "model": choice(MODELS, values.pop("model"), "model"),
        "init": choice(INITS, values.pop("init"), "init"),
        "trainer": TrainerSettings.build({k: v for k, v in lightning["trainer"].items() if k in trainer_keys}),
        "lightning": lightning,
        "output_dir": output_dir,
    })


def build(command: str, cfg: DictConfig):
    """The settings object of `command` (train, evaluate, ensemble, thresholds, predict, export) from its
    composed config: every value checked, once, before any work."""
    values = _plain(cfg)
    if command == "train":
        return build_train(values)
    cls = COMMANDS[command]
    paths = values.pop("paths", None) or {}
    if "output_dir" in {f.name for f in dataclasses.fields(cls)}:
        values["output_dir"] = paths.get("output_dir")
    if "data" in values:
        values["data"] = _absolute({k: v for k, v in values["data"].items() if v is not None})
    return cls.build(values)

"""Hydra glue: the config schema (from aer.settings) in Hydra's ConfigStore, resolvers, and the config check.

Importing this module registers everything the root scripts' configs need: the `data` schema
(`data/base`, which conf/data/*.yaml extend, and `data/overrides`, the every-field-null overlay
that evaluate, ensemble and thresholds take), one `model/NAME` and `init/NAME` node per
registered network and init scheme, and `train_schema`, the top-level keys of train.py.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

import aer.paths  # noqa: F401 — registers the path resolvers the configs use
from aer.schema import structured
from aer.settings import INITS, MODELS, BootstrapSettings, DataSettings, Section, TrainSettings

if not OmegaConf.has_resolver("aer.by_mode"):
    # ${aer.by_mode:${data.mode},DEV,FINAL}: the one value of a setting that differs in final mode
    # (no validation split there), written in the config so that .hydra/config.yaml is what ran.
    OmegaConf.register_new_resolver("aer.by_mode", lambda mode, dev, final: final if mode == "final" else dev)

DATAMODULE = "aer.data.datamodule.AudioSetDataModule"


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="data", name="base", node=structured(DataSettings, _target_=DATAMODULE))
    cs.store(group="data", name="overrides", node=structured(DataSettings, optional=True, _target_=None))
    for name, settings in MODELS.items():
        cs.store(group="model", name=name, node=structured(settings, name=name))
    for name, settings in INITS.items():
        cs.store(group="init", name=name, node=structured(settings, name=name))
    # the config groups' nodes are typed by their own schemas (data, model, init) or by Lightning's classes
    groups = dict.fromkeys(("data", "model", "init", "trainer", "callbacks", "logger", "paths"))
    cs.store(name="train_schema", node=structured(TrainSettings, **groups))
    cs.store(name="bootstrap_schema", node=structured(BootstrapSettings))


register()


def plain(node) -> dict:
    """A config section as a plain dict (resolved), without Hydra's `_target_` and the registry `name`."""
    if isinstance(node, DictConfig):  # resolved in place: its interpolations refer to the whole config
        values = OmegaConf.to_container(node, resolve=True)
    else:
        values = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                  for k, v in (node or {}).items()}
    return {k: v for k, v in values.items() if k not in ("_target_", "name")}


def sections(cfg: DictConfig) -> dict[str, Section]:
    """Every section of a train config built (and so validated) from aer.settings, before any work."""
    top = plain({k: cfg.get(k) for k in ("task_name", "seed", "tags", "threads", "ckpt_path", "compile")})
    out = {
        "train": TrainSettings.build({**top, **{k: plain(cfg[k]) for k in ("optim", "augment", "swa", "ema",
                                                                             "distill")}}),
        "data": DataSettings.build(plain(cfg.data)),
        "model": MODELS[cfg.model.name].build(plain(cfg.model)),
        "init": INITS[cfg.init.name].build(plain(cfg.init)),
    }
    epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"trainer.max_epochs={epochs!r}: expected a positive integer")
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ValueError(f"trainer.limit_train_batches={limit!r}: expected a positive number (a count of loader "
                         f"fetches, each data.steps_per_fetch batches, or a fraction of them), or null for all: "
                         f"with 0 the run would train no step")
    if out["data"].fetch_steps > 1:  # the Tagger then steps itself (manual optimization), which Lightning
        for key, off in (("gradient_clip_val", (None, 0)), ("accumulate_grad_batches", (None, 1))):  # refuses
            value = OmegaConf.select(cfg, f"trainer.{key}")
            if value not in off:
                raise ValueError(f"trainer.{key}={value!r} needs Lightning's automatic optimization: add "
                                 f"data.steps_per_fetch=1 (now {out['data'].fetch_steps})")
    return out


def tagger_kwargs(cfg: DictConfig) -> dict:
    """The Tagger's arguments from a train config, as plain values (they go into the checkpoint)."""
    return {"model": cfg.model.name, "model_kwargs": plain(cfg.model), "init": cfg.init.name,
            "init_kwargs": plain(cfg.init), "normalize": cfg.data.normalize,
            "optim": plain(cfg.optim), "augment": plain(cfg.augment), "distill": plain(cfg.distill)}

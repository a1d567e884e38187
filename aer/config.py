"""Hydra glue: resolvers for paths, and checks that fail on a bad config before any work starts."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import aer.paths  # noqa: F401 — registers the path resolvers the configs use

ROOT = Path(__file__).resolve().parents[1]


def _allowed(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def check_train_config(cfg: DictConfig) -> None:
    """Raises ValueError naming the key and the allowed values; called before any data is touched."""
    from aer.init import INITS
    from aer.models import NETS

    name = cfg.model.get("name")
    if name not in NETS:
        raise ValueError(f"model.name={name!r}: expected one of {', '.join(sorted(NETS))}")
    init = cfg.init.get("name")
    if init not in INITS:
        raise ValueError(f"init.name={init!r}: expected one of {', '.join(sorted(INITS))}")
    for key in ("data.batch_size", "data.eval_batch_size", "trainer.max_epochs"):
        val = OmegaConf.select(cfg, key)
        if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < 1):
            raise ValueError(f"{key}={val!r}: expected a positive integer")
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ValueError(f"trainer.limit_train_batches={limit!r}: expected a positive number (a count of batches, "
                         f"or a fraction of them), or null for all: with 0 the run would train no step")
    for key in ("optim.lr",):
        val = OmegaConf.select(cfg, key)
        if not isinstance(val, (int, float)) or val <= 0:
            raise ValueError(f"{key}={val!r}: expected a positive number")
    if not isinstance(cfg.get("seed"), int):
        raise ValueError(f"seed={cfg.get('seed')!r}: expected an integer")


def module_kwargs(cfg: DictConfig) -> dict:
    """The Tagger's arguments from a composed config, as plain values (they go into the checkpoint)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    init = OmegaConf.to_container(cfg.init, resolve=True)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    augment = OmegaConf.to_container(cfg.get("augment") or {}, resolve=True)
    return {
        "net": model.pop("name"), "net_kwargs": model,
        "init": init.pop("name"), "init_kwargs": init,
        "input_norm": cfg.data.get("normalize", "unit"),
        **optim, **augment,
    }

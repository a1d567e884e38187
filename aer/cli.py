"""Console scripts (`aer-train`, `aer-evaluate`, ...; pyproject's [project.scripts]): the commands of
the root scripts and of `python -m aer.X`, for an installed aer, with its packaged configs.

The Hydra ones report a config error in one line, as the root scripts do (aer.entry.cli).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

import aer.config  # noqa: F401 — registers the config schema (ConfigStore) and resolvers the configs use
from aer.entry import cli, task
from aer.paths import CONFIGS


def _root_script(name: str) -> Callable[[], None]:
    """`python NAME.py` of the checkout (train, evaluate, ensemble): `aer.NAME.run` on conf/NAME.yaml."""

    def command() -> None:
        run = importlib.import_module(f"aer.{name}").run

        def main(cfg: DictConfig):
            return task(run)(cfg)

        # Hydra names the job after the function's module (hydra.job.name, the run dir's NAME.log):
        # the same name as `python NAME.py` gives, not "cli"
        main.__module__ = f"aer.{name}"
        cli(hydra.main(version_base="1.3", config_path=CONFIGS, config_name=name)(main))

    command.__name__ = name
    return command


def _module_main(name: str) -> Callable[[], None]:
    """`python -m aer.NAME` (predict, export, thresholds): that module's own `@hydra.main`."""

    def command() -> None:
        cli(importlib.import_module(f"aer.{name}").main)

    command.__name__ = name
    return command


train = _root_script("train")
evaluate = _root_script("evaluate")
ensemble = _root_script("ensemble")
predict = _module_main("predict")
export = _module_main("export")
thresholds = _module_main("thresholds")

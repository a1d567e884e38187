"""Ensemble checkpoints: `python ensemble.py ckpts=[a.ckpt,b.ckpt] | sweep=DIR [select=greedy]`."""

import hydra
from omegaconf import DictConfig

import aer.config  # noqa: F401 — registers the config schema and resolvers
from aer.ensemble import run
from aer.entry import cli, task


@hydra.main(version_base="1.3", config_path="conf", config_name="ensemble")
def main(cfg: DictConfig):
    return task(run)(cfg)


if __name__ == "__main__":
    cli(main)

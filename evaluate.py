"""Score a checkpoint: `python evaluate.py ckpt=PATH [split=val] [data.root=...]` (see conf/evaluate.yaml)."""

import hydra
from omegaconf import DictConfig

import aer.config  # noqa: F401 — registers the config schema and resolvers
from aer.entry import cli, task
from aer.evaluate import run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig):
    return task(run)(cfg)


if __name__ == "__main__":
    cli(main)

"""Train a tagger: `python train.py [-m] model=fc,skiplstm init=xavier,kaiming data=... ...`."""

import hydra
from omegaconf import DictConfig

import aer.config  # noqa: F401 — registers the config schema and resolvers
from aer.entry import cli, task
from aer.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    return task(run)(cfg)


if __name__ == "__main__":
    cli(main)

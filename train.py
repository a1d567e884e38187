"""Train a tagger: `python train.py [-m] model=fc,skiplstm init=xavier,kaiming data=... ...` (conf/train.yaml)."""

from aer.cli import train

if __name__ == "__main__":
    train()

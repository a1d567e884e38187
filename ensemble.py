"""Ensemble checkpoints: `python ensemble.py ckpts=[a.ckpt,b.ckpt] | sweep=DIR [select=greedy]`."""

from aer.cli import ensemble

if __name__ == "__main__":
    ensemble()

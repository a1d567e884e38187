"""Score a checkpoint: `python evaluate.py ckpt=PATH [split=val] [data.root=...]` (conf/evaluate.yaml)."""

from aer.cli import evaluate

if __name__ == "__main__":
    evaluate()

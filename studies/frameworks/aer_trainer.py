"""The base model trained by aer itself (aer.train.run, the Tagger, Lightning), speaking the trainers'
file format (studies/frameworks/trainers/protocol.py): `python -m studies.frameworks.aer_trainer JOB_DIR`.

It runs `experiment=report_fc` as `python train.py` would, with its DataModule reading the data
root and cache named in job.json (the same 80/20 split the parent cuts), its checkpoints and
TensorBoard logs included: what a user of aer pays. A callback records the times and each epoch's
validation probabilities, and aer's own val/mAP beside them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from omegaconf import open_dict

from aer.config import build
from studies.frameworks.trainers import protocol


class RecordEpochs(pl.Callback):
    def __init__(self, job_dir: str):
        # made by aer.train.run after it has set the threads
        self.rec = protocol.Recorder(job_dir, "aer", {"torch": torch.__version__,
                                                      "pytorch_lightning": pl.__version__},
                                     {"torch.set_num_threads": torch.get_num_threads()})
        self._probs = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.rec.epoch_start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rec.train_end()

    # Callbacks' epoch-end hooks run before the module's, which scores and resets the metric state.
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._probs = pl_module.val_metrics.collected()[0].numpy()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.rec.eval_end(self._probs, pl_module.epoch_loss,
                          aer_val_mAP=float(trainer.callback_metrics["val/mAP"]))


def overrides(job: dict, job_dir: Path) -> list[str]:
    if job["eps"] != 1e-8:
        raise ValueError(f"eps={job['eps']}: aer's Tagger uses torch's Adam with its default eps, 1e-8")
    b1, b2 = job["betas"]
    return ["experiment=report_fc", "data=audioset", f"data.root={job['data_root']}",
            f"data.cache_dir={job['cache_dir'] or 'null'}", f"data.val_fraction={job['val_fraction']}",
            f"data.split_seed={job['split_seed']}", f"data.batch_size={job['batch_size']}",
            f"data.eval_batch_size={job['eval_batch_size']}", "data.convert_workers=1",
            f"seed={job['seed']}", f"threads={job['threads']}", f"trainer.max_epochs={job['epochs']}",
            f"model.hidden=[{job['hidden']}]", "init=xavier", f"optim.lr={job['lr']}", f"+optim.betas=[{b1},{b2}]",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            f"paths.output_dir={job_dir / 'run'}", f"paths.log_dir={job_dir / 'run'}"]


def train(job: dict, job_dir: Path) -> None:
    from aer.train import run

    missing = [k for k in ("data_root", "cache_dir", "val_fraction", "split_seed") if k not in job]
    if missing:
        raise ValueError(f"{job_dir / 'job.json'}: missing key(s) {', '.join(missing)} (aer reads the data itself)")
    with initialize_config_module(config_module="aer.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides(job, job_dir))
    with open_dict(cfg):
        cfg.callbacks.frameworks_record = {"_target_": f"{__name__}.RecordEpochs", "job_dir": str(job_dir)}
    t0 = time.perf_counter()
    run(build("train", cfg))
    print(f"aer: {job['epochs']} epochs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(protocol.main(train))

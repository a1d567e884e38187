"""`Tagger`: the LightningModule around any registered network (inputs, loss, optimizer, metrics, logging)."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from aer.data.records import EMBED_DIM, FEATURE_SCALE, MAX_FRAMES
from aer.init import apply_init
from aer.metrics import TaggingMetrics
from aer.models import build_net
from aer.models.skiplstm import frame_mask
from aer.schema import check
from aer.settings import AugmentSettings, DataSettings, OptimSettings
from aer.utils import error_line


class NonFiniteLossError(FloatingPointError):
    pass


class Tagger(pl.LightningModule):
    """Multi-label tagger: sigmoid cross-entropy on logits, Adam, mAP/mAUC on validation and test.

    Arguments are named as the config keys they come from: model=NAME with its model.* options,
    init=NAME with init.*, data.normalize, and the optim.* and augment.* sections (aer.settings
    declares them all and their defaults). Every argument is a plain value stored in the
    checkpoint, so `aer.checkpoint.load_tagger(path)` rebuilds the network with no config at hand.

    The Tagger owns its inputs: it takes the uint8 features the data serves (or any 0-255 scale),
    divides them by 255 and, with normalize=standardize, standardises them with statistics stored
    in the checkpoint (`set_input_stats`). `predict_proba` is the one way to probabilities.
    """

    def __init__(self, model: str, init: str, model_kwargs: dict | None = None, init_kwargs: dict | None = None,
                 normalize: str = DataSettings.normalize, optim: dict | None = None, augment: dict | None = None,
                 num_classes: int = DataSettings.num_classes, max_frames: int = MAX_FRAMES, in_dim: int = EMBED_DIM):
        super().__init__()
        check(DataSettings, {"normalize": normalize}, "data")
        # Stored complete (defaults filled in), so a checkpoint says everything it was trained with.
        self.optim, self.augment = OptimSettings.build(optim), AugmentSettings.build(augment)
        self.save_hyperparameters(
            {"model": model, "model_kwargs": dict(model_kwargs or {}), "init": init,
             "init_kwargs": dict(init_kwargs or {}), "normalize": normalize, "optim": self.optim.as_dict(),
             "augment": self.augment.as_dict(),
             "num_classes": num_classes, "max_frames": max_frames, "in_dim": in_dim}, logger=False)
        try:
            self.net = build_net(model, num_classes=num_classes, in_dim=in_dim, max_frames=max_frames,
                                 **(model_kwargs or {}))
        except (TypeError, RuntimeError) as e:  # a model.* value the network cannot take
            raise ValueError(f"model={model} {model_kwargs or {}}: cannot build the network: {error_line(e)}") from None
        apply_init(self.net, init, **(init_kwargs or {}))
        # Standardisation statistics live in the checkpoint, so a loaded model needs no dataset.
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self._loss_sum, self._loss_count = torch.zeros(()), 0  # the training epoch's running loss
        self.val_metrics = TaggingMetrics()
        self.test_metrics = TaggingMetrics()

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension statistics of the training frames, on the x/255 scale (AudioSetDataModule.input_stats)."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    @staticmethod
    def scale(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """uint8 features (0-255) as floats on the [0, 1] scale the networks are trained on; frames at
        and past a clip's length are zero (as the data pads them), whatever the input holds there."""
        return features.float().div(FEATURE_SCALE) * frame_mask(lengths, features.shape[1]).unsqueeze(-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits of scaled clips `x` (B, T, D) on [0, 1] (padding zero), standardised here if asked."""
        if self.hparams.normalize == "standardize":
            x = ((x - self.input_mean) / self.input_std) * frame_mask(lengths, x.shape[1]).unsqueeze(-1)  # padding: 0
        return self.net(x, lengths)

    def predict_proba(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, C) of uint8 `features` (B, T, D) as the data serves them."""
        return torch.sigmoid(self(self.scale(features, lengths), lengths))

    # ---- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        lengths, y = batch["lengths"], batch["y"]
        x = self.scale(batch["features"], lengths)
        aug = self.augment
        if aug.mixup_alpha > 0:
            lam = float(torch.distributions.Beta(aug.mixup_alpha, aug.mixup_alpha).sample())
            perm = torch.randperm(len(x), device=x.device)
            x = lam * x + (1 - lam) * x[perm]
            y = lam * y + (1 - lam) * y[perm]
            lengths = torch.maximum(lengths, lengths[perm])
        if aug.label_smoothing > 0:
            y = y * (1 - aug.label_smoothing) + 0.5 * aug.label_smoothing
        loss = F.binary_cross_entropy_with_logits(self(x, lengths), y)
        # The step loss goes to the logger and the progress bar only at the steps the logger writes: every
        # self.log call walks Lightning's result metadata (~3 ms a call on a laptop CPU, a fifth of an FC
        # step), and the epoch's mean is summed here and logged once, at its end. On an accelerator the
        # loss is read (a host synchronisation) only at those steps too; on the CPU reading it is free.
        every = self._trainer.log_every_n_steps if self._trainer is not None else 1
        logging_step = (self.global_step + 1) % max(1, every) == 0
        if (logging_step or loss.device.type == "cpu") and not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}: "
                f"try a lower optim.lr (now {self.optim.lr}), optim.warmup_epochs>0, another init, "
                f"or check the input data")
        self._loss_sum += loss.detach() * len(x)
        self._loss_count += len(x)
        if logging_step:
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        return loss

    @property
    def epoch_loss(self) -> float:
        """The mean training loss of the current epoch's batches so far (this rank's)."""
        return float(self._loss_sum) / self._loss_count if self._loss_count else float("nan")

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0

    def on_train_epoch_end(self) -> None:
        if self._loss_count:  # mean over the epoch's clips; under DDP, averaged over the ranks
            self.log("train/loss_epoch", self._loss_sum / self._loss_count, on_step=False, on_epoch=True,
                     prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        hp = self.optim
        opt = torch.optim.Adam(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if hp.scheduler == "none" and hp.warmup_epochs <= 0:
            return opt
        if hp.scheduler == "step":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, hp.step_size, hp.gamma)}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warm = int(hp.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if hp.scheduler == "none":
                return 1.0
            t = min(1.0, (step - warm) / max(1, total - warm))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- evaluation
    def _eval_step(self, batch: dict, metrics: TaggingMetrics, prefix: str) -> None:
        if len(batch["y"]) == 0:  # a DDP rank with no clips to score: it only joins the epoch-end syncs
            self.log(f"{prefix}/loss", torch.zeros((), device=self.device), on_epoch=True, batch_size=0,
                     sync_dist=True)
            return
        logits = self(self.scale(batch["features"], batch["lengths"]), batch["lengths"])
        loss = F.binary_cross_entropy_with_logits(logits, batch["y"])
        self.log(f"{prefix}/loss", loss, on_epoch=True, batch_size=len(logits), sync_dist=True)
        metrics.update(torch.sigmoid(logits), batch["y"])

    def _eval_end(self, metrics: TaggingMetrics, prefix: str) -> None:
        out = metrics.compute()
        metrics.reset()
        self.log_dict({f"{prefix}/{k}": v for k, v in out.items()}, prog_bar=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end(self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end(self.test_metrics, "test")

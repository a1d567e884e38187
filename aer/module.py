"""`Tagger`: the LightningModule around any registered network (loss, optimizer, metrics, logging)."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from aer.init import apply_init
from aer.metrics import TaggingMetrics
from aer.models import build_net

SCHEDULERS = ("none", "cosine", "step")
INPUT_NORMS = ("unit", "standardize")


class NonFiniteLossError(FloatingPointError):
    pass


def _check_number(key: str, val, lo: float, hi: float | None, open_low: bool = False) -> None:
    ok = isinstance(val, (int, float)) and not isinstance(val, bool) and (val > lo if open_low else val >= lo)
    if not ok or (hi is not None and val > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"{'above' if open_low else 'at least'} {lo}"
        raise ValueError(f"{key}={val!r}: expected a number {bound}")


class Tagger(pl.LightningModule):
    """Multi-label tagger: sigmoid cross-entropy on logits, Adam, mAP/mAUC on validation and test.

    Every argument is a plain value and is stored in the checkpoint, so
    `Tagger.load_from_checkpoint(path)` rebuilds the network with no config at hand.
    """

    def __init__(self, net: str = "fc", net_kwargs: dict | None = None, init: str = "xavier",
                 init_kwargs: dict | None = None, num_classes: int = 527, max_frames: int = 10, in_dim: int = 128,
                 lr: float = 1e-3, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 scheduler: str = "none", warmup_epochs: float = 0.0, min_lr_ratio: float = 0.0,
                 step_size: int = 10, gamma: float = 0.5, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 input_norm: str = "unit"):
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"optim.scheduler={scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"data.normalize={input_norm!r}: expected one of {', '.join(INPUT_NORMS)}")
        _check_number("optim.lr", lr, 0, None, open_low=True)
        _check_number("optim.weight_decay", weight_decay, 0, None)
        _check_number("optim.warmup_epochs", warmup_epochs, 0, None)
        _check_number("optim.min_lr_ratio", min_lr_ratio, 0, 1)
        _check_number("augment.mixup_alpha", mixup_alpha, 0, None)
        _check_number("augment.label_smoothing", label_smoothing, 0, 1)
        self.save_hyperparameters(logger=False)
        try:
            self.net = build_net(net, num_classes=num_classes, in_dim=in_dim, max_frames=max_frames,
                                 **(net_kwargs or {}))
        except (TypeError, ValueError, RuntimeError) as e:  # a model.* value the network cannot take
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"model={net} {net_kwargs or {}}: cannot build the network: {first}") from None
        apply_init(self.net, init, **(init_kwargs or {}))
        # Standardisation statistics live in the checkpoint, so a loaded model needs no dataset.
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self._loss_sum, self._loss_count = torch.zeros(()), 0  # the training epoch's running loss
        self.val_metrics = TaggingMetrics()
        self.test_metrics = TaggingMetrics()

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.hparams.input_norm == "standardize":
            mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)
            x = ((x - self.input_mean) / self.input_std) * mask  # padding stays zero
        return self.net(x, lengths)

    def predict_proba(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x, lengths))

    # ---- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, lengths, y = batch["x"], batch["lengths"], batch["y"]
        if self.hparams.mixup_alpha > 0:
            lam = float(torch.distributions.Beta(self.hparams.mixup_alpha, self.hparams.mixup_alpha).sample())
            perm = torch.randperm(len(x), device=x.device)
            x = lam * x + (1 - lam) * x[perm]
            y = lam * y + (1 - lam) * y[perm]
            lengths = torch.maximum(lengths, lengths[perm])
        if self.hparams.label_smoothing > 0:
            eps = self.hparams.label_smoothing
            y = y * (1 - eps) + 0.5 * eps
        loss = F.binary_cross_entropy_with_logits(self(x, lengths), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}: "
                f"try a lower optim.lr (now {self.hparams.lr}), optim.warmup_epochs>0, another init, "
                f"or check the input data")
        # The epoch's mean loss is summed here and logged once, at the epoch's end: every self.log call
        # walks Lightning's result metadata (~3 ms a call on a laptop CPU, a fifth of an FC step), so
        # the step loss goes to the logger and the progress bar only at the steps the logger writes.
        self._loss_sum += loss.detach() * len(x)
        self._loss_count += len(x)
        every = self._trainer.log_every_n_steps if self._trainer is not None else 1
        if (self.global_step + 1) % max(1, every) == 0:
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
        hp = self.hparams
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
        logits = self(batch["x"], batch["lengths"])
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

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"probs": self.predict_proba(batch["x"], batch["lengths"]), "index": batch["index"]}

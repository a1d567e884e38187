"""Callbacks that aer runs use: training throughput, metric history, the heap, divergence, the EMA of weights."""

from __future__ import annotations

import gc
import statistics
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging, TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, read as a person reads a run: `Epoch 2/2`, and the training bar counting the
    epoch's batches (optimizer steps), not its fetches (blocks of data.steps_per_fetch batches)."""

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        bar, sampler = self.train_progress_bar, trainer.train_dataloader.sampler
        if isinstance(bar.total, int) and callable(getattr(sampler, "steps_in", None)):
            bar.total = sampler.steps_in(bar.total)
        bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += len(batch.get("steps") or [0])
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = self.batches
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar, at tqdm's own pace


class StopsRun(pl.Callback):
    """A callback that may end a run before its last epoch; `stopped` then holds the run's status (the
    Optuna pruning callback's "pruned"), which aer.train reports instead of judging the run."""

    stopped: str | None = None


class Throughput(pl.Callback):
    """Training clips per second of wall time, per epoch, from the epoch's start to its last batch.

    Validation runs after the last training batch, so it is not counted; neither are checkpoint
    writes at the epoch's end. `clips_per_s` is the median over the epochs after the first, which
    pays for warm-up (allocator, thread pools).
    """

    def __init__(self) -> None:
        self.epoch_rates: list[float] = []
        self._start = self._last = 0.0
        self._clips = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.perf_counter()
        self._clips = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._clips += len(batch["y"]) * trainer.world_size
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._clips and self._last > self._start:
            rate = self._clips / (self._last - self._start)
            self.epoch_rates.append(rate)
            pl_module.log_epoch({"train/clips_per_s_epoch": rate})

    @property
    def clips_per_s(self) -> float:
        rates = self.epoch_rates[1:] or self.epoch_rates
        return statistics.median(rates) if rates else float("nan")

    def state_dict(self) -> dict:
        return {"epoch_rates": list(self.epoch_rates)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_rates = list(state.get("epoch_rates", []))


class BestMetric(pl.Callback):
    """Tracks the best value a metric reached at any validation, and the epoch last validated (both
    kept across a resume)."""

    def __init__(self, monitor: str = "val/mAP", mode: str = "max") -> None:
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.validated_epoch: int | None = None  # trainer.current_epoch (0-based) at the last validation

    # on_validation_end: callbacks' epoch-end hooks run before the module logs the epoch's metrics
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        self.validated_epoch = trainer.current_epoch
        v = float(trainer.callback_metrics[self.monitor])
        if self.best is None or (v > self.best if self.mode == "max" else v < self.best):
            self.best = v

    def state_dict(self) -> dict:
        return {"best": self.best, "validated_epoch": self.validated_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.validated_epoch = state.get("validated_epoch")


class FrozenHeap(pl.Callback):
    """Keeps Python's full garbage collections off the training loop.

    After setup a training process holds ~400k tracked objects (torch, Lightning, Hydra, TensorBoard);
    Lightning's loop allocates enough small objects per step that the collector runs a full pass
    every few epochs, and one pass over that heap took 330 ms on a laptop CPU, half an fc epoch.
    `gc.freeze()` at the start of fit moves what exists then out of the collector's view (it lives
    for the whole run anyway; no collection first, which would cost that same pass); objects made
    during training are collected as usual, and `gc.unfreeze()` at the end of fit hands the frozen
    ones back.
    """

    def __init__(self) -> None:
        self._frozen = False

    def on_fit_start(self, trainer, pl_module) -> None:
        gc.freeze()
        self._frozen = True

    def _thaw(self) -> None:
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def on_fit_end(self, trainer, pl_module) -> None:
        self._thaw()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._thaw()


class Divergence(pl.Callback):
    """Says whether a run diverged: its training loss grew many times over, or validation stayed at chance.

    The reference is the loss of the first training batch (the initial model's, about ln 2 for
    sigmoid outputs near 0.5), so a learning rate that blows up within the first epoch is caught too.
    """

    def __init__(self, loss_factor: float = 10.0, chance_auc: float = 0.505, min_epochs: int = 5,
                 min_steps: int = 50) -> None:
        self.loss_factor, self.chance_auc, self.min_epochs = loss_factor, chance_auc, min_epochs
        self.min_steps = min_steps  # fewer optimizer steps say too little to call a run diverged
        self.first_loss: float | None = None
        self.epoch_losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.first_loss is None and outputs is not None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if isinstance(outputs, dict) and "step_losses" in outputs:  # a block's steps: its first one
                loss = outputs["step_losses"][0]
            self.first_loss = float(loss)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        loss = getattr(pl_module, "epoch_loss", float("nan"))  # this epoch's (callbacks run before its logging)
        if loss == loss:
            self.epoch_losses.append(float(loss))

    def verdict(self, metrics: dict, epochs: int, steps: int) -> str | None:
        """Why the run counts as diverged, in one line, or None; a run of fewer than min_steps steps is not
        judged."""
        if steps < self.min_steps:
            return None
        if self.first_loss and self.epoch_losses and self.epoch_losses[-1] > self.loss_factor * self.first_loss:
            return (f"train/loss rose from {self.first_loss:.4g} (first batch) to {self.epoch_losses[-1]:.4g} "
                    f"(last epoch): lower optim.lr or add optim.warmup_epochs")
        auc = metrics.get("val/mAUC")
        if auc is not None and epochs >= self.min_epochs and auc < self.chance_auc:
            return (f"val/mAUC is {auc:.4f} after {epochs} epochs, at chance (< {self.chance_auc}): "
                    f"the model learned nothing; check optim.lr and the data")
        return None

    def stalled(self) -> str | None:
        """Why the training loss looks as if it never moved (a learning rate far too low), or None."""
        losses = self.epoch_losses
        if len(losses) >= 2 and max(losses) - min(losses) <= 1e-6 * abs(losses[0]):
            return (f"train/loss stayed at {losses[0]:.6g} for {len(losses)} epochs: nothing was learned "
                    f"(optim.lr too low?)")
        return None

    def state_dict(self) -> dict:
        return {"first_loss": self.first_loss, "epoch_losses": list(self.epoch_losses)}

    def load_state_dict(self, state: dict) -> None:
        self.first_loss = state.get("first_loss")
        self.epoch_losses = list(state.get("epoch_losses", []))


class EMA(EMAWeightAveraging):
    """Lightning's EMA of the weights (aer's `ema.*`), updated after every optimizer step also where a
    training batch is a block of several (data.steps_per_fetch > 1): Lightning calls on_train_batch_end
    once a block, so the average is also brought up to date just before each optimizer step, from a
    hook on the optimizer (torch's `register_step_pre_hook`), when the weights are those the previous
    step left. Lightning swaps the average in for validation and into the checkpoints' state_dict, and
    copies it into the model when training ends."""

    def __init__(self, decay: float, start_step: int = 0) -> None:
        super().__init__(decay=decay, update_starting_at_step=start_step)
        self.hooks: list = []

    def on_train_start(self, trainer, pl_module) -> None:
        def before_step(*_) -> None:  # updates only for a step taken since the last update (Lightning's rule)
            self.on_train_batch_end(trainer, pl_module, None, None, 0)

        self.hooks = [opt.register_step_pre_hook(before_step) for opt in trainer.optimizers]

    def _unhook(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def on_train_end(self, trainer, pl_module) -> None:
        self._unhook()
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._unhook()

"""`Tagger`: the LightningModule around any registered network (inputs, loss, optimizer, metrics, logging)."""

from __future__ import annotations

import math
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from aer.augment import add_noise, drop_frames
from aer.data.records import EMBED_DIM, FEATURE_SCALE, MAX_FRAMES
from aer.init import apply_init
from aer.metrics import TaggingMetrics
from aer.models import build_net
from aer.models.skiplstm import frame_mask
from aer.schema import check
from aer.settings import AugmentSettings, DataSettings, DistillSettings, OptimSettings
from aer.utils import error_line


class NonFiniteLossError(FloatingPointError):
    pass


class TeacherTargets:
    """A teacher ensemble's probabilities (N, C) of the training clips at `rows` of the training split's
    arrays (of `clips` rows), looked up by a batch's `index`. Not a buffer: it is never saved with the
    weights, and SWA's deepcopy of the module shares it instead of copying it (it can be GBs)."""

    def __init__(self, rows: torch.Tensor, probs: torch.Tensor, clips: int):
        rows = torch.as_tensor(rows, dtype=torch.int64)
        if rows.ndim != 1 or len(rows) != len(probs) or (len(rows) and not 0 <= int(rows.min()) <= int(rows.max())
                                                         < clips) or len(torch.unique(rows)) != len(rows):
            raise ValueError(f"teacher targets: {len(rows)} distinct rows in 0..{clips - 1} expected, one per "
                             f"row of probabilities ({len(probs)})")
        self.position = torch.full((clips,), -1, dtype=torch.int64)
        self.position[rows] = torch.arange(len(rows))
        self.probs = torch.as_tensor(probs)

    def __deepcopy__(self, memo: dict) -> TeacherTargets:
        return self

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Float probabilities (B, C) of the clips at `index`, on its device (the table moves there once)."""
        if self.probs.device != index.device:
            self.position, self.probs = self.position.to(index.device), self.probs.to(index.device)
        position = self.position[index]
        if index.device.type == "cpu" and bool((position < 0).any()):  # reading it elsewhere would sync
            raise ValueError(f"teacher targets: no teacher probabilities for rows "
                             f"{index[position < 0][:5].tolist()}: they were computed for other clips")
        return self.probs[position].float()


class Tagger(pl.LightningModule):
    """Multi-label tagger: sigmoid cross-entropy on logits, Adam(W), mAP/mAUC on validation and test.

    Arguments are named as the config keys they come from: model=NAME with its model.* options,
    init=NAME with init.*, data.normalize, and the optim.* and augment.* sections (aer.settings
    declares them all and their defaults). Every argument is a plain value stored in the
    checkpoint, so `aer.checkpoint.load_tagger(path)` rebuilds the network with no config at hand.

    The Tagger owns its inputs: it takes the uint8 features the data serves (or any 0-255 scale),
    divides them by 255 and, with normalize=standardize, standardises them with statistics stored
    in the checkpoint (`set_input_stats`). `predict_proba` is the one way to probabilities.

    It owns its training targets too: the batch's labels, with augment.ontology_targets their ancestors
    added (`set_ancestors`, handed over at fit start and not saved), mixed up and smoothed as asked, and
    with distill.* blended with a teacher ensemble's probabilities (`set_teacher_targets`, not saved).
    """

    def __init__(self, model: str, init: str, model_kwargs: dict | None = None, init_kwargs: dict | None = None,
                 normalize: str = DataSettings.normalize, optim: dict | None = None, augment: dict | None = None,
                 num_classes: int = DataSettings.num_classes, max_frames: int = MAX_FRAMES, in_dim: int = EMBED_DIM,
                 distill: dict | None = None):
        super().__init__()
        check(DataSettings, {"normalize": normalize}, "data")
        # Stored complete (defaults filled in), so a checkpoint says everything it was trained with.
        self.optim, self.augment = OptimSettings.build(optim), AugmentSettings.build(augment)
        self.distill = DistillSettings.build(distill)
        self.save_hyperparameters(
            {"model": model, "model_kwargs": dict(model_kwargs or {}), "init": init,
             "init_kwargs": dict(init_kwargs or {}), "normalize": normalize, "optim": self.optim.as_dict(),
             "augment": self.augment.as_dict(), "distill": self.distill.as_dict(),
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
        # Training-only: the ontology's ancestor matrix (augment.ontology_targets) comes from the data at
        # every fit (a resumed one too), never from a checkpoint, and inference needs none.
        self.register_buffer("ancestors", None, persistent=False)
        self.teacher: TeacherTargets | None = None
        self._loss_sum, self._loss_count = torch.zeros(()), 0  # the training epoch's running loss
        self._logged_in_block = False
        self._direct_steps: bool | None = None  # decided when a fit starts (_hooks_unused)
        self._step_callbacks: list = []  # the trainer's callbacks called after each step of a block
        self.val_metrics = TaggingMetrics()
        self.test_metrics = TaggingMetrics()

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension statistics of the training frames, on the x/255 scale (AudioSetDataModule.input_stats)."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    def set_ancestors(self, ancestors: torch.Tensor) -> None:
        """(C, C) bool, [c, a]: class a is class c or above it in the ontology (aer.ontology.class_ancestors)."""
        c = self.hparams.num_classes
        if tuple(ancestors.shape) != (c, c):
            raise ValueError(f"augment.ontology_targets: an ancestor matrix of shape {tuple(ancestors.shape)} for "
                             f"a model of {c} classes")
        self.ancestors = ancestors.to(device=self.device, dtype=torch.float32)

    def set_teacher_targets(self, teacher: TeacherTargets) -> None:
        """The teachers' probabilities of the training clips, for distill.* (aer.distill.teacher_targets)."""
        if teacher.probs.shape[1] != self.hparams.num_classes:
            raise ValueError(f"distill: the teachers predict {teacher.probs.shape[1]} classes, the model "
                             f"{self.hparams.num_classes}")
        self.teacher = teacher

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
    @property
    def automatic_optimization(self) -> bool:
        """Lightning's automatic optimization, unless the training data serves blocks of several batches
        (data.steps_per_fetch > 1): then training_step takes their optimizer steps itself."""
        return self.steps_per_fetch == 1

    @property
    def steps_per_fetch(self) -> int:
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        return int(getattr(dm, "steps_per_fetch", 1))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | dict[str, torch.Tensor]:
        sizes = batch.get("steps")
        if self.automatic_optimization:
            if sizes is not None and len(sizes) > 1:
                raise ValueError(f"the training batch is a block of {len(sizes)} batches, which only an "
                                 f"AudioSetDataModule with data.steps_per_fetch > 1 passed to trainer.fit serves")
            return self._loss(batch, log_to="lightning")
        return self._train_block(batch, batch_idx, sizes or [len(batch["y"])])

    def _train_block(self, batch: dict, batch_idx: int, sizes: list[int]) -> dict[str, torch.Tensor]:
        """The optimizer steps of a block's batches, one after another, as automatic optimization takes them:
        zero_grad, backward, step, then the step-interval schedulers; the epoch-interval ones after the
        epoch's last block; the callbacks with an `after_optimizer_step(trainer, module)` method are called
        after each step (Lightning calls on_train_batch_end once a block). Where a callback or precision
        plugin implements the hooks of a step (on_before_backward, on_before_optimizer_step, ...) they run
        for each step, through Lightning's manual_backward and optimizer step; where none does, the step
        calls backward and the optimizer itself."""
        opt = self.optimizers()
        parts = [dict(zip(batch, values)) for values in zip(*(
            torch.split(v, sizes) if isinstance(v, torch.Tensor) else [v] * len(sizes) for v in batch.values()))]
        skip_backward = self.trainer.fit_loop._skip_backward  # SWA's BatchNorm epoch: forward passes only
        losses = []
        for part in parts:
            loss = self._loss(part, log_to="loggers")
            if not skip_backward:
                if self._direct_steps:  # what manual_backward and opt.step come down to here, without their
                    opt.optimizer.zero_grad()  # dispatch of hooks nothing implements (4% of an FC step at 50)
                    loss.backward()
                    opt._on_before_step()  # Lightning's count of optimizer steps (trainer.global_step)
                    opt.optimizer.step()
                    opt._on_after_step()
                else:
                    opt.zero_grad()
                    self.manual_backward(loss)
                    opt.step()
                self._step_schedulers("step")
                for cb in self._step_callbacks:  # e.g. the EMA of the weights, after each step as without blocks
                    cb.after_optimizer_step(self.trainer, self)
            losses.append(loss.detach())
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._step_schedulers("epoch")
        # Lightning counts one batch a fetch; its logger step (what epoch-end metrics are logged at) is kept
        # at the optimizer steps taken, as with one batch a fetch (it adds the block's last one itself).
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += len(parts) - 1
        # the block's loss (its clips' mean) and each step's, as Lightning hands them to on_train_batch_end
        mean = torch.stack([loss * n for loss, n in zip(losses, sizes)]).sum() / sum(sizes)  # no host copy
        if self._logged_in_block:
            self.log("train/loss_step", losses[-1], on_step=True, on_epoch=False, prog_bar=True, logger=False,
                     batch_size=sizes[-1])
            self._logged_in_block = False
        return {"loss": mean, "step_losses": torch.stack(losses)}

    def _hooks_unused(self) -> bool:
        """Whether manual_backward and the optimizer's step would only call loss.backward() and step(): full
        precision on one device, and no callback (nor this module) implementing the hooks they dispatch."""
        from pytorch_lightning.plugins.precision import Precision
        from pytorch_lightning.strategies import SingleDeviceStrategy
        from pytorch_lightning.utilities.model_helpers import is_overridden

        trainer = self.trainer
        if type(trainer.precision_plugin) is not Precision or type(trainer.strategy) is not SingleDeviceStrategy:
            return False
        hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "backward")
        return not any(is_overridden(h, self, pl.LightningModule) for h in hooks) and not any(
            is_overridden(h, cb, pl.Callback) for cb in trainer.callbacks for h in hooks[:3])

    def _step_schedulers(self, interval: str) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval and (self.global_step if interval == "step" else
                                                self.current_epoch + 1) % config.frequency == 0:
                config.scheduler.step()

    def with_ancestors(self, y: torch.Tensor) -> torch.Tensor:
        """0/1 labels (B, C) with every positive class's ancestors positive too."""
        return (y @ self.ancestors).clamp_max(1.0)

    def _loss(self, batch: dict, log_to: str) -> torch.Tensor:
        """The training loss of one batch (augmented as asked); at the logger's steps it is logged."""
        lengths, y = batch["lengths"], batch["y"]
        x = self.scale(batch["features"], lengths)
        aug = self.augment
        if aug.frame_dropout > 0:
            x, lengths = drop_frames(x, lengths, aug.frame_dropout)
        if aug.feature_noise > 0:
            x = add_noise(x, lengths, aug.feature_noise)
        if aug.ontology_targets:
            y = self.with_ancestors(y)
        teacher = self.teacher.lookup(batch["index"]) if self.distill.enabled else None
        if aug.mixup_alpha > 0:
            lam = float(torch.distributions.Beta(aug.mixup_alpha, aug.mixup_alpha).sample())
            perm = torch.randperm(len(x), device=x.device)
            x = lam * x + (1 - lam) * x[perm]
            y = lam * y + (1 - lam) * y[perm]
            if teacher is not None:
                teacher = lam * teacher + (1 - lam) * teacher[perm]
            lengths = torch.maximum(lengths, lengths[perm])
        if aug.label_smoothing > 0:  # of the labels; the teachers' probabilities are soft already
            y = y * (1 - aug.label_smoothing) + 0.5 * aug.label_smoothing
        logits = self(x, lengths)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        if teacher is not None:
            w = self.distill.weight
            loss = (1 - w) * loss + w * F.binary_cross_entropy_with_logits(logits, teacher)
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
        if logging_step and log_to == "lightning":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        elif logging_step and every > 0:  # inside a block: at this very step, as Lightning would log it
            for logger in self.loggers:  # with the epoch, as Lightning writes every step's metrics
                logger.log_metrics({"train/loss_step": float(loss.detach()), "epoch": float(self.current_epoch)},
                                   step=self.global_step)
            self._logged_in_block = True
        return loss

    @property
    def epoch_loss(self) -> float:
        """The mean training loss of the current epoch's batches so far (this rank's)."""
        return float(self._loss_sum) / self._loss_count if self._loss_count else float("nan")

    def on_fit_start(self) -> None:
        if not self.automatic_optimization:  # the step loss is logged at optimizer steps, not at fetches (blocks)
            warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the "
                                    r"logging interval")
        self._direct_steps = self._hooks_unused()
        self._step_callbacks = [cb for cb in self.trainer.callbacks
                                if callable(getattr(cb, "after_optimizer_step", None))]
        if self.augment.ontology_targets and self.ancestors is None:
            raise ValueError("augment.ontology_targets=true, but the Tagger was given no ancestor matrix: "
                             "set_ancestors(aer.ontology.root_ancestors(...)) before fit, as aer.train does")
        if self.distill.enabled and self.teacher is None:
            raise ValueError("distill.ckpts/sweep are set, but the Tagger was given no teacher targets: "
                             "set_teacher_targets(aer.distill.teacher_targets(...)) before fit, as aer.train does")

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0

    def on_train_epoch_end(self) -> None:
        if self._loss_count:  # mean over the epoch's clips; under DDP, averaged over the ranks
            self.log("train/loss_epoch", self._loss_sum / self._loss_count, on_step=False, on_epoch=True,
                     prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        hp = self.optim
        adam = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        opt = adam(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if hp.scheduler == "none" and hp.warmup_epochs <= 0:
            return opt
        if hp.scheduler == "step":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, hp.step_size, hp.gamma)}
        total = max(1, self._optimizer_steps())
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

    def _optimizer_steps(self) -> int:
        """The optimizer steps the whole fit will take (Lightning's estimate counts fetches, not blocks' steps)."""
        fetches = int(self.trainer.estimated_stepping_batches)  # this also sets up the training loader
        if self.automatic_optimization:
            return fetches
        per_epoch = self.trainer.train_dataloader.sampler.steps_in(self.trainer.num_training_batches)
        total = per_epoch * max(1, self.trainer.max_epochs or 1)
        return min(total, self.trainer.max_steps) if self.trainer.max_steps > 0 else total

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

"""`Tagger`: the LightningModule around any registered network (inputs, loss, optimizer, metrics, logging)."""

from __future__ import annotations

import math
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import StochasticWeightAveraging

from aer.augment import add_noise, drop_frames
from aer.data.records import EMBED_DIM, FEATURE_SCALE, MAX_FRAMES
from aer.errors import one_line
from aer.init import apply_init
from aer.metrics import TaggingMetrics
from aer.models import build_net
from aer.models.layers import exporting, frame_mask
from aer.schema import Section, check
from aer.settings import INITS, MODELS, AugmentSettings, DataSettings, DistillSettings, OptimSettings, registered

CLASSES_KEY = "aer_classes"  # checkpoint entry: the classes' (mid, display name), as the training data named them
SPLIT_KEY = "aer_split"      # checkpoint entry: what the run's validation split held (datamodule.split_record)


class NonFiniteLossError(FloatingPointError):
    pass


def section(cls: type[Section], value) -> Section:
    """`value` as a `cls` section: as it is when it is one (checked when it was built), else built from plain
    values (a checkpoint's), which checks them."""
    return value if isinstance(value, cls) else cls.build(value)


def scale(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """uint8 features (0-255) as floats on the [0, 1] scale the networks are trained on; frames at and past
    a clip's length are zero (as the data pads them), whatever the input holds there."""
    x, frames = features.float().div(FEATURE_SCALE), features.shape[1]
    if features.device.type != "cpu" or exporting():  # no host sync, no data-dependent branch in a traced graph
        return x * frame_mask(lengths, frames).unsqueeze(-1)
    short = torch.nonzero(lengths < frames)[:, 0]  # ~2% of AudioSet's clips: only they are masked (same values)
    if len(short):
        x[short] = x[short] * frame_mask(lengths[short], frames).unsqueeze(-1)
    return x


def standardize(x: torch.Tensor, lengths: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Scaled clips standardised per dimension (data.normalize=standardize); padding stays zero."""
    return ((x - mean) / std) * frame_mask(lengths, x.shape[1]).unsqueeze(-1)


class Probabilities(torch.nn.Module):
    """A trained Tagger as a plain torch module: uint8 features (B, T, D) and int64 lengths (B,) in, probabilities
    (B, C) out, the Tagger's input path (x/255, masking, its standardisation) inside."""

    def __init__(self, tagger: Tagger) -> None:
        super().__init__()
        self.net = tagger.net
        self.standardized = tagger.hparams.normalize == "standardize"
        self.register_buffer("mean", tagger.input_mean.detach().clone())
        self.register_buffer("std", tagger.input_std.detach().clone())
        self.train(tagger.training)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = scale(features, lengths)
        if self.standardized:
            x = standardize(x, lengths, self.mean, self.std)
        return torch.sigmoid(self.net(x, lengths))


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
    init=NAME with init.*, data.normalize, and the optim.*, augment.* and distill.* sections (aer.settings
    declares them all and their defaults), given as settings objects or as the plain values a checkpoint
    stores, so `aer.checkpoint.Checkpoint.load(path).tagger()` rebuilds the network with no config at hand.

    The Tagger owns its inputs: it takes the uint8 features the data serves (or any 0-255 scale),
    divides them by 255 and, with normalize=standardize, standardises them with statistics stored
    in the checkpoint (`set_input_stats`). `predict_proba` is the one way to probabilities.

    It owns its training targets too: the batch's labels, with augment.ontology_targets their ancestors
    added (`set_ancestors`, handed over at fit start and not saved), mixed up and smoothed as asked, and
    with distill.* blended with a teacher ensemble's probabilities (`set_teacher_targets`, not saved).

    One training loop serves every configuration, through Lightning's manual optimization: a training
    batch may be a block of several batches (the data's `steps`, data.steps_per_fetch), and each of them
    is a step as Lightning's automatic optimization takes it (`manual_backward`, gradients accumulated over
    `accumulate_grad_batches` batches with the loss divided by it, clipped in `on_before_optimizer_step`,
    the optimizer's step, the step-interval schedulers; the epoch-interval ones after the epoch's last
    batch). Lightning refuses its Trainer's clipping and accumulation flags under manual optimization, so
    aer.train hands them to `configure_steps` instead.
    """

    def __init__(self, model: str, init: str, model_kwargs: dict | Section | None = None,
                 init_kwargs: dict | Section | None = None, normalize: str = DataSettings.normalize,
                 optim: dict | OptimSettings | None = None, augment: dict | AugmentSettings | None = None,
                 num_classes: int = DataSettings.num_classes, max_frames: int = MAX_FRAMES, in_dim: int = EMBED_DIM,
                 distill: dict | DistillSettings | None = None):
        super().__init__()
        self.automatic_optimization = False  # training_step takes the steps: one loop for blocks of any size
        check(DataSettings, {"normalize": normalize}, "data")
        net_settings = section(registered(MODELS, model, "model"), model_kwargs)
        init_settings = section(registered(INITS, init, "init"), init_kwargs)
        self.optim, self.augment = section(OptimSettings, optim), section(AugmentSettings, augment)
        self.distill = section(DistillSettings, distill)
        # Stored complete (defaults filled in), so a checkpoint says everything it was trained with.
        self.save_hyperparameters(
            {"model": model, "model_kwargs": net_settings.as_dict(), "init": init,
             "init_kwargs": init_settings.as_dict(), "normalize": normalize, "optim": self.optim.as_dict(),
             "augment": self.augment.as_dict(), "distill": self.distill.as_dict(),
             "num_classes": num_classes, "max_frames": max_frames, "in_dim": in_dim}, logger=False)
        try:
            self.net = build_net(model, net_settings, num_classes=num_classes, in_dim=in_dim, max_frames=max_frames)
        except (TypeError, RuntimeError) as e:  # a model.* value the network cannot take
            raise ValueError(f"model={model} {net_settings.as_dict()}: cannot build the network: "
                             f"{one_line(e, typed=True)}") from None
        apply_init(self.net, init, init_settings)
        # Standardisation statistics live in the checkpoint, so a loaded model needs no dataset.
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        # Training-only: the ontology's ancestor matrix (augment.ontology_targets) comes from the data at
        # every fit (a resumed one too), never from a checkpoint, and inference needs none.
        self.register_buffer("ancestors", None, persistent=False)
        self.teacher: TeacherTargets | None = None
        self.class_names: list[list[str]] | None = None  # (mid, name) per class, from the training data
        self.clip_val: float | None = None   # configure_steps
        self.clip_algorithm: str | None = None
        self.accumulate = 1
        self._loss_sum, self._loss_count = torch.zeros(()), 0  # the training epoch's running loss
        self._batches = 0  # training batches this epoch: accumulation counts them
        self._forward_only = False  # SWA's BatchNorm epoch: forward passes, no steps
        self.val_metrics = TaggingMetrics()
        self.test_metrics = TaggingMetrics()
        self._eval_loss, self._eval_clips = torch.zeros(()), 0  # the evaluation epoch's running loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.class_names:
            checkpoint[CLASSES_KEY] = self.class_names
        served = getattr(self.trainer.datamodule, "served", None)
        record = served() if callable(served) else None
        if record:
            checkpoint[SPLIT_KEY] = record

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.class_names = checkpoint.get(CLASSES_KEY) or self.class_names

    def configure_steps(self, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None,
                        accumulate_grad_batches: int | None = None) -> None:
        """Lightning's trainer.gradient_clip_val / gradient_clip_algorithm / accumulate_grad_batches, taken
        as its automatic optimization takes them."""
        self.clip_val = gradient_clip_val or None
        self.clip_algorithm = gradient_clip_algorithm
        self.accumulate = accumulate_grad_batches or 1

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension statistics of the training frames, on the x/255 scale (AudioSetDataModule.input_stats)."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    def set_ancestors(self, ancestors: torch.Tensor) -> None:
        """(C, C) bool, [c, a]: class a is class c or above it in the ontology (aer.data.ontology.class_ancestors)."""
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

    scale = staticmethod(scale)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits of scaled clips `x` (B, T, D) on [0, 1] (padding zero), standardised here if asked."""
        if self.hparams.normalize == "standardize":
            x = standardize(x, lengths, self.input_mean, self.input_std)
        return self.net(x, lengths)

    def predict_proba(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, C) of uint8 `features` (B, T, D) as the data serves them."""
        return torch.sigmoid(self(scale(features, lengths), lengths))

    def probabilities(self) -> Probabilities:
        """This Tagger as a plain torch module (what export records and inference runs)."""
        return Probabilities(self)

    # ---- training
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """The batch's optimizer steps (a block's: one per batch it holds); its loss, and each batch's."""
        sizes = batch.get("steps") or [len(batch["y"])]
        parts = [dict(zip(batch, values)) for values in zip(*(
            torch.split(v, sizes) if isinstance(v, torch.Tensor) else [v] * len(sizes) for v in batch.values()))]
        epoch_end = batch_idx + 1 >= self.trainer.num_training_batches
        opt = self.optimizers()
        every = max(1, self.trainer.log_every_n_steps)
        losses, logged = [], None
        for i, part in enumerate(parts):
            loss = self._loss(part)
            losses.append(loss.detach())
            if self._forward_only:
                continue
            self._batches += 1
            steps = self._batches % self.accumulate == 0 or (epoch_end and i == len(parts) - 1)
            logging_step = steps and (self.global_step + 1) % every == 0
            # On an accelerator the loss is read (a host synchronisation) only at logging steps; on the CPU
            # reading it is free, and a non-finite loss stops the run at once.
            if (logging_step or loss.device.type == "cpu") and not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}: "
                    f"try a lower optim.lr (now {self.optim.lr}), optim.warmup_epochs>0, another init, "
                    f"or check the input data")
            self.manual_backward(loss / self.accumulate if self.accumulate > 1 else loss)
            if not steps:
                continue
            if logging_step:  # at the step Lightning's automatic optimization would log it
                for logger in self.loggers:
                    logger.log_metrics({"train/loss_step": float(loss.detach())}, step=self.global_step)
                logged = loss.detach()
            opt.step()
            opt.zero_grad()
            self._step_schedulers("step")
        if epoch_end:
            self._step_schedulers("epoch")
        if logged is not None:  # the progress bar's; every self.log call costs ~3 ms of Lightning's bookkeeping
            self.log("train/loss_step", logged, on_step=True, on_epoch=False, prog_bar=True, logger=False,
                     batch_size=sizes[-1])
        mean = torch.stack([loss * n for loss, n in zip(losses, sizes)]).sum() / sum(sizes)  # no host copy
        return {"loss": mean, "step_losses": torch.stack(losses)}

    def on_before_optimizer_step(self, optimizer) -> None:
        # here, as in automatic optimization: after the precision plugin unscaled the gradients
        if self.clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.clip_val,
                                gradient_clip_algorithm=self.clip_algorithm)

    def _step_schedulers(self, interval: str) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval and (self.global_step if interval == "step" else
                                                self.current_epoch + 1) % config.frequency == 0:
                config.scheduler.step()

    def with_ancestors(self, y: torch.Tensor) -> torch.Tensor:
        """0/1 labels (B, C) with every positive class's ancestors positive too."""
        return (y @ self.ancestors).clamp_max(1.0)

    def _loss(self, batch: dict) -> torch.Tensor:
        """The training loss of one batch, augmented as asked."""
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
        self._loss_sum += loss.detach() * len(x)
        self._loss_count += len(x)
        return loss

    @property
    def epoch_loss(self) -> float:
        """The mean training loss of the current epoch's batches so far (this rank's)."""
        return float(self._loss_sum) / self._loss_count if self._loss_count else float("nan")

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and callable(getattr(dm, "class_names", None)):  # saved with the weights
            self.class_names = [list(n) for n in dm.class_names()]
        # Lightning counts a block of batches as one: its warning that an epoch holds fewer batches than the
        # logging interval counts blocks, while the step loss is logged at optimizer steps
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the "
                                r"logging interval")
        if self.augment.ontology_targets and self.ancestors is None:
            raise ValueError("augment.ontology_targets=true, but the Tagger was given no ancestor matrix: "
                             "set_ancestors(aer.data.ontology.root_ancestors(...)) before fit, as aer.train does")
        if self.distill.enabled and self.teacher is None:
            raise ValueError("distill.ckpts/sweep are set, but the Tagger was given no teacher targets: "
                             "set_teacher_targets(aer.distill.teacher_targets(...)) before fit, as aer.train does")

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count, self._batches = torch.zeros((), device=self.device), 0, 0
        # SWA's last epoch recomputes the BatchNorm statistics of the averaged weights: forward passes only
        self._forward_only = any(isinstance(cb, StochasticWeightAveraging) and self.current_epoch > cb.swa_end
                                 and cb.pl_module_contains_batch_norm(self) for cb in self.trainer.callbacks)

    def on_train_epoch_end(self) -> None:
        metrics = {"train/lr": self.optimizers().param_groups[0]["lr"]}
        if self._loss_count:  # mean over the epoch's clips, all ranks'
            metrics["train/loss_epoch"] = self._mean(self._loss_sum, self._loss_count)
        self.log_epoch(metrics, prog_bar=True)

    def log_epoch(self, metrics: dict, prog_bar: bool = False) -> None:
        """Epoch-level metrics (the same numbers on every rank), with the epoch they describe (`epoch`: 1
        after the first), which aer.loggers' loggers take as the step to write them at."""
        self.log_dict(metrics, prog_bar=prog_bar)
        self.log("epoch", float(self.current_epoch + (1 if self.trainer.state.fn == "fit" else 0)))

    def _mean(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """total / count over all ranks' (one device: as it is)."""
        strategy = self.trainer.strategy
        n = torch.tensor(float(count), device=total.device)
        return strategy.reduce(total, reduce_op="sum") / strategy.reduce(n, reduce_op="sum")

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
        """The optimizer steps the whole fit will take: Lightning's estimate counts fetches (blocks), aer steps
        once a batch (every accumulate_grad_batches batches, and at each epoch's end)."""
        fetches = int(self.trainer.estimated_stepping_batches)  # this also sets up the training loader
        sampler = self.trainer.train_dataloader.sampler
        blocks = self.trainer.num_training_batches
        batches = sampler.steps_in(blocks) if hasattr(sampler, "steps_in") else blocks
        epochs = max(1, self.trainer.max_epochs or 1) if fetches else 0
        total = math.ceil(batches / self.accumulate) * epochs
        return min(total, self.trainer.max_steps) if self.trainer.max_steps > 0 else total

    # ---- evaluation
    def _eval_step(self, batch: dict, metrics: TaggingMetrics) -> None:
        if len(batch["y"]) == 0:  # a DDP rank with no clips to score: its (0, C) state joins the epoch-end syncs
            metrics.update(batch["y"], batch["y"])
            return
        logits = self(self.scale(batch["features"], batch["lengths"]), batch["lengths"])
        self._eval_loss = self._eval_loss + F.binary_cross_entropy_with_logits(logits, batch["y"]) * len(logits)
        self._eval_clips += len(logits)
        metrics.update(torch.sigmoid(logits), batch["y"])

    def _eval_start(self) -> None:
        self._eval_loss, self._eval_clips = torch.zeros((), device=self.device), 0

    def _eval_end(self, metrics: TaggingMetrics, prefix: str) -> None:
        out = metrics.compute()
        metrics.reset()
        loss = self._mean(self._eval_loss, self._eval_clips)
        self.log_epoch({f"{prefix}/loss": loss, **{f"{prefix}/{k}": v for k, v in out.items()}})

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_end(self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_end(self.test_metrics, "test")

"""Every setting a user can type, declared once: its default, type and allowed values.

Each dataclass here is one config section (data, model=NAME, init=NAME, optim, augment, swa and
the top-level keys). Hydra's schema is built from them (aer.config registers it in the
ConfigStore; the yaml files hold only what differs from these defaults), and the code that uses a
section builds it from the same class, whose `__post_init__` validates the values. No torch here:
a bad value is reported before anything heavy is imported or read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from aer.data.records import NUM_CLASSES
from aer.schema import Annotated, Fraction, NonNegative, Positive, Range, check, hints, split_hint


@dataclass
class Section:
    """A config section; `KEY` is where it lives in the config (the prefix of its error messages)."""

    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, hint in hints(type(self)).items():  # nested sections given as dicts (from a config)
            inner = split_hint(hint)[0]
            value = getattr(self, name, None)
            if isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, Section):
                setattr(self, name, inner.build(value))
        check(type(self), self.as_dict(), self.KEY)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, nested sections as dicts: what a checkpoint stores."""
        return dataclasses.asdict(self)

    @classmethod
    def build(cls, values: dict | None) -> Section:
        """From a config node or dict (unknown keys named in the error, as the config check names them)."""
        values = dict(values or {})
        check(cls, values, cls.KEY)
        return cls(**values)


# ---- data: aer.data.datamodule.AudioSetDataModule takes exactly these
@dataclass
class DemoSettings(Section):
    """Synthetic shards in the release format, generated in data.root on first use (aer.data.demo)."""

    KEY: ClassVar[str] = "data.demo"
    clips: Positive = 20000
    eval_clips: Positive | None = None   # default: clips // 2
    seed: int = 0


OnBadRecord = Literal["error", "skip"]   # a record that does not parse: stop there | count it and leave it out
TRAIN_SPLITS = {"bal_train": ["bal_train"], "unbal_train": ["unbal_train"], "all": ["bal_train", "unbal_train"]}


# data.steps_per_fetch=null: a block of batches holds about this many clips, in at most this many batches
FETCH_CLIPS, MAX_FETCH_STEPS = 2048, 32


@dataclass
class DataSettings(Section):
    KEY: ClassVar[str] = "data"
    root: str                                       # holds bal_train/, eval/ (and unbal_train/) shard folders
    mode: Literal["dev", "final"] = "dev"           # dev: seeded 80/20 split of the training split; final: all
    #                                                 of it, tested on eval
    train_split: Any = "bal_train"                  # bal_train | unbal_train | all | a list of those
    eval_split: str = "eval"
    cache_dir: str | None = None                    # default: beside a demo set, else ~/.cache/aer/<root>-<hash>
    batch_size: Positive = 500
    eval_batch_size: Positive = 2048
    val_fraction: Annotated[float, Range(0, 1, open_lo=True)] = 0.2
    split_seed: int = 0
    seed: int = 0                                   # the training batches' order
    normalize: Literal["unit", "standardize"] = "unit"  # unit: x/255 as in the report | standardize:
    #                                                     per dimension, with the training split's statistics
    balanced: bool = False                          # class-balanced batches
    drop_last: bool = False                         # drop each epoch's last, smaller training batch
    num_workers: Annotated[int, Range(0)] = 0
    pin_memory: bool = False
    # the split's uint8 arrays copied once to the training device and batches gathered there (no loader
    # workers, no per-batch host-to-device copy); null: when that device is not the CPU
    device_resident: bool | None = None
    # optimizer steps per loader fetch: the training loader serves blocks of this many batches and the
    # Tagger takes one optimizer step per batch inside one Lightning step (manual optimization), so
    # Lightning's per-step cost (~1 ms on a laptop CPU: its loop, hooks, logging, progress bar) is paid once
    # a block. The same steps on the same batches as 1, which keeps Lightning's automatic optimization
    # (needed for trainer.gradient_clip_val and trainer.accumulate_grad_batches); trainer.limit_train_batches,
    # val_check_interval and the progress bar count blocks. null: blocks of about FETCH_CLIPS clips (at most
    # MAX_FETCH_STEPS batches): 32 at batch 50, 4 at 500, 1 at 2000.
    steps_per_fetch: Positive | None = None
    convert_workers: Positive = 1                   # processes converting shards into the HDF5 cache
    on_bad_record: OnBadRecord = "error"
    num_classes: Positive = NUM_CLASSES
    demo: DemoSettings | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.val_fraction >= 1:
            raise ValueError(f"data.val_fraction={self.val_fraction!r}: expected a number between 0 and 1")
        self.train_splits  # noqa: B018 — checks train_split

    @property
    def fetch_steps(self) -> int:
        """steps_per_fetch, resolved."""
        if self.steps_per_fetch is not None:
            return self.steps_per_fetch
        return max(1, min(MAX_FETCH_STEPS, round(FETCH_CLIPS / self.batch_size)))

    @property
    def train_splits(self) -> list[str]:
        if isinstance(self.train_split, str):
            if self.train_split not in TRAIN_SPLITS:
                raise ValueError(f"data.train_split={self.train_split!r}: expected one of {', '.join(TRAIN_SPLITS)}")
            return TRAIN_SPLITS[self.train_split]
        splits = list(self.train_split)
        for s in splits:
            if s not in ("bal_train", "unbal_train"):
                raise ValueError(f"data.train_split={splits!r}: expected bal_train, unbal_train or both")
        return splits


# ---- model=NAME: the networks of aer.models take these (and num_classes, in_dim, max_frames)
@dataclass
class ModelSection(Section):
    KEY: ClassVar[str] = "model"


@dataclass
class FCSettings(ModelSection):
    """The report's base model: the flattened 10x128 clip -> hidden layers -> 527."""

    hidden: Any = field(default_factory=lambda: [500])   # sizes of the hidden layers (an int: one layer)
    dropout: Fraction = 0.0
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = "relu"
    batch_norm: bool = False


@dataclass
class SkipLSTMSettings(ModelSection):
    """The report's stacked bidirectional LSTM with skip connections, then a fully connected classifier."""

    layers: Positive = 2
    hidden: Positive = 128          # per direction
    skip: bool = True               # each layer's input concatenated with its output
    bidirectional: bool = True
    packed: bool = False            # true: mask by the true clip lengths (packed sequences)
    pool: Literal["flatten", "mean", "max"] = "flatten"   # flatten: as the report
    dropout: Fraction = 0.0
    fc_hidden: Any = field(default_factory=list)


@dataclass
class AttentionSettings(ModelSection):
    """Decision-level attention (Kong et al. 2018): frame-wise MLP, attention-weighted class probabilities."""

    hidden: Positive = 512
    layers: Annotated[int, Range(0)] = 3
    dropout: Fraction = 0.4
    batch_norm: bool = True
    attention: Literal["softmax", "sigmoid"] = "softmax"   # sigmoid: normalised over frames


@dataclass
class MultiAttentionSettings(ModelSection):
    """Multi-level attention (Yu et al. 2018)."""

    hidden: Positive = 512
    levels: Positive = 2
    dropout: Fraction = 0.4
    batch_norm: bool = True


@dataclass
class FeatAttentionSettings(ModelSection):
    """Feature-level attention (Kong et al. 2019): frame-wise MLP, attention pooling per feature dimension."""

    hidden: Positive = 1024
    layers: Positive = 3
    dropout: Fraction = 0.5
    batch_norm: bool = True
    attention: Literal["sigmoid", "softmax"] = "sigmoid"   # sigmoid: normalised over frames, as the paper


@dataclass
class TransformerSettings(ModelSection):
    """A pre-LN transformer encoder over the clip's frames, pooled to one vector, then a Linear classifier."""

    d_model: Positive = 256
    heads: Positive = 4
    layers: Positive = 2
    ff_dim: Positive = 512          # the feed-forward block's hidden size
    dropout: Fraction = 0.2         # 0.2 rather than the usual 0.1: ~18k training clips of at most 10 frames
    positions: Literal["learned", "sinusoidal", "none"] = "learned"
    pool: Literal["attention", "cls", "mean"] = "attention"   # cls: a learned class token read out

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_model % self.heads:
            raise ValueError(f"model.heads={self.heads!r}: expected a divisor of model.d_model={self.d_model}")


MODELS: dict[str, type[Section]] = {
    "attention": AttentionSettings,
    "fc": FCSettings,
    "featattention": FeatAttentionSettings,
    "multiattention": MultiAttentionSettings,
    "skiplstm": SkipLSTMSettings,
    "transformer": TransformerSettings,
}


# ---- init=NAME: the schemes of aer.init take these
@dataclass
class InitSection(Section):
    KEY: ClassVar[str] = "init"


@dataclass
class DefaultInit(InitSection):
    """PyTorch's own initialisation, untouched."""


@dataclass
class GainInit(InitSection):
    """Xavier (Glorot) uniform and orthogonal: a gain on the scheme's own scale."""

    gain: NonNegative = 1.0


@dataclass
class KaimingInit(InitSection):
    nonlinearity: Literal["relu", "leaky_relu", "linear", "tanh", "sigmoid"] = "relu"
    a: NonNegative = 0.0


@dataclass
class NormalInit(InitSection):
    std: NonNegative = 0.01


@dataclass
class UniformInit(InitSection):
    a: NonNegative = 0.05


INITS: dict[str, type[Section]] = {
    "default": DefaultInit, "kaiming": KaimingInit, "normal": NormalInit,
    "orthogonal": GainInit, "uniform": UniformInit, "xavier": GainInit,
}


# ---- optim, augment, swa: the Tagger and train.py take these
@dataclass
class OptimSettings(Section):
    """Adam, and the learning-rate schedule."""

    KEY: ClassVar[str] = "optim"
    lr: Annotated[float, Range(0, open_lo=True)] = 1e-3
    # adam: weight_decay is an L2 term in the gradient (torch.optim.Adam); adamw: decoupled weight decay
    # (Loshchilov & Hutter 2019, torch.optim.AdamW), the weights shrunk by lr * weight_decay each step
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: NonNegative = 0.0
    betas: Any = field(default_factory=lambda: [0.9, 0.999])
    scheduler: Literal["none", "cosine", "step"] = "none"
    warmup_epochs: NonNegative = 0.0
    min_lr_ratio: Fraction = 0.0      # cosine: the last step's lr, as a fraction of lr
    step_size: Positive = 10          # step: epochs between decays
    gamma: Fraction = 0.5             # step: the decay factor


@dataclass
class AugmentSettings(Section):
    """What training does to its batches (validation and test clips are never touched)."""

    KEY: ClassVar[str] = "augment"
    mixup_alpha: NonNegative = 0.0
    label_smoothing: Fraction = 0.0
    # each real frame of a training clip left out with this probability (at least one kept): the clip
    # becomes the shorter one of its kept frames, in their order
    frame_dropout: Fraction = 0.0
    # Gaussian noise of this sd added to the real frames' features, on the x/255 scale the networks take
    # (before standardisation; a dimension's sd over the training frames is about 0.1 on that scale)
    feature_noise: NonNegative = 0.0
    # training targets only: every positive class's ancestors in data.root/ontology.json (transitively, also
    # through nodes that are not classes) are made positive too; validation and test labels are never changed
    ontology_targets: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frame_dropout >= 1:
            raise ValueError(f"augment.frame_dropout={self.frame_dropout!r}: expected a probability below 1")


@dataclass
class SwaSettings(Section):
    """Stochastic weight averaging over the last epochs (Izmailov et al. 2018): the averaged model is
    validated, saved as checkpoints/swa.ckpt and used as the run's result."""

    KEY: ClassVar[str] = "swa"
    enabled: bool = False
    lr: Annotated[float, Range(0, open_lo=True)] | None = None   # constant lr while averaging (default optim.lr)
    epoch_start: Any = 0.75           # a fraction of trainer.max_epochs, or an epoch index
    annealing_epochs: Positive = 1


@dataclass
class EmaSettings(Section):
    """An exponential moving average of the weights, updated after every optimizer step, as an alternative
    to SWA (Lightning's EMAWeightAveraging): validation, the checkpoints and the run's result hold the
    averaged weights."""

    KEY: ClassVar[str] = "ema"
    enabled: bool = False
    decay: Annotated[float, Range(0, 1, open_lo=True)] = 0.999   # the average's weight each step (horizon
    #                                                             about 1 / (1 - decay) steps)
    start_step: Annotated[int, Range(0)] = 0                     # optimizer steps before averaging begins


@dataclass
class DistillSettings(Section):
    """Knowledge distillation: the student's loss is (1 - weight)·BCE(logits, labels) + weight·BCE(logits, p),
    p the teachers' mean probability of each class on each training clip (aer.distill: computed once, cached).
    Teachers are given as ensemble.py's members are; none (the default): no distillation."""

    KEY: ClassVar[str] = "distill"
    ckpts: Any = field(default_factory=list)   # teacher checkpoints
    sweep: str | None = None                   # a train.py -m sweep dir: every finished job's checkpoint
    weight: Fraction = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.ckpts, str):
            self.ckpts = [self.ckpts]
        if not isinstance(self.ckpts, (list, tuple)) or not all(isinstance(c, str) for c in self.ckpts):
            raise ValueError(f"distill.ckpts={self.ckpts!r}: expected a list of checkpoint paths, "
                             f"e.g. distill.ckpts=[a.ckpt,b.ckpt]")
        self.ckpts = list(self.ckpts)

    @property
    def enabled(self) -> bool:
        return bool(self.ckpts or self.sweep)


# ---- evaluate.py and ensemble.py
@dataclass
class BootstrapSettings(Section):
    """Percentile intervals of mAP, mAUC and d' over clips resampled with replacement."""

    KEY: ClassVar[str] = "bootstrap"
    replicates: Annotated[int, Range(0)] = 1000   # 0: no intervals
    level: Annotated[float, Range(0, 1, open_lo=True)] = 0.95
    seed: int = 0


@dataclass
class TrainSettings(Section):
    """The top-level keys of `python train.py`."""

    KEY: ClassVar[str] = ""
    task_name: str = "train"
    seed: int = 1234
    tags: Any = field(default_factory=list)   # labels of the run, logged with its hyper-parameters
    # torch CPU threads per process; null: torch's default (all cores). When jobs run side by side
    # (hydra/launcher=joblib, several processes on one GPU box) set 1-2, or the threads fight over cores.
    threads: Positive | None = None
    ckpt_path: str | None = None      # null: start fresh; last: this run dir's checkpoints/last.ckpt; or a path
    # torch.compile the network for training and validation (nn.Module.compile: the checkpoint's keys are
    # unchanged). Pays a compilation (tens of seconds) at the start; worth it on a GPU, rarely on a CPU.
    compile: bool = False
    optim: OptimSettings = field(default_factory=OptimSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    swa: SwaSettings = field(default_factory=SwaSettings)
    ema: EmaSettings = field(default_factory=EmaSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.swa.enabled and self.ema.enabled:
            raise ValueError("swa.enabled=true and ema.enabled=true: the run's result is one average of the "
                             "weights; choose one")

"""Every setting a user can type, declared once: its default, type and allowed values.

Each dataclass here is one config section (data, model=NAME, init=NAME, optim, augment, swa, ...) or
one command's whole config (TrainConfig, EvaluateConfig, ...). Hydra's schema is built from them
(aer.config registers it in the ConfigStore; the yaml files hold only what differs from these
defaults); aer.config.build builds a command's config once, before any work, and its values are
checked then, by aer.schema.check. The code receives these objects. No torch here: a bad value is
reported before anything heavy is imported or read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from omegaconf import MISSING

from aer.data.records import NUM_CLASSES
from aer.schema import INTERNAL, Example, Fraction, NonNegative, Positive, Range, Section, check, check_keys


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
    val_fraction: Annotated[float, Range(0, 1, open_lo=True, open_hi=True)] = 0.2
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


def registered(registry: dict[str, type[Section]], name: str, key: str) -> type[Section]:
    """The settings class of option `name` of `registry` (model=NAME, init=NAME)."""
    if name not in registry:
        raise ValueError(f"{key}={name!r}: expected one of {', '.join(sorted(registry))}")
    return registry[name]


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
    frame_dropout: Annotated[float, Range(0, 1, open_hi=True)] = 0.0
    # Gaussian noise of this sd added to the real frames' features, on the x/255 scale the networks take
    # (before standardisation; a dimension's sd over the training frames is about 0.1 on that scale)
    feature_noise: NonNegative = 0.0
    # training targets only: every positive class's ancestors in data.root/ontology.json (transitively, also
    # through nodes that are not classes) are made positive too; validation and test labels are never changed
    ontology_targets: bool = False


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


# ---- the commands: each takes one config, built once (aer.config.build) before any work
OUTPUT_DIR = Example("paths.output_dir=DIR (Hydra sets it to the run dir)")


@dataclass
class Choice:
    """A registered option and its settings: model=NAME with model.*, init=NAME with init.*."""

    name: str
    settings: Section


@dataclass
class TrainerSettings(Section):
    """The pl.Trainer arguments (conf/trainer/) whose values aer reads or refuses itself; the trainer's other
    arguments go to pl.Trainer as they are. Null: Lightning's own default."""

    KEY: ClassVar[str] = "trainer"
    max_epochs: Positive | None = None
    # a count of training fetches (each data.steps_per_fetch batches) or a fraction of them
    limit_train_batches: Annotated[float, Range(0, open_lo=True)] | None = None
    check_val_every_n_epoch: Positive | None = None
    log_every_n_steps: Positive | None = None
    # clipping and accumulation as Lightning's automatic optimization does them, in aer's one training loop
    gradient_clip_val: NonNegative | None = None
    gradient_clip_algorithm: Literal["norm", "value"] | None = None
    accumulate_grad_batches: Positive | None = None


@dataclass
class TrainConfig(TrainSettings):
    """All of `python train.py`: the top-level keys (TrainSettings), the config groups' sections, and the
    Lightning nodes aer instantiates as they are (`lightning`: trainer arguments, callbacks, loggers)."""

    data: DataSettings | None = None
    model: Choice | None = None
    init: Choice | None = None
    trainer: TrainerSettings | None = None
    lightning: dict = field(default_factory=dict, metadata={INTERNAL: True})
    output_dir: Annotated[str, OUTPUT_DIR] | None = field(default=None, metadata={INTERNAL: True})


CKPT = Example("ckpt=outputs/train/runs/<run>/checkpoints/best.ckpt")
Probability = Annotated[float, Range(0, 1)]
Split = Literal["eval", "val"]   # eval: the eval split | val: the dev 20% held out of the training split


@dataclass
class Scoring(Section):
    """What the commands that score a checkpoint's data share: the data to score on (the checkpoint's stored
    data settings overlaid with every data.* given), where they run, where they write."""

    KEY: ClassVar[str] = ""
    task_name: str = ""
    seed: int = 0                     # read only by the ${seed} in data=... configs: nothing is drawn at random
    threads: Positive | None = None   # torch CPU threads; null: torch's default
    data: dict = field(default_factory=dict)   # data.* given: checked by DataSettings' rules, null ones dropped
    output_dir: Annotated[str, OUTPUT_DIR] | None = field(default=None, metadata={INTERNAL: True})

    def __post_init__(self) -> None:
        given = {k: v for k, v in (self.data or {}).items() if v is not None and not str(k).startswith("_")}
        check_keys(DataSettings, given, "data")
        check(DataSettings, given, "data")
        self.data = given
        super().__post_init__()


@dataclass
class EvaluateConfig(Scoring):
    """`python evaluate.py`: one checkpoint scored on a split."""

    ckpt: Annotated[str, CKPT] = MISSING
    split: Split = "eval"
    # F1/precision/recall of the decisions at this threshold for every class; null: the checkpoint's own
    # (python -m aer.thresholds), else 0.5
    threshold: Probability | None = None
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)


@dataclass
class EnsembleConfig(Scoring):
    """`python ensemble.py`: the (weighted) mean of several checkpoints' probabilities, scored like one model."""

    ckpts: Any = None              # checkpoint paths; any mix of network types
    sweep: str | None = None       # a train.py -m sweep dir: every finished job's result checkpoint, in job order
    weights: Any = None            # one per member (ckpts first, then the sweep's), normalised; null: uniform
    select: Literal["none", "greedy"] = "none"   # greedy: forward selection with replacement on the dev split
    rounds: Positive = 20          # greedy selection steps; the best-scoring step's picks are kept
    split: Split = "eval"
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.ckpts, str):
            self.ckpts = [self.ckpts]
        if self.ckpts is not None and not (isinstance(self.ckpts, (list, tuple))
                                           and all(isinstance(c, str) for c in self.ckpts)):
            raise ValueError(f"ckpts={self.ckpts!r}: expected a list of checkpoint paths, e.g. ckpts=[a.ckpt,b.ckpt]")
        if not self.ckpts and not self.sweep:
            raise ValueError("ckpts and sweep are both empty: give ckpts=[a.ckpt,b.ckpt,...] and/or sweep=DIR")
        if self.weights is not None and not isinstance(self.weights, (list, tuple)):
            raise ValueError(f"weights={self.weights!r}: expected a list with one number per member, e.g. "
                             f"weights=[2,1]")
        if self.select == "greedy" and self.weights is not None:
            raise ValueError("weights=... and select=greedy: greedy selection chooses the weights; give one of them")


@dataclass
class ThresholdsConfig(Scoring):
    """`python -m aer.thresholds`: per-class decision thresholds chosen on the dev split."""

    ckpt: Annotated[str, CKPT] = MISSING
    # f1: each class's best-F1 threshold on the dev split | precision: the lowest threshold reaching `target`
    # precision there (the most recall at that precision; a class that never reaches it is never tagged)
    rule: Literal["f1", "precision"] = "f1"
    target: Annotated[float, Range(0, 1, open_lo=True)] = 0.5   # rule=precision only
    fallback: Probability = 0.5    # classes without positives in the dev split
    # null: the thresholds go beside ckpt (<name>.thresholds.json) | a path: a copy of ckpt there, with them beside it
    out: str | None = None
    # a data.mode=final checkpoint trained on the dev split too: take the thresholds chosen for this dev-mode
    # checkpoint of the same model and data instead
    from_ckpt: str | None = None


@dataclass
class PredictConfig(Section):
    """`python -m aer.predict`: each clip's likeliest classes and the classes it is tagged with."""

    KEY: ClassVar[str] = ""
    task_name: str = "predict"
    ckpt: Annotated[str, CKPT] = MISSING
    # a folder of .tfrecord shards (one split), one .tfrecord file, or an .h5 from `python -m aer.data convert`
    input: Annotated[str, Example("input=<data root>/eval")] = MISSING
    top_k: Positive = 5
    labels: str | None = None        # class_labels_indices.csv; null: the checkpoint's, else beside the input
    threshold: Probability | None = None   # null: the checkpoint's per-class thresholds, else 0.5
    out: Annotated[str, Example("out=DIR")] = MISSING   # folder for predictions.csv, labels.csv, predictions.json
    batch_size: Positive = 4096      # clips per forward pass
    on_bad_record: OnBadRecord = "error"
    threads: Positive | None = None


@dataclass
class ExportConfig(Section):
    """`python -m aer.export`: a checkpoint as an ONNX or TorchScript file that runs without aer."""

    KEY: ClassVar[str] = ""
    task_name: str = "export"
    ckpt: Annotated[str, CKPT] = MISSING
    format: Literal["onnx", "torchscript"] = "onnx"
    out: str | None = None           # null: beside the checkpoint, <stem>.onnx or <stem>.torchscript.pt
    labels: str | None = None        # class_labels_indices.csv for the metadata; null: the checkpoint's
    threads: Positive | None = None


# ---- the argparse commands: python -m aer.data, aer.report, aer.compare (their flags are these fields)
@dataclass
class ConvertConfig(Section):
    """`python -m aer.data convert SRC OUT`: one split's shards into one HDF5 file."""

    KEY: ClassVar[str] = ""
    src: str = MISSING
    out: str = MISSING
    workers: Positive = 1
    on_bad_record: OnBadRecord = "error"
    force: bool = False


@dataclass
class DemoConfig(Section):
    """`python -m aer.data demo OUT`: synthetic shards in the release format."""

    KEY: ClassVar[str] = ""
    out: str = MISSING
    clips: Positive = DemoSettings.clips
    eval_clips: Positive | None = DemoSettings.eval_clips
    seed: int = DemoSettings.seed


@dataclass
class DownloadConfig(Section):
    """`python -m aer.data download ROOT`: the release, resumable."""

    KEY: ClassVar[str] = ""
    root: str = MISSING
    base_url: str = MISSING
    extract: bool = True
    retries: Annotated[int, Range(0)] = 3
    files: Any = None               # names of release files (aer.data.release.FILES); null: all of them
    force: bool = False
    keep_archive: bool = True
    progress: bool = True


@dataclass
class ReportConfig(Section):
    """`python -m aer.report DIR [DIR ...]`: curves and tables of a run or a sweep."""

    KEY: ClassVar[str] = ""
    dir: Any = MISSING              # run or sweep dirs
    out: str | None = None
    by: str | None = None           # comma-separated overrides that label the runs


@dataclass
class CompareConfig(Section):
    """`python -m aer.compare`: a sweep's jobs over seeds, or two checkpoints / predictions paired."""

    KEY: ClassVar[str] = ""
    dir: Any = None
    out: Annotated[str, Example("--out DIR")] = MISSING
    by: str | None = None
    epochs: Positive | None = None
    reach: float = 0.20
    ckpts: Any = None
    preds: Any = None
    split: Split = "val"
    data_root: str | None = None
    cache_dir: str | None = None
    replicates: Annotated[int, Range(0)] = 1000
    level: Annotated[float, Range(0, 1, open_lo=True, open_hi=True)] = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if sum(map(bool, (self.dir, self.ckpts, self.preds))) != 1:
            raise ValueError("give sweep dirs, --ckpts A B or --preds A B (one of them)")

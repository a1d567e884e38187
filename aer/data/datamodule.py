"""`AudioSetDataModule`: converts the needed splits once, holds them as uint8 in memory, serves batches."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from aer.data.convert import DATASETS, CacheError, convert, load_splits
from aer.data.demo import ensure_demo, is_demo
from aer.data.labels import read_class_labels
from aer.data.records import FEATURE_SCALE
from aer.data.sampler import BalancedBatchSampler, EpochBatchSampler, EvalBatchSampler, StepBlocks
from aer.files import writable_dir
from aer.paths import aer_home
from aer.settings import DataSettings

log = logging.getLogger(__name__)

SPLITS = ("bal_train", "unbal_train", "eval")


class ClipBatches(Dataset):
    """Indexed by a whole batch of positions: one gather per batch, no per-clip Python."""

    def __init__(self, features: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, rows: np.ndarray):
        self.features, self.lengths, self.labels = features, lengths, labels
        self.rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device, tensors: dict) -> ClipBatches:
        """The same clips served from `device` (`tensors`: the device copies made so far, by the memory they
        copy, so that splits sharing arrays, as the dev split's train and val do, share one copy)."""
        def moved(t: torch.Tensor) -> torch.Tensor:
            key = (t.data_ptr(), t.dtype, tuple(t.shape))
            if key not in tensors:
                tensors[key] = t.to(device)
            return tensors[key]

        out = ClipBatches(moved(self.features), moved(self.lengths), moved(self.labels), np.zeros(0))
        out.rows = self.rows.to(device)
        return out

    def __getitem__(self, batch) -> dict[str, torch.Tensor]:
        """One batch of positions, or a block (a list of batches: StepBlocks) gathered at once and served
        as one batch whose `steps` holds the sizes of its batches, in order."""
        block = isinstance(batch, list)
        positions = np.concatenate(batch) if block else batch
        idx = self.rows[torch.as_tensor(positions, dtype=torch.int64).to(self.rows.device)]
        out = {
            "features": self.features.index_select(0, idx),
            "lengths": self.lengths.index_select(0, idx),
            "y": self.labels.index_select(0, idx).float(),
            "index": idx,  # the clips' rows in the split's arrays
        }
        if block:  # plain ints, so moving the batch to a device copies no sizes and reading them needs no sync
            out["steps"] = [len(b) for b in batch]
        return out


def dev_split(video_ids, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows) of the dev split of these clips, each sorted: a clip is held out for validation
    when a keyed hash of its id (the key: split_seed) falls below val_fraction, so which side a clip is on
    depends on its id alone: adding, removing or skipping other clips never moves it."""
    key = int(split_seed).to_bytes(8, "little", signed=True)
    cut = int(val_fraction * 2**64)
    held = np.fromiter((int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8, key=key).digest(), "little")
                        < cut for v in video_ids), dtype=bool, count=len(video_ids))
    if held.all() or not held.any():
        raise ValueError(f"data.val_fraction={val_fraction} leaves an empty split of {len(held)} clips")
    return np.flatnonzero(~held), np.flatnonzero(held)


def split_record(video_ids) -> dict:
    """What a split holds, to tell it from another: its clip count and a digest of their ids."""
    digest = hashlib.sha256("\n".join(sorted(map(str, video_ids))).encode()).hexdigest()[:16]
    return {"clips": len(video_ids), "ids_sha256": digest}


def held_out(data: dict, record: dict | None = None) -> dict:
    """Which clips a run with data settings `data` (data.*, as a checkpoint stores them) trains on and which
    it holds out (the dev split's validation clips, or the eval split in final mode), as a record two runs can
    be compared by; `record`: what the run's data served, where it recorded it."""
    s = {f: data.get(f, getattr(DataSettings, f)) for f in ("mode", "train_split", "val_fraction", "split_seed",
                                                            "eval_split", "num_classes")}
    splits = DataSettings(root="", train_split=s["train_split"]).train_splits
    out = {"mode": s["mode"], "train_split": splits, "num_classes": s["num_classes"]}
    out.update({"val_fraction": s["val_fraction"], "split_seed": s["split_seed"]} if s["mode"] == "dev"
               else {"eval_split": s["eval_split"]})
    return {**out, **({"validation": record} if record else {})}


def resolve_split_dir(root: Path, split: str) -> Path:
    for cand in (root / split, root / "audioset_v1_embeddings" / split):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(
        f"data.root={root} has no '{split}' folder: expected {root / split}/*.tfrecord "
        f"(the release's audioset_v1_embeddings/{split}). Fetch the release with "
        f"`python -m aer.data download {root}`, or train on synthetic shards with data=demo.")


def default_cache_dir(root: Path) -> Path:
    """Beside the data in a demo set (aer made that folder); else a per-root folder in $AER_HOME (~/.cache/aer).

    A data folder aer did not make (the release, a copy of it) is never written into.
    """
    if is_demo(root):
        return root / "aer_cache"
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return aer_home() / f"{root.name}-{key}"


class AudioSetDataModule(pl.LightningDataModule):
    """The splits of one release folder, converted once into HDF5, held in memory, served in batches.

    Takes the data.* settings of aer.settings.DataSettings: that object (checked when it was built), or its
    values as keywords (checked here). Batches are dicts of uint8 `features` (B, T, 128),
    `lengths` (B,) and float `y` (B, C); the Tagger scales and normalises the features. A training fetch
    is a block of data.steps_per_fetch batches (when above 1) served as one, `steps` holding their sizes.
    """

    def __init__(self, settings: DataSettings | str | os.PathLike | None = None, /, **values):
        super().__init__()
        if settings is not None and not isinstance(settings, DataSettings):
            values["root"], settings = settings, None  # the data root, given first
        if "root" in values:
            values["root"] = str(values["root"])
        s = settings if settings is not None else DataSettings.build(values)
        # Stored in checkpoints: evaluate.py finds the data and the dev split without the training config.
        self.save_hyperparameters(s.as_dict())
        self.settings = s
        self.root = Path(s.root).expanduser()
        self.mode, self.train_splits, self.eval_split = s.mode, s.train_splits, s.eval_split
        self.cache_dir = Path(s.cache_dir).expanduser() if s.cache_dir else None
        self.batch_size, self.eval_batch_size = s.batch_size, s.eval_batch_size
        self.val_fraction, self.split_seed, self.seed = s.val_fraction, s.split_seed, s.seed
        self.normalize, self.balanced, self.drop_last = s.normalize, s.balanced, s.drop_last
        self.num_workers, self.pin_memory, self.steps_per_fetch = s.num_workers, s.pin_memory, s.fetch_steps
        self.convert_workers, self.on_bad_record, self.num_classes = s.convert_workers, s.on_bad_record, s.num_classes
        self.demo = s.demo.as_dict() if s.demo else None
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._sets: dict[str, ClipBatches] = {}
        self._meta: dict[str, dict[str, np.ndarray]] = {}
        self._device_tensors: dict[tuple, torch.Tensor] = {}  # device copies of the arrays (device_resident)
        self._served: tuple = (None, None)  # (the val set, its split_record)

    # ---- where things are
    @property
    def needed_splits(self) -> list[str]:
        return self.train_splits + ([self.eval_split] if self.mode == "final" else [])

    def cache_root(self) -> Path:
        """The folder of this data's caches (data.cache_dir, or default_cache_dir)."""
        return self.cache_dir or default_cache_dir(self.root)

    def cache_path(self, split: str) -> Path:
        return self.cache_root() / f"{split}.h5"

    def check_layout(self) -> None:
        """Fails before any work when the data folders are missing, or when the caches would go into a data
        folder aer did not make."""
        root = self.root.absolute()
        if self.cache_dir is not None and not is_demo(self.root):
            cache = self.cache_dir.absolute()
            if cache == root or root in cache.parents:
                raise ValueError(f"data.cache_dir={cache} is inside data.root={root}: aer never writes into a data "
                                 f"folder it did not make; give the caches another folder (or leave data.cache_dir "
                                 f"unset: {default_cache_dir(self.root)})")
        if self.demo is not None:
            return
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data.root={self.root} does not exist: point it at the folder holding the split folders "
                f"({', '.join(SPLITS)}), fetch the release with `python -m aer.data download {self.root}`, "
                f"or use data=demo")
        for split in self.needed_splits:
            resolve_split_dir(self.root, split)

    # ---- Lightning hooks
    def prepare_data(self) -> None:
        for split in self.needed_splits:
            self.prepare_split(split)

    def ensure_demo(self) -> None:
        """With data.demo, generates the demo set in data.root unless it is there."""
        if self.demo is not None and ensure_demo(self.root, **self.demo):
            log.info("generated demo shards in %s", self.root)

    def prepare_split(self, split: str, force: bool = False) -> Path:
        """Makes sure `split` is converted (generating demo shards first when asked); its cache path."""
        self.ensure_demo()
        if self.demo is None and not self.root.is_dir():
            self.check_layout()
        try:
            src = resolve_split_dir(self.root, split)
        except FileNotFoundError:
            if self.cache_path(split).exists():
                raise FileNotFoundError(f"{self.cache_path(split)}: its shards are gone (no '{split}' folder in "
                                        f"data.root={self.root}), so it cannot be checked or rebuilt") from None
            raise
        writable_dir(self.cache_root(), "set data.cache_dir=DIR (or AER_HOME) to a folder you can write")
        summary = convert(src, self.cache_path(split), workers=self.convert_workers,
                          on_bad_record=self.on_bad_record, num_classes=self.num_classes, force=force, own_folder=True)
        log.info("%s", summary)
        return summary.out

    def _load_splits(self, splits: list[str], arrays: tuple[str, ...] = DATASETS) -> dict[str, np.ndarray]:
        """The splits' arrays, read into one allocation per array (train_split=all would otherwise
        hold every clip twice). A damaged cache is named, rebuilt from its shards and read again."""
        paths = [self.prepare_split(s) for s in splits]
        try:
            return load_splits(paths, arrays)
        except CacheError as e:
            log.warning("%s: rebuilding from the shards", e)
            return load_splits([self.prepare_split(s, force=True) for s in splits], arrays)

    def _load(self, split: str) -> dict[str, np.ndarray]:
        if split not in self._arrays:
            self._arrays[split] = self._load_splits([split])
        return self._arrays[split]

    def _load_train(self) -> dict[str, np.ndarray]:
        if len(self.train_splits) == 1:
            return self._load(self.train_splits[0])
        key = "+".join(self.train_splits)
        if key not in self._arrays:
            self._arrays[key] = self._load_splits(self.train_splits)
        return self._arrays[key]

    def _dataset(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> ClipBatches:
        return ClipBatches(torch.from_numpy(arrays["features"]), torch.from_numpy(arrays["lengths"]),
                           torch.from_numpy(arrays["labels"]), rows)

    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        if self.mode == "final" and stage in ("test", "predict"):
            test = self._load(self.eval_split)
            self._sets = {"test": self._dataset(test, np.arange(len(test["lengths"])))}
            self._meta = {"test": test}
            return
        train = self._load_train()
        n = len(train["lengths"])
        if self.mode == "dev":
            train_rows, val_rows = dev_split(train["video_id"], self.val_fraction, self.split_seed)
            self._sets = {"train": self._dataset(train, train_rows), "val": self._dataset(train, val_rows)}
            self._sets["test"] = self._sets["val"]
            self._meta = {"train": train, "val": train, "test": train}
        else:
            test = self._load(self.eval_split)
            self._sets = {"train": self._dataset(train, np.arange(n)),
                          "test": self._dataset(test, np.arange(len(test["lengths"])))}
            self._meta = {"train": train, "test": test}

    def _distributed(self, sampler):
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            sampler.set_distributed(trainer.global_rank, trainer.world_size)
        return sampler

    def serving_device(self) -> torch.device | None:
        """The device batches are gathered on when the arrays live there (data.device_resident), else None."""
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        resident = self.settings.device_resident
        return device if (device.type != "cpu" if resident is None else resident) else None

    def _loader(self, ds: ClipBatches, sampler) -> DataLoader:
        device = self.serving_device()
        if device is not None:  # the uint8 arrays copied to the device once; each batch is a gather there
            return DataLoader(ds.to(device, self._device_tensors), sampler=self._distributed(sampler),
                              batch_size=None, num_workers=0, pin_memory=False)
        return DataLoader(ds, sampler=self._distributed(sampler), batch_size=None, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        ds = self._sets["train"]
        if self.balanced:  # the rows' labels are read in chunks: no copy of the (N, 527) label matrix
            sampler = BalancedBatchSampler(ds.labels.numpy(), self.batch_size, self.seed, self.drop_last,
                                           rows=ds.rows.numpy())
        else:
            sampler = EpochBatchSampler(len(ds), self.batch_size, True, self.seed, self.drop_last)
        if self.steps_per_fetch > 1:
            sampler = StepBlocks(sampler, self.steps_per_fetch)
        return self._loader(ds, sampler)

    def val_dataloader(self) -> DataLoader:
        if "val" not in self._sets:
            return []
        return self._loader(self._sets["val"], EvalBatchSampler(len(self._sets["val"]), self.eval_batch_size))

    def test_dataloader(self) -> DataLoader:
        ds = self._sets["test"]
        return self._loader(ds, EvalBatchSampler(len(ds), self.eval_batch_size))

    # ---- what the model and the reports need
    def split_info(self, name: str) -> dict[str, np.ndarray]:
        """video ids, labels and rows (their positions in the split's arrays: a batch's `index`) of the clips
        a split serves, in the order it serves them (its `clips` in all: the arrays' length)."""
        ds, meta = self._sets[name], self._meta[name]
        rows = ds.rows.numpy()
        return {"video_id": meta["video_id"][rows], "labels": meta["labels"][rows], "rows": rows,
                "clips": len(meta["lengths"])}

    def split_batches(self, name: str):
        """The batches of a split's clips in split_info's order (data.eval_batch_size each), on the host."""
        ds = self._sets[name]
        for positions in EvalBatchSampler(len(ds), self.eval_batch_size):
            yield ds[positions]

    def train_positives(self) -> np.ndarray:
        """Positives per class among the clips this module trains on: the dev 80% in dev mode, all of
        the training split in final mode (read from its cache, labels only, when not loaded)."""
        if "train" in self._sets:
            ds = self._sets["train"]
            labels, rows = ds.labels.numpy(), ds.rows.numpy()
            return sum((labels[rows[i:i + 65536]].sum(0, dtype=np.int64) for i in range(0, len(rows), 65536)),
                       np.zeros(labels.shape[1], np.int64))
        return self._load_splits(self.train_splits, arrays=("labels",))["labels"].sum(0, dtype=np.int64)

    def input_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of the training clips' real frames, on the [0,1] scale."""
        ds = self._sets["train"]
        total = np.zeros(ds.features.shape[-1])
        sq = np.zeros_like(total)
        count = 0
        feats, lengths = ds.features.numpy(), ds.lengths.numpy()
        rows = ds.rows.numpy()
        for i in range(0, len(rows), 8192):
            r = rows[i:i + 8192]
            x = feats[r].astype(np.float64) / FEATURE_SCALE  # on the scale the Tagger feeds its network
            mask = np.arange(x.shape[1])[None, :] < lengths[r][:, None]
            real = x[mask]
            total += real.sum(0)
            sq += (real ** 2).sum(0)
            count += len(real)
        mean = total / count
        std = np.sqrt(np.maximum(sq / count - mean ** 2, 1e-12))
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    def held_out(self) -> dict:
        """Which clips this module trains on and which it holds out (aer.data.datamodule.held_out): once set
        up in dev mode, with what its validation split holds (split_record)."""
        return held_out(self.hparams, self.served())

    def served(self) -> dict | None:
        """split_record of the dev split's validation clips, once set up (None in final mode: the eval split is
        whatever data.root holds)."""
        if self.mode != "dev" or "val" not in self._sets:
            return None
        ds = self._sets["val"]
        if self._served[0] is not ds:  # every checkpoint asks: computed once a split
            self._served = (ds, split_record(self.split_info("val")["video_id"]))
        return self._served[1]

    def class_names(self) -> list[tuple[str, str]]:
        return read_class_labels(self.root, self.num_classes)

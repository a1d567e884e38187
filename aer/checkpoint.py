"""Checkpoints in and out: `Checkpoint`, the one reader of a checkpoint's layout, and atomic writing.

Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain containers only, so
a checkpoint from elsewhere cannot run code on load. Any file that is missing, truncated, not a
torch file, or not an aer `Tagger` checkpoint raises `CheckpointError` with a one-line message
that names the file. Decision thresholds live in a file beside the checkpoint they were chosen for
(`<name>.thresholds.json`), never inside it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import io
import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from aer.data.datamodule import AudioSetDataModule, held_out
from aer.data.records import NUM_CLASSES
from aer.errors import first_sentence, one_line
from aer.files import atomic_write_bytes, write_json
from aer.module import CLASSES_KEY, SPLIT_KEY, Tagger
from aer.settings import DataSettings

log = logging.getLogger(__name__)

# split to score → the data module mode that serves it as its test split
SPLIT_MODES = {"eval": "final", "val": "dev"}



class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


def _unpickler_detail(e: BaseException) -> tuple[str | None, str]:
    """(the global the file would import, if that is why; the unpickler's own reason).

    torch's weights_only refusal is a paragraph of advice (including to turn the check off, which
    aer never suggests); only these parts say what is wrong. Its wording differs between torch
    versions ("Unsupported global: GLOBAL x", "unsupported GLOBAL x whose module y is blocked").
    """
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return found.group(1).rstrip("."), ""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    reasons = [p for p in paragraphs if not _ADVICE.search(p)]
    return None, first_sentence(reasons[0] if reasons else one_line(e, typed=True))


_ADVICE = re.compile(r"weights_only|Weights only load failed|documentation of torch.load|trusted source", re.I)
# A torch file is a zip archive (torch.save since 1.6) or, in the legacy format, a pickle.
_MAGIC = (b"PK\x03\x04", b"\x80")


def _unreadable(p: Path, e: BaseException) -> CheckpointError:
    with open(p, "rb") as f:
        head = f.read(8)
    if not head.startswith(_MAGIC):
        return CheckpointError(f"{p}: not a torch checkpoint (a torch file is a zip archive or a pickle; this one "
                               f"starts with {head!r})")
    if head.startswith(_MAGIC[0]) and not zipfile.is_zipfile(p):  # torch's own error says only "Invalid argument"
        detail = f"its zip archive is cut short or corrupt ({p.stat().st_size} bytes, no central directory)"
    elif isinstance(e, pickle.UnpicklingError):
        detail = _unpickler_detail(e)[1]
    else:
        detail = first_sentence(one_line(e, typed=True))
    return CheckpointError(f"{p}: not a readable torch checkpoint (truncated or damaged): {detail}")


def _read(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's dict, read with weights_only=True and checked to be an aer Tagger's."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, expected a .ckpt file "
                              f"(a training run keeps them in checkpoints/best.ckpt and last.ckpt)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a pickle protocol note on a foreign file: the error says it all
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        name, _ = _unpickler_detail(e)
        if name:
            raise CheckpointError(f"{p}: refused to load: it would import {name}, which a checkpoint never needs "
                                  f"(aer reads tensors and plain values only); do not use this file") from None
        raise _unreadable(p, e) from None
    except Exception as e:  # noqa: BLE001 — whatever torch fails with, the file is unreadable
        raise _unreadable(p, e) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: not an aer checkpoint (holds a {type(ckpt).__name__}, expected the dict "
                              f"a Lightning ModelCheckpoint writes)")
    hp = ckpt.get("hyper_parameters")
    if not isinstance(ckpt.get("state_dict"), Mapping) or not isinstance(hp, Mapping):
        raise CheckpointError(f"{p}: not an aer checkpoint (expected 'state_dict' and 'hyper_parameters', as "
                              f"train.py writes; found keys {sorted(map(str, ckpt))[:8]})")
    if "model" not in hp:
        old = " (written by an aer before 0.2, which named it 'net': retrain it)" if "net" in hp else ""
        raise CheckpointError(f"{p}: not an aer checkpoint: its hyper_parameters name no model{old}")
    return ckpt


THRESHOLDS_KEY = "aer_thresholds"  # thresholds an older aer wrote into the checkpoint itself
DEFAULT_THRESHOLD = 0.5
THRESHOLDS_SUFFIX = ".thresholds.json"


@dataclass
class Thresholds:
    """Per-class decision thresholds (float32 (C,)) and how they were chosen (rule, split, clips, ...)."""

    values: np.ndarray
    info: dict
    path: Path | None = None  # the file they were read from (None: inside the checkpoint)

    def describe(self) -> str:
        target = f", target={self.info['target']}" if self.info.get("rule") == "precision" else ""
        where = f" ({self.path})" if self.path else ""
        return f"per class, rule={self.info.get('rule')}{target}, chosen on split={self.info.get('split')}" \
               f" of {self.info.get('chosen_for', 'this checkpoint')}{where}"


class Checkpoint:
    """A training run's checkpoint: the one reader of its layout.

    What the Tagger was built with (`hparams`), the network it rebuilds (`tagger()`), the data it was
    trained on (`data`, `datamodule()`), which clips it held out (`held_out`), its classes' names and
    count, and the decision thresholds chosen for it (`thresholds`, from the file beside it).
    """

    def __init__(self, path: Path, content: dict) -> None:
        self.path, self.content = path, content

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Reads `path` with weights_only=True; CheckpointError (one line naming it) for anything else."""
        p = Path(path)
        ckpt = cls(p, _read(p, map_location))
        ckpt.thresholds()  # a damaged thresholds entry is reported on load, not at the first decision
        return ckpt

    def __str__(self) -> str:
        return str(self.path)

    @property
    def hparams(self) -> dict:
        return dict(self.content["hyper_parameters"])

    @property
    def model_name(self) -> str:
        return str(self.content["hyper_parameters"]["model"])

    @property
    def num_classes(self) -> int:
        return int(self.content["hyper_parameters"].get("num_classes", NUM_CLASSES))

    @property
    def epoch(self) -> int | None:
        return self.content.get("epoch")

    @property
    def data(self) -> dict:
        """The data settings it was trained with (data.*), as stored; {} for a checkpoint without them."""
        return dict(self.content.get("datamodule_hyper_parameters") or {})

    @property
    def mode(self) -> str | None:
        return self.data.get("mode")

    @property
    def held_out(self) -> dict | None:
        """Which clips it held out from training: aer.data.datamodule.held_out of its data settings, with
        what its data served (split_record) where the run recorded it; None without data settings."""
        return held_out(self.data, self.content.get(SPLIT_KEY)) if self.data else None

    def differs(self, dm: AudioSetDataModule) -> str | None:
        """How the clips `dm` trains on and holds out differ from those of this checkpoint's run, in words naming
        the setting (the first that differs); None when they are the same. In dev mode `dm` is set up first:
        its validation clips are compared by count and ids, so data that changed under the same settings
        (clips added, removed or skipped) differs too."""
        if dm.mode == "dev":
            dm.setup("fit")
        theirs, ours = self.held_out or {}, dm.held_out()
        for key, value in theirs.items():
            if key in ours and ours[key] != value:
                if key == "validation":
                    return (f"its run validated on {value['clips']} clips (ids {value['ids_sha256']}), the dev split "
                            f"of data.root={dm.root} holds {ours[key]['clips']} (ids {ours[key]['ids_sha256']}): "
                            f"the data changed since (clips added, removed or skipped)")
                return f"it was trained with data.{key}={value!r}, here data.{key}={ours[key]!r}"
        return None

    def check_dev_split(self, dm: AudioSetDataModule, what: str) -> None:
        """Refuses, in one line, a dev split (`dm`, dev mode) other than the one this checkpoint's run held out."""
        differs = self.differs(dm)
        if differs:
            raise ValueError(f"{what}: {self.path}: {differs}; its scores there would not be on the clips it held "
                             f"out: score it on the data and split it was trained with")

    def class_names(self) -> list[tuple[str, str]] | None:
        """(mid, display name) per class as its training data named them; None where it holds none."""
        names = self.content.get(CLASSES_KEY)
        return [tuple(n) for n in names] if names else None

    def tagger(self, map_location: str | torch.device = "cpu") -> Tagger:
        """The trained Tagger (strict: every weight must fit), in eval mode, on `map_location`."""
        hp = self.hparams
        known = set(inspect.signature(Tagger.__init__).parameters) - {"self"}
        extra = sorted(set(hp) - known)
        if extra:
            log.warning("%s: ignoring hparams this version of Tagger does not take: %s", self.path, ", ".join(extra))
        try:
            model = Tagger(**{k: v for k, v in hp.items() if k in known})
            model.load_state_dict(self.content["state_dict"], strict=True)
        except Exception as e:  # noqa: BLE001 — a network the hparams cannot rebuild, or weights that do not fit
            raise CheckpointError(f"{self.path}: cannot rebuild its model (model={hp.get('model')!r}): "
                                  f"{one_line(e, typed=True)}") from None
        return model.eval().to(map_location)

    def datamodule(self, split: str = "eval", overrides: Mapping | None = None) -> AudioSetDataModule:
        """The data module it was trained with, serving `split` as its test split.

        Its stored data settings are overlaid with the non-null `overrides` (e.g. another root).
        split=eval scores the eval split (mode final); split=val the dev 20% held out from the
        training split (mode dev), so it is the same clips the training run validated on.
        """
        mode = SPLIT_MODES[split]
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        if overrides.pop("mode", mode) != mode:
            # e.g. data=audioset brings its mode: dev along; which split is scored is split's to say
            log.info("scoring split=%s: data.mode is %s whatever the data config says", split, mode)
        allowed = {f.name for f in dataclasses.fields(DataSettings)}
        # Inference needs no loader workers (batches are gathers from memory); the training run's may be many.
        hp = {"num_workers": 0, "pin_memory": False}
        hp.update({k: v for k, v in self.data.items() if k in allowed and k not in ("num_workers", "pin_memory")})
        hp.update(overrides)
        hp["mode"] = mode
        if not hp.get("root"):
            raise CheckpointError(f"{self.path}: holds no data settings (datamodule_hyper_parameters); "
                                  f"pass data.root=... to say which data to score it on")
        return AudioSetDataModule(**hp)

    # ---- decision thresholds (chosen by `python -m aer.thresholds`, written beside the checkpoint)
    @property
    def thresholds_path(self) -> Path:
        return self.path.with_name(self.path.name.removesuffix(".ckpt") + THRESHOLDS_SUFFIX)

    def thresholds(self) -> Thresholds | None:
        """The thresholds chosen for this checkpoint: the file beside it, else (an older aer's) its own entry."""
        if self.thresholds_path.is_file():
            return read_thresholds(self.thresholds_path, self)
        entry = self.content.get(THRESHOLDS_KEY)
        if entry is None:
            return None
        values = entry.get("values") if isinstance(entry, Mapping) else None
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (self.num_classes,) or \
                torch.isnan(values).any():
            raise CheckpointError(f"{self.path}: its {THRESHOLDS_KEY!r} entry is not {self.num_classes} thresholds "
                                  f"(rerun `python -m aer.thresholds ckpt={self.path}`)")
        return Thresholds(values.float().numpy(), {k: v for k, v in entry.items() if k != "values"})

    def decision_thresholds(self, threshold: float | None) -> tuple[np.ndarray, str]:
        """The per-class thresholds to decide with, and a line saying where they come from: `threshold` for
        every class when given, else the checkpoint's own, else DEFAULT_THRESHOLD."""
        if threshold is not None:
            return np.full(self.num_classes, threshold, np.float32), f"{threshold} for every class (threshold=)"
        stored = self.thresholds()
        if stored is None:
            log.warning("%s holds no thresholds: deciding at %s for every class (choose them on the dev split with "
                        "`python -m aer.thresholds ckpt=%s`)", self.path, DEFAULT_THRESHOLD, self.path)
            return np.full(self.num_classes, DEFAULT_THRESHOLD, np.float32), \
                f"{DEFAULT_THRESHOLD} for every class (none stored)"
        return stored.values, stored.describe()

    def digest(self) -> str:
        """sha256 of the checkpoint file: thresholds written for it name the file's content they were chosen for."""
        with open(self.path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()


def read_thresholds(path: Path, ckpt: Checkpoint) -> Thresholds:
    """A thresholds file for `ckpt`: its values, refused in one line when damaged or chosen for another file."""
    try:
        entry = json.loads(path.read_text())
        values = np.asarray(entry["values"], dtype=np.float64).astype(np.float32)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable thresholds file ({one_line(e, typed=True)}); rerun "
                              f"`python -m aer.thresholds ckpt={ckpt.path}`") from None
    if values.shape != (ckpt.num_classes,):
        raise CheckpointError(f"{path}: {values.shape[0] if values.ndim else 0} thresholds for a model of "
                              f"{ckpt.num_classes} classes")
    if entry.get("ckpt_sha256") not in (None, ckpt.digest()):
        raise CheckpointError(f"{path}: chosen for another version of {ckpt.path} (the checkpoint changed since, "
                              f"e.g. a resumed run rewrote it): rerun `python -m aer.thresholds ckpt={ckpt.path}`")
    return Thresholds(values, {k: v for k, v in entry.items() if k != "values"}, path)


def write_thresholds(path: Path, ckpt: Checkpoint, values: np.ndarray, info: dict) -> None:
    """Writes thresholds chosen for `ckpt` (bound to its file's content), under a temporary name then renamed."""
    entry = {**info, "ckpt": str(ckpt.path), "ckpt_sha256": ckpt.digest(),
             "values": [float(v) for v in np.asarray(values, np.float32)]}
    write_json(path, entry)


def _write_checkpoint(checkpoint: dict, path) -> None:
    # Serialised in memory first: torch's zip writer turns a full disk into "unexpected pos";
    # a plain write of the bytes gets the OSError, which atomic_path names in one line.
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    atomic_write_bytes(path, buf.getbuffer(), fsync=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing beside the target and renaming over it: a kill cannot tear it.

    With background=True (training) a checkpoint is copied (`copy.deepcopy`: its tensors cloned, ~5 ms for
    report_fc's 11 MB) before save_checkpoint returns, so its content is fixed there; serialising, writing
    and syncing it (the slow parts) are done by one worker thread, in order, while training goes on. At
    most two writes wait at once (an epoch's best.ckpt and last.ckpt); a further save, a removal, a load and
    teardown (the end of fit) wait for them first and raise their error there.
    """

    def __init__(self, background: bool = False) -> None:
        super().__init__()
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if not self.background:
            _write_checkpoint(checkpoint, path)
            return
        while len(self._pending) >= 2:
            self._pending.pop(0).result()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aer-checkpoint")
        self._pending.append(self._executor.submit(_write_checkpoint, copy.deepcopy(checkpoint), path))

    def wait(self) -> None:
        """Returns once the writes in flight, if any, are done; raises the first one's error."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def load_checkpoint(self, *args, **kwargs):
        self.wait()
        return super().load_checkpoint(*args, **kwargs)

    def remove_checkpoint(self, path) -> None:
        self.wait()
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown()
                self._executor = None

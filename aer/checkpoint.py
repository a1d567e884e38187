"""Checkpoints in and out: safe loading, atomic saving, the model and the data a checkpoint was trained on.

Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain containers only, so
a checkpoint from elsewhere cannot run code on load. Any file that is missing, truncated, not a
torch file, or not an aer `Tagger` checkpoint raises `CheckpointError` with a one-line message
that names the file.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from aer.data.datamodule import AudioSetDataModule
from aer.module import Tagger
from aer.schema import check
from aer.settings import DataSettings
from aer.utils import atomic_write_bytes, error_line

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
    return None, _first_sentence(reasons[0] if reasons else error_line(e))


_ADVICE = re.compile(r"weights_only|Weights only load failed|documentation of torch.load|trusted source", re.I)
# A torch file is a zip archive (torch.save since 1.6) or, in the legacy format, a pickle.
_MAGIC = (b"PK\x03\x04", b"\x80")


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].rstrip(".")


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
        detail = _first_sentence(error_line(e))
    return CheckpointError(f"{p}: not a readable torch checkpoint (truncated or damaged): {detail}")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
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
    if THRESHOLDS_KEY in ckpt:
        stored_thresholds(ckpt, str(p))  # a damaged entry is reported on load, not at the first decision
    return ckpt


# ---- decision thresholds (written by `python -m aer.thresholds`)
THRESHOLDS_KEY = "aer_thresholds"
DEFAULT_THRESHOLD = 0.5


def stored_thresholds(ckpt: dict, source: str = "checkpoint") -> tuple[np.ndarray, dict] | None:
    """(thresholds float32 (C,), how they were chosen) stored in a checkpoint, or None if it holds none."""
    entry = ckpt.get(THRESHOLDS_KEY)
    if entry is None:
        return None
    num_classes = int(ckpt["hyper_parameters"].get("num_classes", 527))
    values = entry.get("values") if isinstance(entry, Mapping) else None
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (num_classes,) or torch.isnan(values).any():
        raise CheckpointError(f"{source}: its {THRESHOLDS_KEY!r} entry is not {num_classes} thresholds "
                              f"(rerun `python -m aer.thresholds ckpt={source}`)")
    return values.float().numpy(), {k: v for k, v in entry.items() if k != "values"}


def decision_thresholds(ckpt: dict, threshold: float | None, source: str = "checkpoint") -> tuple[np.ndarray, str]:
    """The per-class thresholds to decide with, and a line saying where they come from.

    `threshold` (a number) applies to every class; None takes the checkpoint's own, else 0.5.
    """
    num_classes = int(ckpt["hyper_parameters"].get("num_classes", 527))
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold={threshold!r}: expected a probability in [0, 1], or null for the "
                             f"checkpoint's per-class thresholds")
        return np.full(num_classes, threshold, np.float32), f"{threshold} for every class (threshold=)"
    stored = stored_thresholds(ckpt, source)
    if stored is None:
        log.warning("%s holds no thresholds: deciding at %s for every class (choose them on the dev split with "
                    "`python -m aer.thresholds ckpt=%s`)", source, DEFAULT_THRESHOLD, source)
        return np.full(num_classes, DEFAULT_THRESHOLD, np.float32), f"{DEFAULT_THRESHOLD} for every class (none stored)"
    values, info = stored
    target = f", target={info['target']}" if info.get("rule") == "precision" else ""
    return values, f"per class, rule={info.get('rule')}{target}, chosen on split={info.get('split')}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing beside the target and renaming over it: a kill cannot tear it.

    With background=True (training) the serialised bytes are written and synced by one worker
    thread while training goes on: the checkpoint's content is fixed before save_checkpoint
    returns, only the write (and its fsync, the slow part) overlaps the next steps. One write is
    in flight at most; the next save, a removal, a load and teardown (the end of fit) wait for it
    first, and raise its error there.
    """

    def __init__(self, background: bool = False) -> None:
        super().__init__()
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        # Serialised in memory first: torch's zip writer turns a full disk into "unexpected pos";
        # a plain write of the bytes gets the OSError, which atomic_path names in one line.
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        self.wait()
        if not self.background:
            atomic_write_bytes(path, buf.getbuffer(), fsync=True)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aer-checkpoint")
        self._pending = self._executor.submit(atomic_write_bytes, path, buf.getbuffer(), True)

    def wait(self) -> None:
        """Returns once the write in flight, if any, is done; raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

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


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Writes a checkpoint dict as training does: beside the target, then renamed over it."""
    AtomicCheckpointIO().save_checkpoint(ckpt, path)


def model_name(ckpt: dict) -> str:
    """The registered network (model=NAME) a loaded checkpoint holds."""
    return str(ckpt["hyper_parameters"]["model"])


def tagger_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> Tagger:
    """Rebuilds the Tagger from a loaded checkpoint's hparams and weights (strict: every weight must fit)."""
    hp = dict(ckpt["hyper_parameters"])
    known = set(inspect.signature(Tagger.__init__).parameters) - {"self"}
    extra = sorted(set(hp) - known)
    if extra:
        log.warning("%s: ignoring hparams this version of Tagger does not take: %s", source, ", ".join(extra))
    try:
        model = Tagger(**{k: v for k, v in hp.items() if k in known})
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except Exception as e:  # noqa: BLE001 — a network the hparams cannot rebuild, or weights that do not fit
        raise CheckpointError(f"{source}: cannot rebuild its model (model={hp.get('model')!r}): "
                              f"{error_line(e)}") from None
    model.eval()
    return model


def load_tagger(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Tagger:
    """The trained Tagger in a checkpoint, in eval mode, on `map_location`."""
    return tagger_from_checkpoint(load_checkpoint(path, map_location), str(path)).to(map_location)


def datamodule_from_checkpoint(path_or_ckpt: str | os.PathLike | dict, data_overrides: Mapping | None = None,
                               split: str = "eval", source: str | None = None) -> AudioSetDataModule:
    """The data module a checkpoint was trained with, serving `split` as its test split.

    Its stored arguments are overlaid with the non-null `data_overrides` (e.g. another root).
    split=eval scores the eval split (mode final); split=val scores the dev 20% held out from
    the training split (mode dev), drawn with the stored split_seed and val_fraction, so it is
    the same clips the training run validated on.
    """
    if split not in SPLIT_MODES:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLIT_MODES)}")
    if isinstance(path_or_ckpt, dict):
        ckpt, source = path_or_ckpt, source or "checkpoint"
    else:
        ckpt, source = load_checkpoint(path_or_ckpt), source or str(path_or_ckpt)
    stored = dict(ckpt.get("datamodule_hyper_parameters") or {})
    overrides = {k: v for k, v in (data_overrides or {}).items() if v is not None and not k.startswith("_")}
    allowed = {f.name for f in dataclasses.fields(DataSettings)}
    check(DataSettings, overrides, "data")
    mode = SPLIT_MODES[split]
    if overrides.pop("mode", mode) != mode:
        # e.g. data=audioset brings its mode: dev along; which split is scored is split's to say
        log.info("scoring split=%s: data.mode is %s whatever the data config says", split, mode)
    # Inference needs no loader workers (batches are gathers from memory); the training run's may be many.
    hp = {"num_workers": 0, "pin_memory": False}
    hp.update({k: v for k, v in stored.items() if k in allowed and k not in ("num_workers", "pin_memory")})
    hp.update(overrides)
    hp["mode"] = mode
    if not hp.get("root"):
        raise CheckpointError(f"{source}: holds no data settings (datamodule_hyper_parameters); "
                              f"pass data.root=... to say which data to score it on")
    return AudioSetDataModule(**hp)

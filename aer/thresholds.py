"""`python -m aer.thresholds ckpt=PATH [rule=f1|precision] [target=0.5]`: decisions, not just scores.

Scores the dev 20% held out of the training split (the clips the run validated on, never eval),
chooses one threshold per class there (`aer.metrics.choose_thresholds`), and writes them beside the
checkpoint (`<name>.thresholds.json`, bound to the checkpoint file's content; the checkpoint is never
rewritten). predict, evaluate and export then decide with them. A separate command rather than a
training option: it works on any checkpoint (best, last, SWA, older runs), and changing the rule needs
no retraining.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from aer.checkpoint import Checkpoint, CheckpointError, write_thresholds
from aer.files import atomic_path, write_json
from aer.launch import job_state
from aer.paths import resolved_path
from aer.scoring import DECISION_KEYS
from aer.settings import ThresholdsConfig

log = logging.getLogger(__name__)


def _dev_thresholds(config: ThresholdsConfig, ckpt: Checkpoint) -> tuple:
    """Chooses the thresholds on the dev split: (values, how they were chosen)."""
    import torch

    from aer.inference import predict_split
    from aer.metrics import choose_thresholds, decision_scores

    dm = ckpt.datamodule("val", config.data)
    ckpt.check_dev_split(dm, "the thresholds' dev split")
    probs, labels, _ = predict_split(ckpt.tagger(), dm)
    thr, chosen = choose_thresholds(torch.from_numpy(probs), torch.from_numpy(labels), config.rule,
                                    float(config.target), float(config.fallback))
    dev = decision_scores(probs, labels, thr.numpy())
    has_pos = labels.any(0)
    return thr.numpy(), {
        "rule": config.rule, "target": float(config.target) if config.rule == "precision" else None,
        "fallback": float(config.fallback), "split": "val", "clips": int(len(probs)), "data_root": str(dm.root),
        "classes_chosen": int(chosen.sum()), "classes_fallback": int((~has_pos).sum()),
        "classes_never": int((has_pos & ~chosen.numpy()).sum()), **{f"val/{k}": dev[k] for k in DECISION_KEYS}}


# what the run that chose thresholds and the run that takes them must share: the network and the data
SAME_MODEL = {"model": "model", "model_kwargs": "model.*", "normalize": "data.normalize", "num_classes":
              "data.num_classes"}
SAME_DATA = ("root", "train_split")


def _copied_thresholds(source: Checkpoint, ckpt: Checkpoint) -> tuple:
    """The thresholds chosen for `source` (a dev-mode run of the same model and data), for `ckpt`."""
    stored = source.thresholds()
    if stored is None:
        raise CheckpointError(f"from_ckpt={source.path}: holds no thresholds (run `python -m aer.thresholds "
                              f"ckpt={source.path}` first)")
    for key, name in SAME_MODEL.items():
        if source.hparams.get(key) != ckpt.hparams.get(key):
            raise ValueError(f"from_ckpt={source.path}: its thresholds were chosen for {name}="
                             f"{source.hparams.get(key)!r}, ckpt={ckpt.path} has {ckpt.hparams.get(key)!r}: copy "
                             f"them only from a dev-mode run of the same config")
    for key in SAME_DATA:
        theirs, ours = source.data.get(key), ckpt.data.get(key)
        if key == "root":
            theirs, ours = (str(Path(r).expanduser().resolve()) if r else r for r in (theirs, ours))
        if theirs != ours:
            raise ValueError(f"from_ckpt={source.path}: its thresholds were chosen on data.{key}={theirs!r}, "
                             f"ckpt={ckpt.path} was trained on data.{key}={ours!r}: copy them only from a dev-mode "
                             f"run of the same config")
    if ckpt.mode == "dev" and source.held_out != ckpt.held_out:
        raise ValueError(f"from_ckpt={source.path}: its thresholds were chosen on another dev split than ckpt="
                         f"{ckpt.path} holds out: copy them only from a run of the same config and data")
    return stored.values, {**stored.info, "copied_from": str(source.path),
                           "chosen_for": stored.info.get("chosen_for", str(source.path))}


def run(config: ThresholdsConfig) -> dict:
    """Chooses (or copies) the thresholds and writes them beside the checkpoint; what metrics.json holds."""
    t0 = time.time()
    path = resolved_path(config.ckpt)
    ckpt = Checkpoint.load(path)
    if config.from_ckpt:
        values, info = _copied_thresholds(Checkpoint.load(resolved_path(config.from_ckpt)), ckpt)
    elif ckpt.mode == "final":
        raise ValueError(f"ckpt={path}: a data.mode=final model, trained on the dev split too: thresholds chosen "
                         f"there would be chosen on its training clips. Choose them on the dev-mode run of the same "
                         f"config and pass it as from_ckpt=<that run>/checkpoints/best.ckpt")
    else:
        with job_state(config.threads):
            values, info = _dev_thresholds(config, ckpt)
    if config.out:  # a copy of the checkpoint deciding with these thresholds; the original is left as it is
        out = resolved_path(config.out)
        with atomic_path(out) as tmp:
            shutil.copyfile(path, tmp)
        ckpt = Checkpoint.load(out)
    info.setdefault("chosen_for", str(ckpt.path))
    write_thresholds(ckpt.thresholds_path, ckpt, values, info)
    result = {"status": "ok", "ckpt": str(ckpt.path), "source_ckpt": str(path), "thresholds": str(ckpt.thresholds_path),
              **info, "seconds": round(time.time() - t0, 2)}
    write_json(Path(config.output_dir) / "metrics.json", result)
    print(f"{ckpt.thresholds_path}: {len(values)} thresholds for {ckpt.path}, {_describe(info)}", flush=True)
    return result


def _describe(info: dict) -> str:
    if "copied_from" in info:
        return f"copied from {info['copied_from']}"
    rule = f"rule={info['rule']}" + (f" target={info['target']}" if info["rule"] == "precision" else "")
    return (f"{rule}, chosen on split=val ({info['clips']} clips): {info['classes_chosen']} chosen, "
            f"{info['classes_fallback']} without dev positives at {info['fallback']}, "
            f"{info['classes_never']} never tagged\n"
            f"on those clips: micro F1 {info['val/micro_f1']:.4f} (P {info['val/micro_precision']:.4f}, "
            f"R {info['val/micro_recall']:.4f}), macro F1 {info['val/macro_f1']:.4f}")


if __name__ == "__main__":
    from aer.cli import thresholds

    thresholds()

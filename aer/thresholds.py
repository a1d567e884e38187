"""`python -m aer.thresholds ckpt=PATH [rule=f1|precision] [target=0.5]`: decisions, not just scores.

Scores the dev 20% held out of the training split (the clips the run validated on, never eval),
chooses one threshold per class there (`aer.metrics.choose_thresholds`), and stores them in the
checkpoint under "aer_thresholds", rewritten atomically. predict, evaluate and export then decide
with them. A separate command rather than a training option: it works on any checkpoint (best,
last, SWA, older runs), and changing the rule needs no retraining.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

import aer.config  # noqa: F401 — registers the config schema and resolvers
from aer.entry import task
from aer.evaluate import data_overrides
from aer.paths import CONFIGS
from aer.utils import write_json

log = logging.getLogger(__name__)

def check_config(cfg: DictConfig) -> None:
    """Raises ValueError naming the key; runs before the checkpoint and the data are read."""
    from aer.metrics import THRESHOLD_RULES

    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.get("ckpt"):
        raise ValueError("ckpt is not set: run `python -m aer.thresholds ckpt=<run>/checkpoints/best.ckpt`")
    if cfg.rule not in THRESHOLD_RULES:
        raise ValueError(f"rule={cfg.rule!r}: expected one of {', '.join(THRESHOLD_RULES)}")
    target, fallback = cfg.get("target"), cfg.get("fallback")
    if not _is_number(target) or not 0.0 < target <= 1.0:
        raise ValueError(f"target={target!r}: expected a precision in (0, 1]")
    if not _is_number(fallback) or not 0.0 <= fallback <= 1.0:
        raise ValueError(f"fallback={fallback!r}: expected a threshold in [0, 1]")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _dev_thresholds(cfg: DictConfig, ckpt: dict, source: str) -> dict:
    """Chooses the thresholds on the dev split; the checkpoint entry to store."""
    import torch

    from aer.checkpoint import datamodule_from_checkpoint, tagger_from_checkpoint
    from aer.inference import predict_split
    from aer.metrics import choose_thresholds, decision_scores

    model = tagger_from_checkpoint(ckpt, source)
    dm = datamodule_from_checkpoint(ckpt, data_overrides(cfg), "val", source=source)
    probs, labels, _ = predict_split(model, dm)
    thr, chosen = choose_thresholds(torch.from_numpy(probs), torch.from_numpy(labels), cfg.rule,
                                    float(cfg.target), float(cfg.fallback))
    dev = decision_scores(probs, labels, thr.numpy())
    has_pos = labels.any(0)
    return {"values": thr, "rule": cfg.rule, "target": float(cfg.target) if cfg.rule == "precision" else None,
            "fallback": float(cfg.fallback), "split": "val", "clips": int(len(probs)), "data_root": str(dm.root),
            "classes_chosen": int(chosen.sum()), "classes_fallback": int((~has_pos).sum()),
            "classes_never": int((has_pos & ~chosen.numpy()).sum()),
            **{f"val/{k}": dev[k] for k in ("micro_f1", "micro_precision", "micro_recall",
                                            "macro_f1", "macro_precision", "macro_recall")}}


def _copied_thresholds(from_path: Path, ckpt: dict) -> dict:
    from aer.checkpoint import THRESHOLDS_KEY, CheckpointError, load_checkpoint, stored_thresholds

    other = load_checkpoint(from_path)
    stored = stored_thresholds(other, str(from_path))
    if stored is None:
        raise CheckpointError(f"from_ckpt={from_path}: holds no thresholds (run `python -m aer.thresholds "
                              f"ckpt={from_path}` first)")
    n = int(ckpt["hyper_parameters"].get("num_classes", 527))
    if len(stored[0]) != n:
        raise CheckpointError(f"from_ckpt={from_path}: {len(stored[0])} thresholds for a model of {n} classes")
    return {**other[THRESHOLDS_KEY], "copied_from": str(from_path)}


def run(cfg: DictConfig) -> dict:
    """Chooses (or copies) the thresholds and writes them into the checkpoint; what metrics.json holds."""
    t0 = time.time()
    check_config(cfg)
    from aer.checkpoint import THRESHOLDS_KEY, load_checkpoint, save_checkpoint

    path = Path(to_absolute_path(str(cfg.ckpt))).resolve()
    ckpt = load_checkpoint(path)
    mode = (ckpt.get("datamodule_hyper_parameters") or {}).get("mode")
    if cfg.get("from_ckpt"):
        entry = _copied_thresholds(Path(to_absolute_path(str(cfg.from_ckpt))).resolve(), ckpt)
    elif mode == "final":
        raise ValueError(f"ckpt={path}: a data.mode=final model, trained on the dev split too: thresholds chosen "
                         f"there would be chosen on its training clips. Choose them on the dev-mode run of the same "
                         f"config and pass it as from_ckpt=<that run>/checkpoints/best.ckpt")
    else:
        entry = _dev_thresholds(cfg, ckpt, str(path))
    ckpt[THRESHOLDS_KEY] = entry
    out = Path(to_absolute_path(str(cfg.out))) if cfg.get("out") else path
    save_checkpoint(ckpt, out)
    info = {k: v for k, v in entry.items() if k != "values"}
    result = {"status": "ok", "ckpt": str(out), "source_ckpt": str(path), **info,
              "seconds": round(time.time() - t0, 2)}
    write_json(Path(cfg.paths.output_dir) / "metrics.json", result)
    print(f"{out}: {len(entry['values'])} thresholds, {_describe(info)}", flush=True)
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


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="thresholds")
def main(cfg: DictConfig):
    return task(run)(cfg)


if __name__ == "__main__":
    main()

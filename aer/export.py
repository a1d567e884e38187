"""`python -m aer.export ckpt=PATH format=onnx|torchscript [out=PATH]`: a model that runs without aer.

The file takes the release's features as they are, uint8 (B, T, 128) with T = 10, and the clips'
lengths int64 (B,), and returns probabilities float32 (B, 527): the x/255 scaling, the zeroing of
frames past each clip's length and the Tagger's input normalisation are inside the graph. Class
names, the input contract and the decision thresholds (`python -m aer.thresholds`) travel in the
file's metadata: ONNX metadata_props, TorchScript extra files, under the keys of METADATA_KEYS,
each a JSON text (read them back with `read_metadata`).

Before the file is renamed into place it is loaded back (onnxruntime, torch.jit.load) and run on
clips of every length in batches of other sizes than the one it was recorded with; an export whose
probabilities differ from PyTorch's by more than CHECK_ATOL is refused. ONNX goes through
torch.onnx's TorchScript-based exporter: torch.export (dynamo=True) cannot yet record the
attention networks' boolean frame selection, whose sizes depend on the lengths.
"""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from aer import __version__
from aer.checkpoint import Checkpoint
from aer.data.records import EMBED_DIM, MAX_FRAMES
from aer.files import atomic_path
from aer.paths import resolved_path
from aer.settings import ExportConfig

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUTS, OUTPUT = ("features", "lengths"), "probs"
METADATA_KEYS = ("aer.classes", "aer.input", "aer.output", "aer.thresholds", "aer.model")
CHECK_ATOL = 1e-5  # probabilities: float32 kernels of another runtime differ by ~1e-7
ONNX_OPSET = 17


def metadata(ckpt: Checkpoint, names: list[tuple[str, str]], thresholds: np.ndarray, thr_source: str) -> dict[str, str]:
    """The metadata entries (key -> JSON text) that travel in the exported file."""
    hp = ckpt.hparams
    frames, dims, n = int(hp.get("max_frames", MAX_FRAMES)), int(hp.get("in_dim", EMBED_DIM)), ckpt.num_classes
    norm = "then (x - mean) / std per dimension with the training split's statistics" \
        if hp.get("normalize") == "standardize" else "no other normalisation"
    entries = {
        "aer.classes": [{"index": i, "mid": mid, "name": name} for i, (mid, name) in enumerate(names)],
        "aer.input": {
            INPUTS[0]: {"dtype": "uint8", "shape": ["batch", frames, dims],
                        "meaning": "the release's 8-bit quantised VGGish embeddings, one row a second"},
            INPUTS[1]: {"dtype": "int64", "shape": ["batch"], "range": [1, frames],
                        "meaning": "real frames per clip; frames at and past it are ignored"},
            "scaling": f"x = features / 255 inside the graph, {norm}",
        },
        "aer.output": {OUTPUT: {"dtype": "float32", "shape": ["batch", n],
                                "meaning": "per-class probabilities (sigmoid)"}},
        "aer.thresholds": {"values": [float(t) if np.isfinite(t) else None for t in thresholds],
                           "decide": "a clip is tagged with class c where probs[c] >= values[c]; null: never "
                                     "(no threshold reached rule=precision's target on the dev split)",
                           "source": thr_source, **_stored_info(ckpt)},
        "aer.model": {"model": hp.get("model"), "model_kwargs": hp.get("model_kwargs") or {},
                      "normalize": hp.get("normalize"), "checkpoint": str(ckpt.path),
                      "epoch": ckpt.epoch, "aer_version": __version__},
    }
    return {k: json.dumps(v, ensure_ascii=False, allow_nan=False) for k, v in entries.items()}


def _stored_info(ckpt: Checkpoint) -> dict:
    stored = ckpt.thresholds()
    keep = ("ckpt", "ckpt_sha256")  # where the file's thresholds were chosen is said by "source"
    return {} if stored is None else {k: v for k, v in stored.info.items() if not k.startswith("val/")
                                      and k not in keep}


def read_metadata(path: str | Path) -> dict:
    """The aer metadata of an exported file (either format), each entry parsed from its JSON."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    else:
        import torch

        raw = {k: "" for k in METADATA_KEYS}
        torch.jit.load(str(path), map_location="cpu", _extra_files=raw)
    missing = [k for k in METADATA_KEYS if not raw.get(k)]
    if missing:
        raise ValueError(f"{path}: no aer metadata {', '.join(missing)} (not written by `python -m aer.export`)")
    return {k: json.loads(raw[k]) for k in METADATA_KEYS}


def load_runner(path: str | Path, fmt: str, threads: int | None = None):
    """A function (features uint8 (B, T, D), lengths int64 (B,)) -> probabilities, over the exported file.

    `threads`: onnxruntime's intra-op threads (TorchScript runs on torch's, torch.set_num_threads).
    """
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda f, n: sess.run([OUTPUT], {INPUTS[0]: f, INPUTS[1]: n})[0]
    import torch

    module = torch.jit.load(str(path), map_location="cpu")

    def run(f: np.ndarray, n: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(f), torch.from_numpy(n)).numpy()

    return run


def probe_clips(batch: int, frames: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 clips of every length 1..frames (garbage past each length, which must be ignored)."""
    rng = np.random.default_rng(seed)
    lengths = rng.permutation(np.resize(np.arange(1, frames + 1), batch)).astype(np.int64)
    return rng.integers(0, 256, (batch, frames, dims), dtype=np.uint8), lengths


def _write_onnx(model, example, path: Path, meta: dict[str, str]) -> None:
    import onnx
    import torch

    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in (*INPUTS, OUTPUT)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes: check() judges the result
        torch.onnx.export(model, example, buf, input_names=list(INPUTS), output_names=[OUTPUT], dynamic_axes=axes,
                          opset_version=ONNX_OPSET, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _write_torchscript(model, example, path: Path, meta: dict[str, str]) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes: check() judges the result
        traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced, str(path), _extra_files=meta)


def check(path: Path, fmt: str, model, frames: int, dims: int) -> float:
    """Runs the written file on batches of other sizes than the recorded one; the worst |Δp| against PyTorch."""
    import torch

    run = load_runner(path, fmt)
    worst = 0.0
    for seed, batch in enumerate((7, 1, 2 * frames + 1), start=1):
        features, lengths = probe_clips(batch, frames, dims, seed)
        with torch.inference_mode():
            want = model(torch.from_numpy(features), torch.from_numpy(lengths)).numpy()
        got = run(features, lengths)
        if got.shape != want.shape:
            raise RuntimeError(f"{path}: returned {got.shape} for a batch of {batch}, expected {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    if not worst <= CHECK_ATOL:
        raise RuntimeError(f"{path}: its probabilities differ from PyTorch's by {worst:.3g} (> {CHECK_ATOL}); "
                           f"the {fmt} export of this network is not faithful")
    return worst


WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript}


def _class_names(config: ExportConfig, ckpt: Checkpoint) -> list[tuple[str, str]]:
    from aer.data.labels import read_class_labels, read_labels

    if config.labels:
        return read_labels(resolved_path(config.labels), ckpt.num_classes)
    if ckpt.class_names():
        return ckpt.class_names()
    root = ckpt.data.get("root")
    return read_class_labels(Path(root) if root else Path("."), ckpt.num_classes)  # warns, names by index if absent


def run(config: ExportConfig) -> dict:
    """Exports config.ckpt in config.format; what it wrote and how far it is from PyTorch."""
    t0 = time.time()
    if config.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise ValueError(f"format=onnx needs the onnx and onnxruntime packages ({e}): "
                             f"pip install -e '.[export]'") from None
    import torch

    path = resolved_path(config.ckpt)
    ckpt = Checkpoint.load(path)
    tagger = ckpt.tagger()
    hp = tagger.hparams
    thresholds, thr_source = ckpt.decision_thresholds(None)
    meta = metadata(ckpt, _class_names(config, ckpt), thresholds, thr_source)
    out = resolved_path(config.out) if config.out else path.with_name(path.stem + FORMATS[config.format])
    model = tagger.probabilities().eval()
    example = tuple(map(torch.from_numpy, probe_clips(3, hp.max_frames, hp.in_dim)))
    with atomic_path(out) as tmp:
        WRITERS[config.format](model, example, tmp, meta)
        worst = check(tmp, config.format, model, hp.max_frames, hp.in_dim)
    result = {"status": "ok", "out": str(out), "format": config.format, "bytes": out.stat().st_size,
              "model": hp.model, "ckpt": str(path), "thresholds": thr_source, "max_abs_diff": worst,
              "seconds": round(time.time() - t0, 2)}
    print(f"wrote {out} ({config.format}, {result['bytes'] / 1e6:.1f} MB, model={hp.model}): features uint8 "
          f"(batch, {hp.max_frames}, {hp.in_dim}) + lengths int64 (batch,) -> probs float32 (batch, "
          f"{hp.num_classes}); thresholds {thr_source}; checked against PyTorch: max |dp| = {worst:.2g}", flush=True)
    return result


if __name__ == "__main__":
    from aer.cli import export

    export()

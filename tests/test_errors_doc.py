"""docs/errors.md: every bad input a user can give, run for real, with the exact message aer prints.

The table is produced here and compared with the committed file, so it cannot drift from the code.
After a change of wording, rewrite it with `AER_WRITE_ERRORS_DOC=1 python -m pytest tests/test_errors_doc.py`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from aer.data.convert import convert
from aer.data.demo import generate
from aer.data.records import Clip, serialize_clip
from aer.data.tfrecord import frame
from conftest import ROOT, disk_full_after, train_overrides

DOC = ROOT / "docs" / "errors.md"


@dataclass
class Case:
    section: str
    what: str
    argv: list[str]
    shown: str  # the command as the doc shows it
    max_file_bytes: int | None = None  # a full disk, injected as a file-size limit on the child
    env: dict | None = None  # set for the child


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Evil.marker}",))

    marker = ""


def _shards(root: Path) -> dict[str, Path]:
    """Folders of one kind of bad shard each (two clips per shard, the second one bad)."""
    def clip(vid: str, labels=(3,), n: int = 10) -> bytes:
        rng = np.random.default_rng(len(vid))
        return serialize_clip(Clip(vid, 0.0, float(n), np.array(labels), rng.integers(0, 256, (n, 128), np.uint8)))

    kinds = {
        "a truncated shard": frame(clip("ok")) + frame(clip("cut"))[:300],
        "a corrupt record": frame(clip("ok")) + bytes([*frame(clip("bad"))[:-1], 0]),
        "an unknown label": frame(clip("ok")) + frame(clip("lab", labels=(3, 600))),
        "an empty (0-byte) shard": b"",
        "a clip twice (duplicate video_id)": frame(clip("same")) + frame(clip("same")),
    }
    out = {}
    for i, (kind, data) in enumerate(kinds.items()):
        (root / f"src{i}").mkdir(parents=True)
        (root / f"src{i}" / "aa.tfrecord").write_bytes(data)
        out[kind] = root / f"src{i}"
    return out


def _cases(tmp: Path, demo: Path, ckpt: Path, thresholded: Path, study: list[str]) -> list[Case]:
    py, data = sys.executable, [sys.executable, "-m", "aer.data"]
    shards = _shards(tmp / "shards")
    foreign = tmp / "release"
    generate(tmp / "made", clips=30, eval_clips=10, seed=1)
    foreign.mkdir()
    for split in ("bal_train", "eval"):  # the shards without the demo generator's marker
        (tmp / "made" / split).rename(foreign / split)
    ckpts = {"text": tmp / "notes.ckpt", "truncated": tmp / "cut.ckpt", "foreign": tmp / "other.ckpt",
             "malicious": tmp / "evil.ckpt"}
    ckpts["text"].write_text("not a checkpoint\n")
    ckpts["truncated"].write_bytes(ckpt.read_bytes()[:5000])
    torch.save({"weights": torch.zeros(3)}, ckpts["foreign"])
    state = torch.load(thresholded, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["normalize"] = "standardize"
    torch.save(state, tmp / "standardized.ckpt")
    Evil.marker = str(tmp / "PWNED")
    torch.save({"state_dict": Evil()}, ckpts["malicious"])
    train = [py, str(ROOT / "train.py"), *train_overrides(demo, tmp / "runs", "trainer.max_epochs=1")]
    def evaluate(tag: str) -> list[str]:  # a run dir each: a dir that holds a run is refused
        return [py, str(ROOT / "evaluate.py"), f"hydra.run.dir={tmp / 'eval' / tag}"]
    cases = [Case("Data", k, [*data, "convert", str(p), str(tmp / f"{p.name}.h5")],
                  "python -m aer.data convert SRC OUT.h5") for k, p in shards.items()]
    cases += [
        Case("Data", "no such shard folder", [*data, "convert", str(tmp / "nowhere"), str(tmp / "o.h5")],
             "python -m aer.data convert MISSING OUT.h5"),
        Case("Data", "output inside the shard folder",
             [*data, "convert", str(demo / "bal_train"), str(demo / "bal_train" / "x.tfrecord")],
             "python -m aer.data convert SRC SRC/x.tfrecord"),
        Case("Data", "a negative worker count", [*data, "convert", str(demo / "bal_train"), str(tmp / "w.h5"),
                                                 "--workers", "-3"], "python -m aer.data convert SRC OUT --workers -3"),
        Case("Data", "a full disk during conversion", [*data, "convert", str(demo / "bal_train"), str(tmp / "f.h5")],
             "python -m aer.data convert SRC OUT.h5  (disk full)", 100_000),
        Case("Data", "data=demo (the default) over a folder of real shards",
             [py, str(ROOT / "train.py"), f"data.root={foreign}", f"paths.log_dir={tmp / 'runs'}"],
             "python train.py data.root=RELEASE"),
        Case("Data", "a damaged cache given to predict", [py, "-m", "aer.predict", f"ckpt={ckpt}",
                                                         f"input={tmp / 'damaged.h5'}", f"out={tmp / 'pred'}"],
             "python -m aer.predict ckpt=C input=DAMAGED.h5"),
    ]
    cases += [Case("Config", f"`{o}`", [*train, o], f"python train.py {o}") for o in (
        "data.mode=weird", "data.normalize=zscore", "data.train_split=everything", "data.val_fraction=2",
        "data.batch_size=0", "model=transformerx", "model.hidden=-3", "model.foo=1", "init=glorot", "optim.lr=-1",
        "optim.scheduler=linear", "augment.mixup_alpha=-1", "augment.label_smoothing=2", "augment.frame_dropout=1",
        "optim.optimizer=sgd", "trainer.max_epochs=0",
        "trainer.limit_train_batches=0", "trainer.gradient_clip_algorithm=max", "seed=abc", "data.mode=[")]
    cases += [Case("Config", "`swa.enabled=true ema.enabled=true`", [*train, "swa.enabled=true", "ema.enabled=true"],
                   "python train.py swa.enabled=true ema.enabled=true")]
    cases += [
        Case("Training", "a run that would train no step", [*train, "data.batch_size=5000", "data.drop_last=true"],
             "python train.py data.batch_size=5000 data.drop_last=true"),
        Case("Training", "a diverging run", [*train, "optim.lr=1e6", "trainer.max_epochs=2", "data.batch_size=8"],
             "python train.py optim.lr=1e6 data.batch_size=8"),
        Case("Training", "resuming onto another split", [*train, "data.split_seed=7", f"ckpt_path={ckpt}"],
             "python train.py data.split_seed=7 ckpt_path=C"),
        Case("Training", "a full disk at the first checkpoint", [*train, f"hydra.run.dir={tmp / 'full'}"],
             "python train.py ...  (disk full)", 1_000_000),
        Case("Training", "ontology targets without an ontology.json",
             [py, str(ROOT / "train.py"), "data=audioset", f"data.root={foreign}", "augment.ontology_targets=true",
              f"paths.log_dir={tmp / 'runs'}"], "python train.py data=audioset data.root=RELEASE "
                                                "augment.ontology_targets=true"),
        Case("Training", "a teacher trained on the validation clips", [*train, "data.split_seed=7",
                                                                       f"distill.ckpts=[{ckpt}]"],
             "python train.py data.split_seed=7 distill.ckpts=[C]"),
    ]
    run_dir = ckpt.parent.parent  # the shared training run's dir
    (tmp / "precious.txt").write_text("notes\n")
    cases += [
        Case("Runs", "a run dir that holds another run", [*train, f"hydra.run.dir={run_dir}"],
             "python train.py hydra.run.dir=<run>"),
        Case("Runs", "a run dir inside the data root", [*train, f"hydra.run.dir={demo / 'bal_train' / 'run'}"],
             "python train.py hydra.run.dir=<demo>/bal_train/run"),
        Case("Runs", "a run dir where nothing can be written", [*train, "hydra.run.dir=/proc/aer-run"],
             "python train.py hydra.run.dir=/proc/aer-run"),
        Case("Runs", "a data folder where nothing can be written",
             [py, str(ROOT / "train.py"), "data.demo.clips=40", f"hydra.run.dir={tmp / 'home'}"],
             "AER_HOME=/proc/aer python train.py", env={"AER_HOME": "/proc/aer"}),
        Case("Runs", "a cache folder inside a data root aer did not make",
             [py, str(ROOT / "train.py"), "data=audioset", f"data.root={foreign}", f"data.cache_dir={foreign}/cache",
              f"paths.log_dir={tmp / 'runs'}"], "python train.py data=audioset data.root=RELEASE "
                                                "data.cache_dir=RELEASE/cache"),
        Case("Runs", "convert over a file that is not a cache", [*data, "convert", str(demo / "bal_train"),
                                                                 str(tmp / "precious.txt")],
             "python -m aer.data convert SRC precious.txt"),
        Case("Runs", "resuming another network", [*train, "model=skiplstm", f"ckpt_path={ckpt}"],
             "python train.py model=skiplstm ckpt_path=C"),
        Case("Runs", "resuming with other network settings", [*train, "model.hidden=[16]", f"ckpt_path={ckpt}"],
             "python train.py model.hidden=[16] ckpt_path=C"),
        Case("Runs", "resuming on other data", [*train, f"data.root={tmp / 'other'}", "data.demo.seed=3",
                                                f"ckpt_path={ckpt}"],
             "python train.py data.root=OTHER data.demo.seed=3 ckpt_path=C"),
        Case("Runs", "evaluating on another dev split",
             [*evaluate("split"), f"ckpt={ckpt}", "split=val", "data.split_seed=5"],
             "python evaluate.py ckpt=C split=val data.split_seed=5"),
        Case("Runs", "thresholds chosen on a run with other settings",
             [py, "-m", "aer.thresholds", f"ckpt={tmp / 'standardized.ckpt'}", f"from_ckpt={thresholded}",
              f"hydra.run.dir={tmp / 'thresholds'}"], "python -m aer.thresholds ckpt=C from_ckpt=OTHER"),
        Case("Runs", "an Optuna study continued with other settings", [*study, "seed=5"],
             "python train.py -m hparams_search=fc_optuna hydra.sweep.dir=<study> seed=5"),
    ]
    for kind, path in {"missing": tmp / "nothing.ckpt", "directory": tmp, **ckpts}.items():
        if kind in ("missing", "truncated", "malicious"):  # train.py and evaluate.py share the loader
            cases.append(Case("Checkpoints", f"a {kind} checkpoint to train.py", [*train, f"ckpt_path={path}"],
                              f"python train.py ckpt_path=C  (C: {kind})"))
        cases.append(Case("Checkpoints", f"a {kind} checkpoint to evaluate.py", [*evaluate(kind), f"ckpt={path}"],
                          f"python evaluate.py ckpt=C  (C: {kind})"))
    cases += [
        Case("Checkpoints", "a malicious checkpoint to ensemble.py",
             [py, str(ROOT / "ensemble.py"), f"ckpts=[{ckpt},{ckpts['malicious']}]", f"hydra.run.dir={tmp / 'ens'}"],
             "python ensemble.py ckpts=[C,EVIL]"),
        Case("Checkpoints", "a malicious checkpoint to predict",
             [py, "-m", "aer.predict", f"ckpt={ckpts['malicious']}", f"input={demo / 'eval'}", f"out={tmp / 'p'}"],
             "python -m aer.predict ckpt=EVIL input=DIR"),
        Case("Evaluation", "no checkpoint given", evaluate("none"), "python evaluate.py"),
        Case("Evaluation", "an unknown split", [*evaluate("test"), f"ckpt={ckpt}", "split=test"],
             "python evaluate.py ckpt=C split=test"),
        Case("Evaluation", "an unknown export format", [py, "-m", "aer.export", f"ckpt={ckpt}", "format=tflite",
                                                         f"hydra.run.dir={tmp / 'export'}"],
             "python -m aer.export ckpt=C format=tflite"),
        Case("Evaluation", "predict without an input", [py, "-m", "aer.predict", f"ckpt={ckpt}",
                                                        f"hydra.run.dir={tmp / 'predict'}"],
             "python -m aer.predict ckpt=C"),
        Case("Evaluation", "a full disk for the predictions", [*evaluate("full"), f"ckpt={ckpt}", "split=val"],
             "python evaluate.py ckpt=C split=val  (disk full)", 60_000),
        Case("Dashboards", "an MLflow tracking server that does not answer",
             [*train, "logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"],
             "python train.py logger=mlflow logger.mlflow.tracking_uri=http://127.0.0.1:9"),
    ]
    return cases


def _run(case: Case) -> tuple[Case, subprocess.CompletedProcess]:
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(case.env or {})}
    r = subprocess.run(case.argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
                       preexec_fn=disk_full_after(case.max_file_bytes) if case.max_file_bytes else None)
    return case, r


pytestmark = pytest.mark.slow  # some fifty processes, each importing torch


@pytest.fixture(scope="module")
def results(demo_root, trained_run, thresholded_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    _damaged_cache(demo_root / "eval", tmp / "damaged.h5")
    study = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=fc_optuna", "hydra.sweeper.n_trials=1",
             f"hydra.sweep.dir={tmp / 'study'}",
             *[o for o in train_overrides(demo_root, tmp, "trainer.max_epochs=1") if not o.startswith("paths.")]]
    assert _run(Case("", "", study, ""))[1].returncode == 0, "the study to continue"
    cases = _cases(tmp, demo_root, trained_run / "checkpoints" / "last.ckpt", thresholded_ckpt, study)
    with ThreadPoolExecutor(2) as pool:
        out = list(pool.map(_run, cases))
    return tmp, out


def _damaged_cache(src: Path, path: Path) -> None:
    convert(src, path, progress=False)
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 64)
        fh.write(b"\0" * 64)


def _shown(text: str, tmp: Path, demo: Path, run: Path, dev: Path) -> str:
    text = text.replace(str(dev), "<dev>")
    text = text.replace(str(tmp / "study"), "<study>").replace(str(tmp), "<tmp>")
    text = text.replace(str(demo), "<demo>").replace(str(run), "<run>")
    text = text.replace(str(ROOT), ".")
    text = re.sub(r"\S*/release-[0-9a-f]{12}", "$AER_HOME/release-<hash>", text)  # the hash is of the tmp path
    return re.sub(r"pytest-of-\w+/pytest-\d+/\w+?\d*/", "", text)


def test_every_bad_input_is_one_line_and_exit_1(results):
    tmp, out = results
    bad = [(case.what, r.returncode, r.stderr[-1500:]) for case, r in out
           if r.returncode != 1 or "Traceback" in r.stderr or "Segmentation" in r.stderr
           or not r.stderr.strip() or not r.stderr.strip().splitlines()[-1].startswith("error: ")]
    assert not bad, bad
    assert not (tmp / "PWNED").exists(), "a malicious checkpoint ran its payload"
    for case, r in out:
        if "malicious" in case.what:
            last = r.stderr.strip().splitlines()[-1]
            assert "posix.system" in last and "weights_only=False" not in last, last


def test_docs_errors_md_is_what_aer_prints(results, demo_root, trained_run, thresholded_ckpt):
    tmp, out = results
    lines = ["# Error messages", "",
             "Each bad input, run for real by `tests/test_errors_doc.py`, with the one line aer prints "
             "(exit status 1, no traceback). Paths are shortened: `<tmp>` is a scratch folder, `<demo>` a demo set,",
             "`<run>` a training run's dir (C is its checkpoint), `<dev>` one with thresholds chosen on its dev split.",
             "Regenerate after a change of wording: "
             "`AER_WRITE_ERRORS_DOC=1 python -m pytest tests/test_errors_doc.py`."]
    section = None
    for case, r in out:
        if case.section != section:
            section = case.section
            lines += ["", f"## {section}", "", "| bad input | command | message |", "|---|---|---|"]
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "(nothing printed)"
        msg = _shown(last, tmp, demo_root, trained_run, thresholded_ckpt.parent).replace("|", "\\|")
        lines.append(f"| {case.what} | `{case.shown}` | `{msg}` |")
    text = "\n".join(lines) + "\n"
    if os.environ.get("AER_WRITE_ERRORS_DOC"):
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/errors.md is out of date: regenerate it (see this module's docstring)"


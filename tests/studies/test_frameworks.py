"""The framework comparison (studies/frameworks, the checkout's study outside aer's wheel): the dev
split it shares with the DataModule, the trainers' file format, the harness end to end on demo data
(plain PyTorch, aer and JAX; TensorFlow and MXNet where their venvs are ready), the rows of
frameworks that did not run, where its venvs go, and that aer imports none of it."""

from __future__ import annotations

import ast
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

from aer.data.convert import load_split
from aer.data.datamodule import AudioSetDataModule, dev_split
from conftest import ROOT, TINY
from studies.frameworks import envs, harness, summary
from studies.frameworks.trainers import protocol


@pytest.fixture(scope="module")
def data(demo_root, tmp_path_factory):
    """The demo set's dev split as the trainers read it: (data dir, val labels, cache dir)."""
    tmp = tmp_path_factory.mktemp("fw")
    labels = harness.prepare_data(str(demo_root), str(tmp / "cache"), tmp / "data")
    return tmp / "data", labels, tmp / "cache"


def _job(data_dir, framework="torch", **kw) -> dict:
    return {"framework": framework, "data_dir": str(data_dir), "seed": 1, "epochs": 1, "threads": 1,
            **harness.BASE, "batch_size": 100, **kw}


def test_dev_split_is_the_datamodules(demo_root, data):
    dm = AudioSetDataModule(root=str(demo_root), cache_dir=str(data[2]), val_fraction=0.2, split_seed=0)
    dm.prepare_data()
    dm.setup("fit")
    cached = load_split(dm.cache_path("bal_train"))
    train, val = dev_split(cached["video_id"], 0.2, 0)
    assert np.array_equal(dm.split_info("train")["video_id"], cached["video_id"][train])
    assert np.array_equal(dm.split_info("val")["video_id"], cached["video_id"][val])
    assert len(train) + len(val) == TINY and not np.intersect1d(train, val).size
    # the harness's arrays are the DataModule's clips
    assert np.array_equal(np.load(data[0] / "val_x.npy"), cached["features"][val])
    assert np.array_equal(data[1], dm.split_info("val")["labels"])
    with pytest.raises(ValueError, match="empty split"):
        dev_split(["a", "b", "c"], 1e-9, 0)


def test_protocol_reads_what_the_harness_writes_and_names_bad_files(data, tmp_path):
    x, y, v = protocol.load_inputs(_job(data[0]))
    assert x.shape == (len(y), 1280) and v.shape == (len(data[1]), 1280)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    (tmp_path / "job.json").write_text(json.dumps({"framework": "torch"}))
    with pytest.raises(ValueError, match=r"job\.json: missing key\(s\) data_dir"):
        protocol.read_job(tmp_path)
    np.save(tmp_path / "train_x.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"train_x\.npy: expected a 3-d uint8 array, got 2-d float32"):
        protocol.load_array(tmp_path, "train_x")


def test_recorder_files_are_scored_by_aer_metrics(data, tmp_path):
    labels = data[1]
    rec = protocol.Recorder(tmp_path, "fake", {"numpy": np.__version__}, {})
    rng = np.random.default_rng(0)
    for _ in range(2):
        rec.epoch_start()
        rec.train_end()
        rec.eval_end(rng.random(labels.shape), loss=0.5)
    perfect = labels.astype(np.float32)
    np.save(tmp_path / protocol.probs_name(2), perfect)
    result = harness.score_job(tmp_path, labels)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert result["epochs"][1]["mAP"] == pytest.approx(1.0) and result["epochs"][0]["mAP"] < 0.5
    assert not list(tmp_path.glob("probs_*.npy"))  # scored, then removed
    with pytest.raises(ValueError, match=r"probs_001\.npy: not a readable \.npy file"):
        harness.score_job(tmp_path, labels)  # the scored files are gone
    bad = protocol.Recorder(tmp_path / "bad", "fake", {}, {})
    (tmp_path / "bad").mkdir()
    bad.epoch_start()
    bad.train_end()
    bad.eval_end(np.zeros((3, 4)), loss=0.1)
    with pytest.raises(ValueError, match=r"probs_001\.npy: probabilities of shape \(3, 4\)"):
        harness.score_job(tmp_path / "bad", labels)


@pytest.mark.slow
def test_torch_aer_and_jax_one_epoch_on_demo_data(demo_root, tmp_path):
    """The command itself, as in CI: plain PyTorch, aer and JAX (from the test extra) for one epoch."""
    if envs.import_error(sys.executable, envs.MODULES["jax"]):
        pytest.skip("jax, flax and optax are not installed here (they come with the `test` extra)")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "studies.frameworks", "--frameworks", "torch,aer,jax", "--seeds", "1",
                           "--epochs", "1", "--data-root", str(demo_root), "--cache-dir", str(tmp_path / "cache"),
                           "--out", str(out), "--work-dir", str(tmp_path), "--no-install"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = {r["framework"]: r for r in results["table"]}
    for fw in ("torch", "aer", "jax"):
        assert rows[fw]["seeds"] == 1 and 0.0 < rows[fw]["mAP"][0] < 1.0, rows[fw]
        assert rows[fw]["train_s_epoch"] > 0 and rows[fw]["eval_s_epoch"] > 0
    aer_epoch = results["frameworks"]["aer"]["runs"][0]["epochs"][0]
    # the parent's score of aer's probabilities is the val/mAP aer logged itself
    assert aer_epoch["mAP"] == pytest.approx(aer_epoch["aer_val_mAP"], abs=1e-6)
    assert "| jax | 1 |" in (out / "table.md").read_text()
    assert (out / "frameworks.png").stat().st_size > 0


@pytest.mark.slow
def test_trainers_take_turns_epoch_by_epoch(demo_root, data, tmp_path):
    jobs = {fw: (sys.executable, _job(data[0], fw, epochs=2, data_root=str(demo_root), cache_dir=str(data[2]),
                                      val_fraction=0.2, split_seed=0), tmp_path / fw) for fw in ("torch", "aer")}
    runs = harness.run_seed(jobs, data[1], timeout=600, lockstep=True)
    assert [r["status"] for r in runs.values()] == ["ok", "ok"], runs
    t = lambda fw, name: (tmp_path / fw / name).stat().st_mtime_ns  # noqa: E731
    # each trainer's turn (go_E until it is ready for E+1) ends before the next one's begins
    order = [t("torch", "go_001"), t("torch", "ready_002"), t("aer", "go_001"), t("aer", "ready_002"),
             t("torch", "go_002")]
    assert order == sorted(order)


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["tensorflow", "mxnet"])
def test_other_trainers_one_epoch(framework, data, tmp_path):
    python, where = envs.python_for(framework, install=False)
    if python is None:
        pytest.skip(f"{framework}: {where}; `python -m studies.frameworks --frameworks {framework}` builds it")
    run = harness.run_job(framework, python, _job(data[0], framework), tmp_path, data[1], timeout=900)
    assert run["status"] == "ok", run
    assert len(run["epochs"]) == 1 and 0.0 < run["epochs"][0]["mAP"] < 1.0
    assert run["versions"][{"tensorflow": "keras", "mxnet": "mxnet"}[framework]]


@pytest.mark.slow
def test_missing_framework_and_failed_trainer_are_not_run_rows(demo_root, data, tmp_path, monkeypatch):
    if envs.import_error(sys.executable, envs.MODULES["mxnet"]) is None:
        pytest.skip("mxnet imports in this interpreter, so it cannot stand for a missing framework")
    monkeypatch.setenv("AER_HOME", str(tmp_path / "home"))  # no venvs there
    results = harness.run_all(["mxnet"], [1], 1, 1, str(demo_root), str(data[2]), tmp_path / "work", install=False,
                              log=lambda m: None)
    failed = harness.run_job("torch", sys.executable, _job(tmp_path / "nowhere"), tmp_path / "job", data[1], 60)
    assert failed["status"] == "failed" and "train_x.npy: not a readable .npy file" in failed["error"]
    results["frameworks"]["torch"] = {"where": "this interpreter", "runs": [failed]}
    rows = {r["framework"]: r for r in summary.write_outputs(results, tmp_path / "out")}
    why = rows["mxnet"]["not_run"]
    assert why.startswith("mxnet not importable here") and "--no-install" in why
    assert rows["torch"]["not_run"].startswith("seed 1: trainer exited 1: error:")
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("not run: ") == 2 and "±" not in table


def test_table_means_and_sds_over_seeds(tmp_path):
    def run(seed, maps):
        return {"status": "ok", "seed": seed, "versions": {"torch": "x"}, "epochs": [
            {"epoch": i + 1, "mAP": m, "mAUC": 0.9, "train_s": 2.0 + i, "eval_s": 0.5, "elapsed_s": 3.0 * (i + 1)}
            for i, m in enumerate(maps)]}

    results = {"n_train": 1000, "n_val": 10, "threads": 2, "frameworks": {
        "torch": {"where": "here", "runs": [run(1, [0.1, 0.2, 0.2]), run(2, [0.1, 0.15, 0.3])]}}}
    (row,) = summary.write_outputs(results, tmp_path)
    assert row["train_s_epoch"] == 3.5 and row["clips_per_s"] == pytest.approx(1000 / 3.5)
    assert row["epochs_to_threshold"] == [2, 3]
    want = "| torch | 2 | 0.2500 ± 0.0707 | 0.9000 ± 0.0000 | 2.5 | 3.50 | 3.00 | 0.500 | 286 | 9.0 | 2 | torch x |"
    assert want in (tmp_path / "table.md").read_text()
    assert (tmp_path / "frameworks.png").stat().st_size > 0


@pytest.mark.slow  # builds a venv
def test_build_venv_once_then_reused(tmp_path):
    venv, said = tmp_path / "v", []
    assert envs.build_venv(venv, [], ["json"], log=said.append) is None
    assert envs.ready(venv, []) and not envs.ready(venv, ["something-else"])
    assert envs.import_error(envs.venv_python(venv), ["json"]) is None
    assert envs.build_venv(venv, [], ["json"], log=said.append) is None
    assert len([m for m in said if m.startswith("creating")]) == 1
    assert envs.import_error(sys.executable, ["no_such_module_aer"]).startswith("ModuleNotFoundError")
    assert os.path.exists(f"{venv}.lock")


def test_import_error_names_the_missing_module(tmp_path):
    assert envs.import_error(sys.executable, ["json"]) is None
    assert envs.import_error(sys.executable, ["no_such_module_aer"]).startswith("ModuleNotFoundError")
    assert not envs.ready(tmp_path / "no_venv", [])


def _score_one_epoch(job_dir, labels) -> dict:
    result = harness.score_job(job_dir, labels)
    assert len(result["epochs"]) == 1 and 0.0 < result["epochs"][0]["mAP"] < 1.0, result
    return result


@pytest.fixture
def torch_threads():
    """The trainers set torch's thread count for their process; this one gets its own back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# JAX, TensorFlow and MXNet trainers run in their own processes only (test_torch_aer_and_jax_one_epoch_on_demo_data,
# test_other_trainers_one_epoch): JAX's threads in this process would make later forks (conversion workers) unsafe.
@pytest.mark.parametrize("framework", ["torch"])
def test_trainer_script_in_this_process(framework, data, tmp_path, monkeypatch, torch_threads):
    """A trainer script run as the harness runs it (`python <trainer>.py JOB_DIR`), here in-process."""
    (tmp_path / "job.json").write_text(json.dumps(_job(data[0], framework)))
    monkeypatch.syspath_prepend(str(harness.TRAINERS))  # where a script finds `protocol`, as when run as one
    monkeypatch.setattr(sys, "argv", [harness.SCRIPTS[framework], str(tmp_path)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(harness.TRAINERS / harness.SCRIPTS[framework]), run_name="__main__")
    assert done.value.code == 0
    assert _score_one_epoch(tmp_path, data[1])["framework"] == framework


def test_aer_trainer_in_this_process(demo_root, data, tmp_path, torch_threads):
    from studies.frameworks import aer_trainer

    job = _job(data[0], "aer", data_root=str(demo_root), cache_dir=str(data[2]), val_fraction=0.2, split_seed=0)
    (tmp_path / "job.json").write_text(json.dumps(job))
    aer_trainer.train(job, tmp_path)
    epoch = _score_one_epoch(tmp_path, data[1])["epochs"][0]
    assert epoch["mAP"] == pytest.approx(epoch["aer_val_mAP"], abs=1e-6)  # aer's own val/mAP is the parent's score
    with pytest.raises(ValueError, match="eps=1e-07"):
        aer_trainer.overrides({**job, "eps": 1e-7}, tmp_path)


def test_replot_writes_the_table_of_an_earlier_run(tmp_path, capsys):
    from studies.frameworks.__main__ import main

    run = {"status": "ok", "seed": 1, "versions": {"torch": "x"},
           "epochs": [{"epoch": 1, "mAP": 0.2, "mAUC": 0.8, "train_s": 1.0, "eval_s": 0.5, "elapsed_s": 1.5}]}
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"n_train": 100, "n_val": 10, "threads": 1,
                                   "frameworks": {"torch": {"where": "here", "runs": [run]}}}))
    assert main(["--replot", str(results), "--out", str(tmp_path / "out")]) == 0
    assert "| torch | 1 | 0.2000" in capsys.readouterr().out
    assert (tmp_path / "out" / "table.md").read_text().count("| torch |") == 1
    assert main(["--replot", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 1
    assert "not a readable results file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--frameworks", "caffe"])


def test_venvs_live_in_aer_home(monkeypatch, tmp_path):
    for var in ("AER_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert envs.home() == tmp_path / "home" / ".cache" / "aer" / "frameworks"
    monkeypatch.setenv("AER_HOME", str(tmp_path / "aerhome"))
    assert envs.home() == tmp_path / "aerhome" / "frameworks"


def test_aer_imports_no_study():
    """The study imports aer; aer (what the wheel holds) imports nothing of studies/."""
    found = []
    for path in sorted((ROOT / "aer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "studies"]
    assert found == []

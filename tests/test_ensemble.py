"""ensemble.py: averaging, weights, mixed network types, sweep discovery, greedy selection on the dev split only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import aer.ensemble as ens
from aer.checkpoint import Checkpoint
from aer.inference import predict_split
from aer.metrics import summarize
from aer.runs import sweep_checkpoints
from conftest import DEV_VAL, config, run_script, train_overrides


@pytest.fixture(scope="module")
def fc_ckpt(trained_run) -> Path:
    return trained_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def lstm_run(demo_root, tmp_path_factory) -> Path:
    """A second, different network on the same data: a small skiplstm, one epoch."""
    from aer.train import run

    out = tmp_path_factory.mktemp("lstm")
    run(config("train", train_overrides(demo_root, out, "model=skiplstm", "model.hidden=16", "model.layers=1",
                                        "trainer.max_epochs=1")))
    return out


@pytest.fixture(scope="module")
def lstm_ckpt(lstm_run) -> Path:
    return lstm_run / "checkpoints" / "last.ckpt"


def _probs(ckpt: Path, split: str = "eval") -> np.ndarray:
    c = Checkpoint.load(ckpt)
    return predict_split(c.tagger(), c.datamodule(split))[0]


def _ensemble(tmp_path: Path, *overrides: str) -> tuple[dict, dict, np.ndarray]:
    m = ens.run(config("ensemble", [*overrides, f"paths.output_dir={tmp_path}"]))
    with h5py.File(tmp_path / "predictions.h5") as f:
        probs = f["probs"][()]
    return m, json.loads((tmp_path / "ensemble.json").read_text()), probs


def _list(*paths) -> str:
    return "[" + ",".join(str(p) for p in paths) + "]"


def test_two_identical_members_equal_the_single_model(fc_ckpt, tmp_path):
    copy = tmp_path / "copy.ckpt"
    shutil.copy(fc_ckpt, copy)
    m, info, probs = _ensemble(tmp_path / "out", f"ckpts={_list(fc_ckpt, copy)}")
    single = _probs(fc_ckpt)
    assert np.array_equal(probs, single)
    s = summarize(torch.from_numpy(single), torch.from_numpy(predict_split(
        Checkpoint.load(fc_ckpt).tagger(), Checkpoint.load(fc_ckpt).datamodule("eval", {}))[1]))
    assert m["test/mAP"] == s["mAP"] and m["test/mAUC"] == s["mAUC"]
    assert info["weights"] == [0.5, 0.5] and [x["scores"]["mAP"] for x in info["members"]] == [s["mAP"]] * 2


@pytest.mark.slow
def test_cli_mixes_fc_and_skiplstm_from_another_cwd(fc_ckpt, lstm_ckpt, tmp_path):
    rel = [os.path.relpath(p, tmp_path) for p in (fc_ckpt, lstm_ckpt)]
    proc = run_script("ensemble.py", f"ckpts={_list(*rel)}", "weights=[3,1]", "hydra.run.dir=out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    info = json.loads((out / "ensemble.json").read_text())
    assert [x["model"] for x in info["members"]] == ["fc", "skiplstm"]
    assert info["weights"] == [0.75, 0.25] and info["split"] == "eval"
    with h5py.File(out / "predictions.h5") as f:
        probs = f["probs"][()]
        assert f["labels"].dtype == bool and f["video_id"].shape == (300,)
    np.testing.assert_allclose(probs, 0.75 * _probs(fc_ckpt) + 0.25 * _probs(lstm_ckpt), atol=1e-6)
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "ok" and m["members"] == 2 and "mAP" in proc.stdout
    assert (out / "per_class.csv").exists()


def test_weights_are_normalised_and_checked():
    np.testing.assert_allclose(ens.normalize_weights([2, 2, 4], 3), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(ens.normalize_weights(None, 4), [0.25] * 4)
    for bad in ([1, 2], [1, -1, 1], [0, 0, 0], [1, float("nan"), 1], [1, "a", 1]):
        with pytest.raises(ValueError, match="weights="):
            ens.normalize_weights(bad, 3)


def test_greedy_select_with_replacement():
    rng = np.random.default_rng(0)
    labels = rng.random((200, 6)) < 0.2
    good = np.where(labels, 0.7, 0.3).astype(np.float32) + 0.05 * rng.random((200, 6)).astype(np.float32)
    noise = [rng.random((200, 6)).astype(np.float32) for _ in range(2)]
    counts, trace = ens.greedy_select([noise[0], good, noise[1]], labels, rounds=5)
    assert trace[0]["added"] == 1 and counts[1] >= 1
    assert counts.sum() == int(np.argmax([t["mAP"] for t in trace])) + 1  # the best prefix is kept
    assert trace[0]["mAP"] == pytest.approx(summarize(torch.from_numpy(good), torch.from_numpy(labels))["mAP"])
    counts, _ = ens.greedy_select([good, good], labels, rounds=3)
    assert counts.tolist() == [1, 0]  # ties go to the earlier member, and later rounds do not beat it


def test_greedy_selects_on_the_dev_split_and_never_reads_eval(fc_ckpt, lstm_ckpt, tmp_path, monkeypatch):
    served = []
    real = ens.greedy_select

    def spy(member_probs, labels, rounds):
        served.append(len(labels))
        return real(member_probs, labels, rounds)

    monkeypatch.setattr(ens, "greedy_select", spy)
    # an eval split that does not exist: reading it for anything would fail
    m, info, probs = _ensemble(tmp_path, f"ckpts={_list(fc_ckpt, lstm_ckpt)}", "select=greedy", "rounds=4",
                               "split=val", "data.eval_split=no_such_split")
    assert served == [DEV_VAL]  # the dev split of the 600 clips
    sel = info["selection"]
    assert sel["split"] == "val" and len(sel["trace"]) == 4 and sum(sel["counts"]) >= 1
    np.testing.assert_allclose(info["weights"], np.array(sel["counts"]) / sum(sel["counts"]))
    assert m["val/mAP"] == pytest.approx(sel["mAP"], abs=1e-6)  # scored on the split it was chosen on

    # scored on eval: the weights are still chosen on the dev split, from the same predictions
    served.clear()
    m2, info2, _ = _ensemble(tmp_path / "eval", f"ckpts={_list(fc_ckpt, lstm_ckpt)}", "select=greedy", "rounds=4")
    assert served == [DEV_VAL] and info2["weights"] == info["weights"] and m2["clips"] == 300


def test_sweep_discovery(trained_run, fc_ckpt, lstm_ckpt, tmp_path):
    sweep = tmp_path / "sweep"
    jobs = {n: sweep / n for n in ("0", "1", "2", "3", "10")}
    for d in jobs.values():
        (d / "checkpoints").mkdir(parents=True)
    (jobs["0"] / "metrics.json").write_text(json.dumps({"status": "ok", "best_ckpt": str(fc_ckpt)}))
    (jobs["1"] / "metrics.json").write_text(json.dumps({"status": "failed", "error": "ValueError: boom"}))
    shutil.copy(fc_ckpt, jobs["1"] / "checkpoints" / "last.ckpt")  # a failed job's leftovers are not used
    # a moved sweep: metrics.json points nowhere, the job's own checkpoints/ is used
    (jobs["2"] / "metrics.json").write_text(json.dumps({"status": "ok", "best_ckpt": "/gone/best.ckpt",
                                                        "last_ckpt": "/gone/last.ckpt"}))
    shutil.copy(lstm_ckpt, jobs["2"] / "checkpoints" / "last.ckpt")
    (jobs["3"] / "metrics.json").write_text(json.dumps({"status": "ok", "best_ckpt": None}))  # no checkpoint
    (jobs["10"] / "metrics.json").write_text(json.dumps({"status": "ok"}))
    shutil.copy(fc_ckpt, jobs["10"] / "checkpoints" / "final.ckpt")
    # a diverged job, and one killed before its metrics.json (found by its .hydra/): neither is a member
    for name, metrics in (("4", {"status": "diverged", "best_ckpt": str(fc_ckpt)}), ("5", None)):
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / ".hydra" / "overrides.yaml").write_text("- init=xavier\n")
        if metrics:
            (sweep / name / "metrics.json").write_text(json.dumps(metrics))
    (sweep / "5" / "checkpoints").mkdir()
    shutil.copy(fc_ckpt, sweep / "5" / "checkpoints" / "last.ckpt")
    (sweep / "notes").mkdir()  # not a run
    found = sweep_checkpoints(sweep)
    assert found == [fc_ckpt.resolve(), (jobs["2"] / "checkpoints" / "last.ckpt").resolve(),
                     (jobs["10"] / "checkpoints" / "final.ckpt").resolve()]

    m, info, _ = _ensemble(tmp_path / "out", f"sweep={sweep}", f"ckpts={_list(fc_ckpt)}")
    assert [x["model"] for x in info["members"]] == ["fc", "fc", "skiplstm", "fc"]
    with pytest.raises(FileNotFoundError, match="no finished job"):
        sweep_checkpoints(jobs["1"])
    with pytest.raises(FileNotFoundError, match="no such directory"):
        sweep_checkpoints(tmp_path / "nope")


def test_members_must_agree_on_the_data(fc_ckpt, lstm_ckpt, demo_root, tmp_path):
    ckpt = Checkpoint.load(lstm_ckpt).content
    ckpt["datamodule_hyper_parameters"]["split_seed"] = 7
    ckpt["datamodule_hyper_parameters"]["root"] = str(tmp_path / "other")
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(ValueError, match="members disagree on the split=eval data: .* data.root="):
        _ensemble(tmp_path / "a", f"ckpts={_list(fc_ckpt, other)}")
    with pytest.raises(ValueError, match="split=val: .*other.ckpt: its run validated on"):
        _ensemble(tmp_path / "b", f"ckpts={_list(fc_ckpt, other)}", f"data.root={demo_root}", "split=val")


@pytest.mark.parametrize("overrides,needle", [
    ([], "ckpts and sweep are both empty"),
    (["ckpts=[a.ckpt]", "select=best"], "select='best'"),
    (["ckpts=[a.ckpt]", "select=greedy", "rounds=0"], "rounds=0"),
    (["ckpts=[a.ckpt]", "select=greedy", "weights=[1]"], "greedy selection chooses the weights"),
    (["ckpts=[a.ckpt]", "weights=[1,2]"], "weights=\\[1, 2\\]"),
    (["ckpts=[a.ckpt]", "weights=2"], "expected a list"),
    (["ckpts=[a.ckpt]", "split=eval2"], "split='eval2'"),
])
def test_config_errors(tmp_path, overrides, needle):
    with pytest.raises(ValueError, match=needle):
        ens.run(config("ensemble", [*overrides, f"paths.output_dir={tmp_path}"]))

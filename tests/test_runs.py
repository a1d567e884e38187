"""The run model (aer.runs): run dirs found by one rule, overrides parsed by Hydra's parser, status,
checkpoints, the swept keys; and the sweep summary built on it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from aer.runs import (
    NO_METRICS,
    collect,
    find_runs,
    is_run_dir,
    load_run,
    parse_override,
    parse_overrides,
    swept_keys,
    write_summary,
)


def _job(root: Path, name: str, overrides: list[str] | None, metrics: dict | str | None) -> Path:
    """A job dir as train.py -m leaves it: .hydra/overrides.yaml (unless None), metrics.json (a dict,
    raw text, or None for a killed job)."""
    job = root / name
    job.mkdir(parents=True)
    if overrides is not None:
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    # a value with a space, as Hydra records `+tag='a b'` typed in a shell
    _job(root, "0", ["+tag=a\\ b", "init=xavier", "optim.lr=1e-3"], {"status": "ok", "val/mAP": 0.25})
    _job(root, "1", ["+tag=a c", "init=kaiming", "optim.lr=1e-3"], {"status": "ok", "val/mAP": 0.2})
    _job(root, "2", ["+tag='a b'", "init=orthogonal", "optim.lr=1e-3"],
         {"status": "failed", "error": "ValueError: boom", "overrides": ["+tag=a b", "init=orthogonal"]})
    _job(root, "10", ["+tag=a b", "init=normal", "optim.lr=1e-3"],
         {"status": "diverged", "diverged": "val/mAUC 0.5 after 5 epochs", "val/mAP": 0.01})
    _job(root, "3", ["+tag=a b", "init=uniform", "optim.lr=1e-3"], None)  # killed: no metrics.json yet
    _job(root, "4", ["+tag=a b", "init=default", "optim.lr=1e-3"], '{"status": "ok", "val/m')  # cut short
    (root / "0" / "checkpoints").mkdir()  # inside a run: part of it, not a run of its own
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a run")
    (root / "multirun.yaml").write_text("{}\n")
    return root


def test_runs_are_found_by_one_rule_in_job_order(sweep):
    runs = find_runs(sweep)
    assert [r.name for r in runs] == ["0", "1", "2", "3", "4", "10"]  # 10 after 4; notes/ and checkpoints/ are none
    assert not is_run_dir(sweep / "notes") and not is_run_dir(sweep) and is_run_dir(sweep / "0")
    assert [r.name for r in find_runs(sweep / "0")] == ["."]  # a run dir given itself
    assert find_runs(sweep / "notes") == []
    assert [r.name for r in find_runs(sweep, exclude=sweep / "1")] == ["0", "2", "3", "4", "10"]
    with pytest.raises(FileNotFoundError, match="no such directory"):
        find_runs(sweep / "missing")
    # a run made without Hydra's CLI (train.run composed in-process) is found by its metrics.json
    solo = _job(sweep.parent, "solo", None, {"status": "ok"})
    assert [(r.name, r.recorded, r.overrides) for r in find_runs(solo)] == [(".", False, ())]


def test_overrides_are_parsed_by_hydra_so_values_keep_their_spaces(sweep):
    run = load_run(sweep / "0", sweep)
    assert run.overrides == ("+tag=a\\ b", "init=xavier", "optim.lr=1e-3")
    assert run.params == {"tag": "a b", "init": "xavier", "optim.lr": "1e-3"}  # `+` dropped, numbers as typed
    # escaped, quoted or bare: one value
    assert {r.params["tag"] for r in find_runs(sweep) if r.name != "1"} == {"a b"}
    assert parse_override("++data.root=/data/my set") == ("data.root", "/data/my set")
    assert parse_override("model@net=fc") == ("model@net", "fc")
    assert parse_override("~callbacks.lr_monitor") == ("callbacks.lr_monitor", "(deleted)")
    assert parse_overrides(["x=1", "x=2"]) == {"x": "2"}  # set twice: the later wins, as in Hydra
    with pytest.raises(ValueError, match=r"job.yaml: 'x=\[1' is not a Hydra override"):
        parse_overrides(["x=[1"], "job.yaml")


def test_bad_overrides_file_is_named(tmp_path):
    job = _job(tmp_path, "0", None, None)
    (job / ".hydra").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text("init: xavier\n")
    with pytest.raises(ValueError, match=r"0/.hydra/overrides.yaml: expected a list of override strings"):
        load_run(job)


def test_status_of_finished_failed_diverged_killed_and_damaged_runs(sweep):
    runs = {r.name: r for r in find_runs(sweep)}
    assert runs["0"].status == "ok" and runs["0"].error is None and runs["0"].metrics["val/mAP"] == 0.25
    assert (runs["2"].status, runs["2"].error) == ("failed", "ValueError: boom")
    assert runs["10"].status == "diverged"
    assert (runs["3"].status, runs["3"].error, runs["3"].metrics) == ("failed", NO_METRICS, {})
    assert runs["4"].status == "failed" and runs["4"].error.startswith("unreadable metrics.json")


def test_swept_keys_differ_between_runs_and_count_a_missing_key(sweep):
    runs = find_runs(sweep)
    assert swept_keys(runs) == ["tag", "init"]  # optim.lr is the same everywhere
    assert swept_keys(runs[:1]) == [] and swept_keys([]) == []
    extra = _job(sweep, "11", ["+tag=a b", "init=xavier", "optim.lr=1e-3", "seed=2"], {"status": "ok"})
    # seed set in one run only: the others ran with its default, so it is compared too
    assert swept_keys([*runs[:1], load_run(extra, sweep)]) == ["seed"]


def test_checkpoints_of_a_run(tmp_path):
    job = _job(tmp_path, "0", ["init=xavier"], None)
    ckpts = job / "checkpoints"
    ckpts.mkdir()
    for name in ("best", "last", "swa"):
        (ckpts / f"{name}.ckpt").write_bytes(b"x")
    # an SWA run moved since: metrics.json names its averaged weights at the old place
    (job / "metrics.json").write_text(json.dumps({"status": "ok", "best_ckpt": "/gone/checkpoints/swa.ckpt",
                                                  "last_ckpt": "/gone/checkpoints/last.ckpt"}))
    run = load_run(job)
    assert run.checkpoint("best") == ckpts / "best.ckpt" and run.checkpoint("final") is None
    assert run.result_checkpoint() == ckpts / "swa.ckpt"
    (job / "metrics.json").write_text(json.dumps({"status": "ok", "best_ckpt": None,
                                                  "last_ckpt": str(ckpts / "last.ckpt")}))
    assert load_run(job).result_checkpoint() == ckpts / "best.ckpt"
    (ckpts / "best.ckpt").unlink()
    assert load_run(job).result_checkpoint() == ckpts / "last.ckpt"
    with pytest.raises(ValueError, match="checkpoint kind 'worst'"):
        run.checkpoint("worst")


def test_sweep_summary_lists_every_job_with_its_swept_values(sweep):
    rows = write_summary(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "10"]
    assert rows[0]["swept"] == ["+tag=a\\ b", "init=xavier"] and rows[0]["overrides"][2] == "optim.lr=1e-3"
    md = (sweep / "summary.md").read_text()
    assert "| 0 | +tag=a\\ b init=xavier | ok | 0.2500 |" in md
    assert f"| 3 | +tag=a b init=uniform | failed |  | {NO_METRICS} |" in md
    assert "| 10 | +tag=a b init=normal | diverged |" in md and "ValueError: boom" in md
    table = list(csv.DictReader(open(sweep / "summary.csv")))
    assert table[1]["overrides"] == "+tag=a c init=kaiming optim.lr=1e-3" and table[1]["val/mAP"] == "0.2"
    # written elsewhere on request, the sweep dir untouched
    out = sweep.parent / "out"
    before = (sweep / "summary.md").stat().st_mtime_ns
    write_summary(sweep, out)
    assert (out / "summary.md").read_text() == md and (sweep / "summary.md").stat().st_mtime_ns == before


def test_one_job_summary_shows_its_overrides(tmp_path):
    _job(tmp_path / "s", "0", ["init=xavier", "+tag=a b"], {"status": "ok"})
    assert collect(tmp_path / "s")[0]["swept"] == ["init=xavier", "+tag=a b"]

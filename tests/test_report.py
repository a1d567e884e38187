"""Reports: a run's curves from its event files, a figure per swept key from a sweep, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aer.report import CURVES, Run, find_runs, main, make_report, plot_swept_key, swept_keys
from conftest import run_script, train_overrides

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


@pytest.fixture(scope="module")
def sweep_dir(demo_root, tmp_path_factory) -> Path:
    """A two-job multirun over init, as a user types it."""
    tmp = tmp_path_factory.mktemp("sweep")
    # a multirun names each job's dir itself: paths.output_dir must come from Hydra
    overrides = [o for o in train_overrides(demo_root, tmp) if not o.startswith("paths.output_dir")]
    proc = run_script("train.py", "-m", "init=xavier,kaiming", *overrides, f"hydra.sweep.dir={tmp / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep"


def test_run_curves_are_per_epoch_and_match_metrics(trained_run):
    runs = find_runs(trained_run)
    assert len(runs) == 1 and runs[0].name == "."
    m = json.loads((trained_run / "metrics.json").read_text())
    for tag in CURVES:
        x, y = runs[0].curves[tag]
        # two epochs; log_hyperparams' placeholder 0.0 at step 0 is not a point
        assert x.tolist() == [1, 2], tag
        assert y[-1] == pytest.approx(m[tag], rel=1e-5), tag
    # no .hydra/ (composed in-process): the logger's hparams stand in for the overrides
    assert "init=xavier" in runs[0].overrides


def test_report_on_a_run_dir(trained_run, tmp_path):
    out = tmp_path / "report"
    paths = make_report(trained_run, out)
    assert [p.name for p in paths] == ["curves.png", "report.md"]
    assert _is_png(out / "curves.png")
    md = (out / "report.md").read_text()
    assert "![curves](curves.png)" in md
    assert "| val/mAP |" in md  # the run's metrics.json as a table


@pytest.mark.slow
def test_report_on_a_sweep(sweep_dir):
    paths = make_report(sweep_dir)
    out = sweep_dir / "report"
    assert {p.name for p in paths} == {"curves.png", "sweep_init.png", "report.md"}
    assert all(p.parent == out for p in paths)
    for p in paths:
        if p.suffix == ".png":
            assert _is_png(p), p
    assert swept_keys(find_runs(sweep_dir)) == ["init"]
    md = (out / "report.md").read_text()
    assert "![init](sweep_init.png)" in md
    # aer.sweep's job table, one row per job
    assert "| job | swept | status |" in md
    assert md.count("| ok |") == 2 and "init=xavier" in md and "init=kaiming" in md


@pytest.mark.slow
def test_cli_writes_to_out_and_fails_clearly_without_runs(sweep_dir, tmp_path, capsys):
    assert main([str(sweep_dir), "--out", str(tmp_path / "r")]) == 0
    assert _is_png(tmp_path / "r" / "sweep_init.png")
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    assert main([str(empty)]) == 1
    err = capsys.readouterr().err
    assert f"error: {empty}: no TensorBoard event files" in err
    assert main([str(tmp_path / "missing")]) == 1
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        make_report(empty)


def _fake(name: str, overrides: list[str], offset: float) -> Run:
    x = np.arange(1, 4)
    curves = {"val/mAP": (x, 0.1 * x + offset), "val/mAUC": (x, 0.5 + 0.1 * x + offset),
              "train/loss_epoch": (x, 0.5 / x + offset), "val/loss": (x, 0.6 / x + offset)}
    return Run(Path(name), name, overrides, curves)


def test_several_swept_keys_each_get_a_figure(tmp_path):
    runs = [_fake(str(i), [f"model={m}", f"data.batch_size={b}", "seed=1"], 0.01 * i)
            for i, (m, b) in enumerate([("fc", 500), ("fc", 100), ("attention", 500), ("attention", 100)])]
    runs.append(_fake("4", ["data.batch_size=100", "seed=1"], 0.05))  # model left at its default
    assert swept_keys(runs) == ["model", "data.batch_size"]
    for key in ("model", "data.batch_size"):
        path = plot_swept_key(runs, key, swept_keys(runs), tmp_path / f"{key}.png")
        assert _is_png(path)


@pytest.mark.slow
def test_runs_of_several_dirs_compared_by_chosen_keys(sweep_dir, trained_run, tmp_path, capsys):
    out = tmp_path / "both"
    paths = make_report([sweep_dir, trained_run], out, by=["init"])
    assert {p.name for p in paths} == {"curves.png", "sweep_init.png", "report.md"}
    md = (out / "report.md").read_text()
    # three runs, named by their dir so that the two sweeps' job 0s stay apart, labelled by init only
    rows = [line for line in md.splitlines() if line.startswith(f"| {sweep_dir.name}/") or
            line.startswith(f"| {trained_run.name} |")]
    assert len(rows) == 3, md
    assert sum("init=xavier" in r for r in rows) == 2 and sum("init=kaiming" in r for r in rows) == 1
    assert all("data.root" not in r for r in rows)
    with pytest.raises(ValueError, match="--out"):
        make_report([sweep_dir, trained_run])
    assert main([str(sweep_dir), str(trained_run), "--out", str(tmp_path / "x"), "--by", "init,model.nope"]) == 1
    err = capsys.readouterr().err
    assert "--by model.nope: no run has this override" in err and "init" in err


@pytest.mark.slow
def test_job_dirs_of_different_sweeps_keep_their_sweep_in_the_name(sweep_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(sweep_dir / "0", other / "0")
    make_report([sweep_dir / "0", other / "0"], tmp_path / "r", by=["init"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"| {sweep_dir.name}/0 |" in md and "| other/0 |" in md

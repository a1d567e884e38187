"""Reports: a run's curves from its event files, a figure per swept key from a sweep, clear errors,
and nothing written outside the report's output dir."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from aer.cli import report as main
from aer.report import CURVES, Traced, make_report, traced_runs
from aer.report.plots import plot_swept_key
from aer.runs import Run, swept_keys
from conftest import run_script, train_overrides

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def _events(tb: Path, offset: float, epochs: int = 3) -> None:
    """Event files as Lightning's TensorBoard logger writes them: an `epoch` scalar at every step that
    logs the epoch-level metrics, plus a step-0 hparams placeholder with no epoch beside it."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tb))
    w.add_scalar("val/mAP", 0.0, 0)
    for e in range(epochs):
        step = 10 * (e + 1)
        w.add_scalar("epoch", e, step)
        for i, tag in enumerate(CURVES):
            w.add_scalar(tag, offset + 0.1 * i + 0.01 * e, step)
    w.close()


def _job(root: Path, overrides: list[str], metrics: dict | None, offset: float | None) -> Path:
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (root / "metrics.json").write_text(json.dumps(metrics))
    if offset is not None:
        _events(root / "tensorboard", offset)
    return root


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory) -> Path:
    """A train.py -m sweep dir over init, its values with spaces in `+tag`, a failed job without
    curves, and the summary.md the sweep wrote when it ended."""
    root = tmp_path_factory.mktemp("fake") / "sweep"
    _job(root / "0", ["init=xavier", "+tag=a\\ b"], {"status": "ok", "val/mAP": 0.32}, 0.1)
    _job(root / "1", ["init=kaiming", "+tag=a\\ b"], {"status": "ok", "val/mAP": 0.33}, 0.2)
    _job(root / "2", ["init=orthogonal", "+tag=a\\ b"], {"status": "failed", "error": "ValueError: boom"}, None)
    (root / "multirun.yaml").write_text("{}\n")
    (root / "summary.md").write_text("| job | the sweep's own summary |\n")
    return root


def _listing(root: Path) -> dict[str, str]:
    """Every path under `root` with the sha256 of its bytes ("dir" for a folder)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def test_report_writes_only_into_its_output_dir(fake_sweep, tmp_path):
    before = _listing(fake_sweep)
    paths = make_report(fake_sweep, tmp_path / "out")
    assert _listing(fake_sweep) == before, "the input dir was written to"
    assert all(p.parent == tmp_path / "out" for p in paths)
    # the sweep's table, refreshed from its jobs, is the output dir's own summary
    assert "| 2 | init=orthogonal | failed |" in (tmp_path / "out" / "summary.md").read_text()
    # by default into DIR/report, and nowhere else in DIR
    paths = make_report(fake_sweep)
    after = _listing(fake_sweep)
    assert {k: v for k, v in after.items() if not k.startswith("report")} == before
    assert {p.name for p in paths} == {p.name for p in (fake_sweep / "report").iterdir()}
    shutil.rmtree(fake_sweep / "report")


def test_report_on_a_sweep(fake_sweep, tmp_path):
    out = tmp_path / "r"
    paths = make_report(fake_sweep, out)
    assert [p.name for p in paths] == ["curves.png", "summary.md", "summary.csv", "sweep_init.png", "report.md"]
    for p in paths:
        if p.suffix == ".png":
            assert _is_png(p), p
    traced = traced_runs(fake_sweep)
    assert [t.run.name for t in traced] == ["0", "1"]  # the failed job logged no curves
    assert swept_keys([t.run for t in traced]) == ["init"]
    x, y = traced[0].curves["val/mAP"]
    assert x.tolist() == [1, 2, 3] and y.tolist() == pytest.approx([0.3, 0.31, 0.32])  # step 0 is not a point
    md = (out / "report.md").read_text()
    assert "![init](sweep_init.png)" in md and "swept: `init`." in md
    # aer.sweep's job table, one row per job, failed ones included
    assert "| job | swept | status |" in md
    assert md.count("| ok |") == 2 and "| 2 | init=orthogonal | failed |" in md and "ValueError: boom" in md


def test_values_with_spaces_label_the_runs(fake_sweep, tmp_path):
    other = tmp_path / "other"
    _job(other / "0", ["init=xavier", "+tag=c\\ d"], {"status": "ok"}, 0.3)
    make_report([fake_sweep, other], tmp_path / "r", by=["tag"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| sweep/0 | tag=a b |" in md and "| other/0 | tag=c d |" in md


def test_cli_writes_to_out_and_fails_clearly_without_runs(fake_sweep, tmp_path, capsys):
    assert main([str(fake_sweep), "--out", str(tmp_path / "r")]) == 0
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
    assert not (empty / "report").exists()


def _fake(name: str, overrides: list[str], offset: float) -> Traced:
    from aer.runs import parse_overrides

    x = np.arange(1, 4)
    curves = {"val/mAP": (x, 0.1 * x + offset), "val/mAUC": (x, 0.5 + 0.1 * x + offset),
              "train/loss_epoch": (x, 0.5 / x + offset), "val/loss": (x, 0.6 / x + offset)}
    return Traced(Run(Path(name), name, tuple(overrides), parse_overrides(overrides)), curves)


def test_several_swept_keys_each_get_a_figure(tmp_path):
    traced = [_fake(str(i), [f"model={m}", f"data.batch_size={b}", "seed=1"], 0.01 * i)
              for i, (m, b) in enumerate([("fc", 500), ("fc", 100), ("attention", 500), ("attention", 100)])]
    traced.append(_fake("4", ["data.batch_size=100", "seed=1"], 0.05))  # model left at its default
    keys = swept_keys([t.run for t in traced])
    assert keys == ["model", "data.batch_size"]
    for key in keys:
        assert _is_png(plot_swept_key(traced, key, keys, tmp_path / f"{key}.png"))


def test_run_curves_are_per_epoch_and_match_metrics(trained_run, tmp_path):
    traced = traced_runs(trained_run)
    assert len(traced) == 1 and traced[0].run.name == "."
    m = json.loads((trained_run / "metrics.json").read_text())
    for tag in CURVES:
        x, y = traced[0].curves[tag]
        # two epochs; log_hyperparams' placeholder 0.0 at step 0 is not a point
        assert x.tolist() == [1, 2], tag
        assert y[-1] == pytest.approx(m[tag], rel=1e-5), tag
    # no .hydra/ (composed in-process): the logger's hparams stand in for the overrides
    assert "init=xavier" in traced[0].run.overrides and traced[0].run.params["init"] == "xavier"

    out = tmp_path / "report"
    paths = make_report(trained_run, out)
    assert [p.name for p in paths] == ["curves.png", "report.md"]
    assert _is_png(out / "curves.png")
    md = (out / "report.md").read_text()
    assert "![curves](curves.png)" in md and "Hyperparameters: `" in md
    assert "| val/mAP |" in md  # the run's metrics.json as a table


def test_runs_of_several_dirs_compared_by_chosen_keys(fake_sweep, trained_run, tmp_path, capsys):
    out = tmp_path / "both"
    paths = make_report([fake_sweep, trained_run], out, by=["init"])
    assert {p.name for p in paths} == {"curves.png", "sweep_init.png", "report.md"}  # no one sweep: no summary
    md = (out / "report.md").read_text()
    # three runs, named by their dir so that the two sweeps' job 0s stay apart, labelled by init only
    rows = [line for line in md.splitlines() if line.startswith(f"| {fake_sweep.name}/") or
            line.startswith(f"| {trained_run.name} |")]
    assert len(rows) == 3, md
    assert sum("init=xavier" in r for r in rows) == 2 and sum("init=kaiming" in r for r in rows) == 1
    assert all("data.root" not in r for r in rows)
    with pytest.raises(ValueError, match="--out"):
        make_report([fake_sweep, trained_run])
    assert main([str(fake_sweep), str(trained_run), "--out", str(tmp_path / "x"), "--by", "init,model.nope"]) == 1
    err = capsys.readouterr().err
    assert "--by model.nope: no run has this override" in err and "init" in err


def test_job_dirs_of_different_sweeps_keep_their_sweep_in_the_name(fake_sweep, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(fake_sweep / "0", other / "0")
    make_report([fake_sweep / "0", other / "0"], tmp_path / "r", by=["init"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"| {fake_sweep.name}/0 |" in md and "| other/0 |" in md


@pytest.mark.slow
def test_report_on_a_real_sweep(demo_root, tmp_path):
    """A two-job multirun over init, as a user types it, then the report: its job table and figures."""
    overrides = [o for o in train_overrides(demo_root, tmp_path) if not o.startswith("paths.output_dir")]
    proc = run_script("train.py", "-m", "init=xavier,kaiming", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    before = _listing(sweep)
    paths = make_report(sweep, tmp_path / "out")
    assert _listing(sweep) == before
    assert {p.name for p in paths} == {"curves.png", "summary.md", "summary.csv", "sweep_init.png", "report.md"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("| ok |") == 2 and "init=xavier" in md and "init=kaiming" in md
    for t in traced_runs(sweep):
        m = json.loads((t.run.dir / "metrics.json").read_text())
        assert t.curves["val/mAP"][1][-1] == pytest.approx(m["val/mAP"], rel=1e-5)

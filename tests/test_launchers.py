"""Sweeps in parallel: `hydra/launcher=joblib` runs jobs side by side on this machine;
`hydra/launcher=submitit_local` runs them as submitit jobs (as on SLURM, minus the cluster);
`hydra/launcher=submitit_slurm` and aer's `slurm_ddp` preset write the sbatch script we expect.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest

from conftest import CONF, TINY, compose_cfg, run_script

JOBLIB = "hydra_plugins.hydra_joblib_launcher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher"
MISSING = "the Hydra launcher plugins are not installed: pip install -e '.[scale]' (or '.[test]')"

# one short epoch per job, no TensorBoard or LR monitor: the launchers are under test, not training
JOB_ARGS = ("data.convert_workers=1", f"data.demo.clips={TINY}", "data.demo.eval_clips=300", "data.batch_size=100",
            "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "~logger")


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def _sweep(tmp_path: Path, *args: str) -> Path:
    proc = run_script("train.py", "-m", *args, *JOB_ARGS, f"paths.log_dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    sweeps = list((tmp_path / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    (sweeps[0] / "output.txt").write_text(proc.stdout + proc.stderr)
    return sweeps[0]


def _summary(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _jobs_ok(sweep: Path, n: int) -> list[dict]:
    metrics = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(n)]
    assert [m["status"] for m in metrics] == ["ok"] * n, metrics
    assert all(0 < m["val/mAP"] <= 1 for m in metrics)
    # the sweep summary (aer.sweep.SweepSummary, a Hydra callback) lists every job
    rows = _summary(sweep)
    assert [r["job"] for r in rows] == [str(i) for i in range(n)]
    assert [r["status"] for r in rows] == ["ok"] * n
    assert (sweep / "summary.md").exists()
    return metrics


@pytest.mark.slow
def test_joblib_runs_two_jobs_side_by_side(demo_root, tmp_path):
    pytest.importorskip(JOBLIB, reason=MISSING)
    sweep = _sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2",
                   f"data.root={demo_root}")
    assert "Joblib.Parallel(n_jobs=2" in (sweep / "output.txt").read_text()
    metrics = _jobs_ok(sweep, 2)
    assert metrics[0]["val/mAP"] != metrics[1]["val/mAP"], "each job runs its own seed"
    # side by side: two worker processes ran one job each, and their jobs' wall-clock intervals (from
    # each worker's start, timing.json) overlap; training intervals alone are too short on demo data
    timings = [json.loads((sweep / str(i) / "timing.json").read_text()) for i in range(2)]
    assert timings[0]["pid"] != timings[1]["pid"], timings
    spans = [(t["began_at"], t["ended_at"]) for t in timings]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans


@pytest.mark.slow
def test_submitit_local_runs_a_sweep_job(demo_root, tmp_path):
    """The submitit path SLURM takes (pickled job, separate process, logs under .submitit), run locally."""
    pytest.importorskip(SUBMITIT, reason=MISSING)
    sweep = _sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "seed=1",
                   f"data.root={demo_root}")
    _jobs_ok(sweep, 1)
    logs = list((sweep / ".submitit").glob("*/*_0_log.out"))
    assert logs, "submitit ran the job and kept its logs"
    assert list((sweep / ".submitit").glob("*/*_0_result.pkl"))


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> None:
    """`srun` and `sbatch` on PATH: submitit's SLURM executor only checks that they exist."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "sbatch"):
        p = bin_dir / name
        p.write_text("#!/bin/sh\nexit 1\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _sbatch_script(cfg, folder: Path) -> str:
    """The sbatch file the submitit_slurm launcher would submit, built as its `launch` builds it."""
    import hydra.utils
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(folder))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    inner = getattr(executor, "_executor", None)
    if not hasattr(inner, "_make_submission_file_text"):
        pytest.skip("this submitit version builds its sbatch script differently")
    return inner._make_submission_file_text("python -u -m submitit.core._submit FOLDER", "uid")


def test_submitit_slurm_sweep_composes(tmp_path, fake_slurm):
    pytest.importorskip(SUBMITIT, reason=MISSING)
    cfg = _compose_with_hydra(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=cpu",
                               "hydra.launcher.cpus_per_task=4", "hydra.launcher.mem_gb=16",
                               "hydra.launcher.timeout_min=120", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    script = _sbatch_script(cfg, tmp_path / "sweep" / ".submitit" / "%j")
    for flag in ("--partition=cpu", "--cpus-per-task=4", "--mem=16GB", "--time=120", "--ntasks-per-node=1"):
        assert f"#SBATCH {flag}" in script, (flag, script)


def test_slurm_ddp_preset_sizes_the_allocation_from_the_trainer(tmp_path, fake_slurm):
    """aer's hydra/launcher=slurm_ddp: one SLURM task per GPU, on trainer.num_nodes nodes."""
    pytest.importorskip(SUBMITIT, reason=MISSING)
    cfg = _compose_with_hydra(["hydra/launcher=slurm_ddp", "trainer=ddp", "trainer.devices=4",
                               "trainer.num_nodes=2", "hydra.launcher.partition=gpu",
                               f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    script = _sbatch_script(cfg, tmp_path / "sweep" / ".submitit" / "%j")
    for flag in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--signal=USR2@120"):
        assert f"#SBATCH {flag}" in script, (flag, script)


def test_best_ensemble_members_are_their_experiments_with_what_the_member_adds():
    """Each member=NAME job of experiment=best_ensemble is the experiment its member file names, with
    that file's own keys on top, and nothing of best_ensemble itself; the sweep trains every member."""
    from omegaconf import OmegaConf

    members = sorted(p.stem for p in (CONF / "member").glob("*.yaml"))
    ensemble = OmegaConf.load(CONF / "experiment" / "best_ensemble.yaml")
    assert sorted(str(ensemble.hydra.sweeper.params.member).split(",")) == members
    assert str(ensemble.hydra.sweeper.params.seed) == "1,2,3"
    for member in members:
        spec = OmegaConf.load(CONF / "member" / f"{member}.yaml")
        (base,) = [d.removeprefix("/experiment/") for d in spec.pop("defaults")]
        expected = OmegaConf.merge(compose_cfg("train", [f"experiment={base}", "seed=2"]), spec)
        job = compose_cfg("train", ["experiment=best_ensemble", f"member={member}", "seed=2"])
        assert OmegaConf.to_container(job) == OmegaConf.to_container(expected), member


@pytest.mark.slow
def test_best_ensemble_trains_its_members_and_ensembles_them_in_one_command(demo_root, tmp_path):
    """experiment=best_ensemble: a multirun without -m over its members, then aer.sweep.EnsembleSweep on
    the dev split."""
    args = ("experiment=best_ensemble", "hydra.sweeper.params.seed='1'", "swa.epoch_start=1",
            *JOB_ARGS, "trainer.max_epochs=2", "hydra.callbacks.ensemble.replicates=20")
    proc = run_script("train.py", *args, f"data.root={demo_root}", f"paths.log_dir={tmp_path}", timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    _jobs_ok(sweep, 2)
    ens = json.loads((sweep / "ensemble" / "ensemble.json").read_text())
    assert ens["split"] == "val" and len(ens["members"]) == 2
    assert [Path(m["ckpt"]).parts[-3] for m in ens["members"]] == ["0", "1"]
    assert [m["model"] for m in ens["members"]] == ["multiattention", "transformer"]
    assert ens["members"][0]["ckpt"].endswith("swa.ckpt")  # experiment=best: SWA's averaged weights
    assert not ens["members"][1]["ckpt"].endswith("swa.ckpt")  # experiment=transformer: no SWA
    metrics = json.loads((sweep / "ensemble" / "metrics.json").read_text())
    assert metrics["val/mAP_ci_low"] <= metrics["val/mAP"] <= metrics["val/mAP_ci_high"]
    assert "ensemble of 2 on split=val" in proc.stdout


@pytest.mark.parametrize("mode, split, select", [("dev", "val", "greedy"), ("final", "eval", "none")])
def test_the_sweep_ensemble_scores_dev_sweeps_on_val_and_final_ones_on_eval(tmp_path, mode, split, select):
    from omegaconf import OmegaConf

    from aer.runs import is_run_dir
    from aer.sweep import EnsembleSweep

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "paths": {"log_dir": "/logs"},
                            "data": {"mode": mode, "root": "/data", "cache_dir": None}})
    args = EnsembleSweep(select="greedy", replicates=None).command(cfg)
    assert f"split={split}" in args and f"select={select}" in args  # greedy selection needs the dev split
    assert f"hydra.run.dir={tmp_path / 'ensemble'}" in args and "data.root=/data" in args
    assert not any(a.startswith(("data.cache_dir", "bootstrap.")) for a in args)
    out = tmp_path / "ensemble"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert is_run_dir(out)
    (out / "ensemble.json").write_text("{}")
    assert not is_run_dir(out), "the sweep's ensemble is not one of its training jobs"

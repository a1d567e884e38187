"""Optuna search (`hparams_search=...`, aer's sweeper over Optuna's ask-and-tell API): the search space,
a study that prunes, survives a SIGKILL and continues, its summary and best overlay, and parallel trials."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONF, ROOT, TINY, config, run_script, train_overrides

optuna = pytest.importorskip("optuna", reason="Optuna is not installed: pip install -e '.[track]' (or '.[test]')")

EPOCHS = 8
# a killed worker's trial is taken for dead 3 s after its last heartbeat (the default, 60 s, is for real studies)
HEARTBEAT = ("hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3")


def _study_args(demo_root: Path, sweep: Path, n_trials: int, *extra: str) -> list[str]:
    """A small fc study on the tiny demo set, pruned from the first epoch on once one trial is complete."""
    return ["-m", "hparams_search=fc_optuna", f"data.root={demo_root}", f"data.demo.clips={TINY}",
            "data.demo.eval_clips=300", "data.convert_workers=1", "trainer.enable_progress_bar=false", "~logger",
            f"trainer.max_epochs={EPOCHS}", "model.hidden=choice([16],[32])",
            "optim.lr=choice(0.003,0.000001)", "data.batch_size=choice(50)", f"hydra.sweep.dir={sweep}",
            f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra.sweeper.pruner.n_warmup_steps=0", *HEARTBEAT, *extra]



# Queued before the study starts (Optuna's enqueue_trial): a learning rate too small to learn anything
# (the trial the test kills, whose re-run the pruner must stop), then a good one.
STALLED = {"optim.lr": 0.000001, "model.hidden": "[16]", "data.batch_size": 50, "model.dropout": 0.0,
           "augment.mixup_alpha": 0.0}
LEARNS = {**STALLED, "optim.lr": 0.003}


def _load(sweep: Path):
    return optuna.load_study(study_name="fc_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")


def _summary(sweep: Path) -> dict[str, dict]:
    with open(sweep / "summary.csv", newline="") as f:
        return {r["job"]: r for r in csv.DictReader(f)}


def test_search_space_from_override_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from aer.search import split_arguments

    space, fixed = split_arguments({"optim.lr": "tag(log, interval(1e-4, 1e-2))", "model.hidden": "choice([8],[8,8])"},
                                   ["data.batch_size=range(100,501,200)", "model=choice(fc,attention)", "seed=3",
                                    "optim.lr=interval(0.001,0.01)"])
    dims = {d.key: d for d in space}
    assert fixed == ["seed=3"]
    assert dims["optim.lr"].distribution == FloatDistribution(0.001, 0.01)  # the command line's replaces the config's
    assert dims["data.batch_size"].distribution == IntDistribution(100, 500, step=200)
    assert dims["model"].distribution == CategoricalDistribution(["fc", "attention"])
    assert dims["model.hidden"].override("[8,8]") == "model.hidden=[8,8]"
    assert dims["model"].override("fc") == "model=fc" and dims["optim.lr"].override(0.002) == "optim.lr=0.002"
    with pytest.raises(ValueError, match="hydra.sweeper.params.seed"):
        split_arguments({"seed": "glob(*)"}, [])


def test_job_outcomes_become_trial_states():
    """What aer.search.tell records for a job: its metric, PRUNED, or FAIL (raised, failed, or no number)."""
    from hydra.core.utils import JobReturn, JobStatus

    from aer.search import tell

    study = optuna.create_study(direction="maximize")
    outcomes = [JobReturn(status=JobStatus.COMPLETED, _return_value={"status": "ok", "val/mAP": 0.25}),
                JobReturn(status=JobStatus.COMPLETED, _return_value={"status": "pruned", "val/mAP": 0.1}),
                JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("out of memory")),
                JobReturn(status=JobStatus.COMPLETED, _return_value=None),  # aer.entry.task recorded a failure
                JobReturn(status=JobStatus.COMPLETED, _return_value={"status": "ok", "val/mAP": float("nan")})]
    for ret in outcomes:
        trial = study.ask()
        trial.report(0.1, step=0)
        tell(study, trial, ret, "val/mAP")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "FAIL", "FAIL", "FAIL"]
    assert study.best_value == 0.25


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml")))
def test_hparams_search_configs_compose(name):
    import hydra.utils
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.plugins.sweeper import Sweeper
    from omegaconf import OmegaConf

    from aer.search import split_arguments

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert issubclass(hydra.utils.get_class(sweeper._target_), Sweeper)
    assert sweeper.study_name == name, "one study per search config, named after its file"
    assert isinstance(hydra.utils.instantiate(sweeper.pruner), optuna.pruners.BasePruner)
    keys = {d.key for d in split_arguments(sweeper.params, [])[0]}
    assert {"optim.lr", "model.hidden", "model.dropout", "data.batch_size", "augment.mixup_alpha"} <= keys
    assert isinstance(hydra.utils.instantiate(cfg.callbacks.optuna_pruning), pl.Callback)
    stable = OmegaConf.to_yaml(cfg.hydra.sweep, resolve=False)
    assert "${now:" not in stable, "a stable sweep dir: the same command finds its study again"


def _kill_during_first_trial(args: list[str], sweep: Path) -> None:
    """Starts the study and SIGKILLs it once trial 0 has finished an epoch (its last.ckpt exists)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and not (sweep / "0/checkpoints/last.ckpt").exists():
            time.sleep(0.02)
        assert proc.poll() is None, "the study ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (sweep / "0" / "metrics.json").exists(), "trial 0 finished before the kill: raise EPOCHS"


@pytest.mark.slow
def test_study_prunes_survives_a_kill_and_writes_a_best_overlay_that_reruns(demo_root, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    queued = optuna.create_study(study_name="fc_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}",
                                 direction="maximize")
    queued.enqueue_trial(STALLED)
    queued.enqueue_trial(LEARNS)
    args = _study_args(demo_root, sweep, 3)
    _kill_during_first_trial(args, sweep)
    assert _load(sweep).trials[0].state.name == "RUNNING"

    proc = run_script("train.py", *args)  # the same command continues the study
    assert proc.returncode == 0, proc.stderr[-4000:]
    study = _load(sweep)
    states = [t.state.name for t in study.trials]
    # the killed trial; the queued good one; the killed one again, now pruned; one the sampler drew
    assert states[:3] == ["FAIL", "COMPLETE", "PRUNED"] and len(states) == 4, states
    assert study.trials[0].params == study.trials[2].params == STALLED
    assert study.trials[3].params not in (STALLED, LEARNS), "a continued study draws new parameters"

    rows = _summary(sweep)
    assert "interrupted" in rows["0"]["error"]
    for t in study.trials[1:]:
        m = json.loads((sweep / str(t.number) / "metrics.json").read_text())
        row = rows[str(t.number)]
        assert (row["state"], row["status"]) == (t.state.name, m["status"])
        assert (float(row["value"]) if row["value"] else None) == pytest.approx(t.value, abs=1e-12)
        reported = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        assert len(reported) == m["epochs"] and reported[-1] == pytest.approx(m["val/mAP"], abs=1e-7)
        # a pruned trial stops at the epoch it was pruned; a complete one trains every epoch
        assert m["status"] == ("pruned" if t.state.name == "PRUNED" else "ok")
        assert m["epochs"] == EPOCHS or t.state.name == "PRUNED"

    best = study.best_trial
    overlay = sweep / "experiment" / "fc_optuna_best.yaml"
    text = overlay.read_text()
    assert text.startswith("# @package _global_") and "report_fc" in text and "hparams_search" not in text
    rerun = tmp_path / "rerun"
    proc = run_script("train.py", "--config-dir", str(sweep), "experiment=fc_optuna_best", f"data.root={demo_root}",
                      f"hydra.run.dir={rerun}", f"paths.log_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((rerun / "metrics.json").read_text())
    assert m["val/mAP"] == pytest.approx(best.value, abs=1e-7), "the overlay trains the best trial's model again"

    proc = run_script("train.py", *_study_args(demo_root, sweep, 3, "seed=5"))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert last == "error: study 'fc_optuna' was started with seed=(not set), this command has seed=5: run the " \
                   "same command to continue it, or give a new hydra.sweeper.study_name (or hydra.sweep.dir)", last
    # where it runs is not what it trains: another thread count continues the study
    assert run_script("train.py", *_study_args(demo_root, sweep, 3, "threads=1")).returncode == 0


@pytest.mark.slow
def test_parallel_trials_with_joblib(demo_root, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[scale]' (or '.[test]')")
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", *_study_args(demo_root, sweep, 2, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                               "threads=1", "hydra.sweeper.pruner.n_startup_trials=5"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    study = _load(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    spans = []
    for t in study.trials:
        m = json.loads((sweep / str(t.number) / "metrics.json").read_text())
        assert m["val/mAP"] == pytest.approx(t.value, abs=1e-12)
        end = (sweep / str(t.number) / "metrics.json").stat().st_mtime
        spans.append((end - m["seconds"], end))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], f"the two trials ran side by side: {spans}"


def test_pruning_callback_is_inert_outside_a_study(demo_root, tmp_path):
    """hparams_search's callback in a plain run (no -m): training is not touched."""
    from aer.train import run

    result = run(config("train", train_overrides(demo_root, tmp_path, "+callbacks.optuna_pruning._target_="
                                                      "aer.search.OptunaPruning")))
    assert result["status"] == "ok" and result["epochs"] == 2

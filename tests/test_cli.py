"""aer.cli in this process: a failed job is recorded in metrics.json and reported in one line (the root
scripts themselves run in the slow CLI tests); every command's --help."""

from __future__ import annotations

import copy
import json
import logging
import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError

from aer.cli import boundary, job
from aer.errors import one_line
from conftest import CONF


@pytest.fixture
def hydra_job(tmp_path):
    """Hydra's runtime config as @hydra.main sets it for a run in tmp_path; a function to make it a sweep's job."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["ckpt=x.ckpt", "split=val"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.mode = RunMode.RUN

    def as_multirun_job(num: int) -> None:
        job = copy.deepcopy(cfg)
        with open_dict(job):
            job.hydra.mode, job.hydra.job.num = RunMode.MULTIRUN, num
        HydraConfig.instance().set_config(job)

    HydraConfig.instance().set_config(copy.deepcopy(cfg))
    yield as_multirun_job
    HydraConfig.instance().cfg = None


def _recorded(tmp_path) -> dict:
    return json.loads((tmp_path / "metrics.json").read_text())


def _raise(e: BaseException):
    def fn(config):
        raise e
    return fn


def _job(run):
    """`run` as aer.cli runs an evaluate.py job on its built config."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["ckpt=x.ckpt", "split=val", "paths.output_dir=/tmp"])
    return job(run, "evaluate", cfg)


def test_a_user_error_exits_in_one_line_and_is_recorded(hydra_job, tmp_path, capsys, caplog):
    with pytest.raises(SystemExit) as done:
        _job(_raise(ValueError("data.mode='x': expected one of dev, final")))
    assert done.value.code == 1
    assert capsys.readouterr().err == "error: data.mode='x': expected one of dev, final\n"
    assert _recorded(tmp_path) == {"status": "failed", "error": "ValueError: data.mode='x': expected one of dev, final",
                                   "overrides": ["ckpt=x.ckpt", "split=val"]}
    assert "Traceback" not in caplog.text


def test_an_instantiation_error_is_reported_as_its_cause(hydra_job, tmp_path, capsys):
    wrapped = InstantiationException("Error in call to target 'aer.data.datamodule.AudioSetDataModule'")
    wrapped.__cause__ = ValueError("data.batch_size=0: expected a positive integer")
    with pytest.raises(SystemExit):
        _job(_raise(wrapped))
    assert capsys.readouterr().err == "error: data.batch_size=0: expected a positive integer\n"
    assert _recorded(tmp_path)["error"] == "ValueError: data.batch_size=0: expected a positive integer"


def test_a_bug_is_logged_with_its_traceback(hydra_job, tmp_path, capsys, caplog):
    with caplog.at_level(logging.ERROR, logger="aer"), pytest.raises(SystemExit):
        _job(_raise(RuntimeError("boom")))
    assert "Traceback" in caplog.text and "RuntimeError: boom" in caplog.text
    assert capsys.readouterr().err == "error: boom\n"


def test_in_a_sweep_the_job_fails_and_the_sweep_goes_on(hydra_job, tmp_path, caplog):
    hydra_job(3)
    with caplog.at_level(logging.ERROR, logger="aer"):
        assert _job(_raise(FileNotFoundError("no such checkpoint"))) is None
    assert "job 3 failed: no such checkpoint" in caplog.text
    assert _recorded(tmp_path)["status"] == "failed"
    diverged = {"status": "diverged", "diverged": "train/loss rose"}
    with caplog.at_level(logging.ERROR, logger="aer"):
        assert _job(lambda cfg: diverged) == diverged  # its metrics.json stays the run's own
    assert "job 3 failed: the run diverged: train/loss rose" in caplog.text
    assert _job(lambda cfg: {"status": "ok"}) == {"status": "ok"}


def test_one_line_folds_hydra_and_omegaconf_messages():
    e = ConfigKeyError("Key 'colour' is not in struct\n    full_key: data.colour\n    object_type=dict")
    assert one_line(e) == "Key 'colour' is not in struct"
    outer = InstantiationException("Error in call to target 'X':\nfirst line\nsecond line")
    outer.__cause__ = ValueError("the cause")
    assert one_line(outer) == "Error in call to target 'X': first line second line (the cause)"
    assert one_line(ValueError("")) == "ValueError"


def test_cli_reports_what_hydra_rejects_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def main():
        assert os.environ["HYDRA_FULL_ERROR"] == "1"  # so that Hydra raises instead of printing
        OmegaConf.create({"a": 1}, flags={"struct": True}).b  # noqa: B018 — the key error is the point

    with pytest.raises(SystemExit) as done:
        boundary(main)
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Key 'b' is not in struct") and err.count("\n") == 1
    assert "HYDRA_FULL_ERROR" not in os.environ


@pytest.mark.slow  # a process per command
@pytest.mark.parametrize("argv", [["train.py"], ["evaluate.py"], ["ensemble.py"], ["-m", "aer.predict"],
                                  ["-m", "aer.export"], ["-m", "aer.thresholds"], ["-m", "aer.data"],
                                  ["-m", "aer.data", "convert"], ["-m", "aer.report"], ["-m", "aer.compare"]])
def test_every_commands_help(argv, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    command = [str(ROOT / argv[0])] if argv[0].endswith(".py") else argv
    proc = subprocess.run([sys.executable, *command, "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert ("powered by Hydra" in proc.stdout) != ("usage:" in proc.stdout), proc.stdout[:500]


def test_a_signal_whose_raise_a_finalizer_swallowed_still_ends_the_command_as_interrupted(monkeypatch, capsys):
    import signal

    import aer.cli

    monkeypatch.setattr(aer.cli, "_signalled", [])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    class Finalized:
        def __del__(self):  # where a signal can land: Python prints the handler's raise and goes on
            aer.cli._interrupt(signal.SIGTERM, None)

    try:
        with pytest.raises(SystemExit) as e:
            boundary(lambda: Finalized())
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert e.value.code == 128 + signal.SIGTERM
    assert "error: interrupted by SIGTERM" in capsys.readouterr().err

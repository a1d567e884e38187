"""Where files go by default (README "Where files go", conf/paths/default.yaml), and the overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from aer.paths import aer_home
from conftest import ROOT, compose_cfg


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("AER_HOME", "AER_DATA_DIR", "AER_LOG_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def _paths(config_name: str = "train", extra: tuple[str, ...] = ()):
    cfg = compose_cfg(config_name, ["paths.output_dir=unused", *extra])
    return Path(cfg.paths.data_dir), Path(cfg.paths.log_dir), cfg


def test_defaults_are_outside_the_checkout(clean_env):
    data_dir, log_dir, cfg = _paths()
    assert aer_home() == clean_env / "home" / ".cache" / "aer"
    assert data_dir == aer_home() / "data"
    assert Path(cfg.data.root) == aer_home() / "data" / "demo-20000-0"
    assert log_dir == clean_env / "work" / "outputs"  # Hydra's convention: under the current directory
    for path in (data_dir, log_dir):
        assert ROOT not in path.parents


def test_environment_overrides(clean_env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "xdg"))
    assert aer_home() == clean_env / "xdg" / "aer"
    monkeypatch.setenv("AER_HOME", str(clean_env / "aerhome"))
    assert aer_home() == clean_env / "aerhome"
    assert _paths()[0] == clean_env / "aerhome" / "data"
    monkeypatch.setenv("AER_DATA_DIR", str(clean_env / "data"))
    monkeypatch.setenv("AER_LOG_DIR", str(clean_env / "logs"))
    data_dir, log_dir, cfg = _paths()
    assert (data_dir, log_dir) == (clean_env / "data", clean_env / "logs")
    assert Path(cfg.data.root) == clean_env / "data" / "demo-20000-0"


def test_caches_live_in_aer_home(clean_env, monkeypatch):
    """(The framework study's venvs too: tests/studies/test_frameworks.py.)"""
    from aer.data.datamodule import default_cache_dir

    monkeypatch.setenv("AER_HOME", str(clean_env / "aerhome"))
    real = clean_env / "audioset"
    real.mkdir()
    assert default_cache_dir(real).parent == clean_env / "aerhome"


def test_packaged_configs_are_the_checkouts(clean_env):
    """pkg://aer.conf (the console scripts, python -m aer.X) composes the same files as conf/."""
    with initialize_config_module(config_module="aer.conf", version_base="1.3"):
        packaged = compose(config_name="train", overrides=["paths.output_dir=unused", "model=attention"])
    assert packaged == compose_cfg("train", ["paths.output_dir=unused", "model=attention"])
    import aer.conf

    assert Path(aer.conf.__file__).resolve().parent == ROOT / "conf"

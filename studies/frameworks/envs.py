"""One Python per framework: this interpreter when the framework imports here, else a cached venv.

The venvs live under `$AER_HOME/frameworks/<name>` (default `~/.cache/aer/frameworks/<name>`) and
are built once: `python -m venv`, `pip install` of the framework's pins, an import check, then a
marker file holding the pins. A venv without the marker (a killed build) or with other pins is
built again; builds of the same venv by two processes take turns under a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from aer.files import write_json
from aer.paths import aer_home

# Pins that conflict with aer's own environment (numpy>=1.24 there; mxnet 1.9.1 needs numpy<1.24).
# jax 0.11+ needs Python >= 3.12: on 3.11 pip picks 0.10.x.
SPECS: dict[str, list[str]] = {
    "tensorflow": ["tensorflow-cpu==2.21.*", "keras==3.15.*"],
    "mxnet": ["mxnet==1.9.1", "numpy==1.23.5"],
    "jax": ["jax>=0.10,<0.13", "flax>=0.12,<0.13", "optax>=0.2,<0.3"],
}
MODULES: dict[str, list[str]] = {
    "torch": ["torch"], "aer": ["aer", "pytorch_lightning"], "tensorflow": ["tensorflow", "keras"],
    "mxnet": ["mxnet"], "jax": ["jax", "flax", "optax"],
}
MARKER = ".aer-venv.json"
INSTALL_TIMEOUT_S = 1800


def home() -> Path:
    return aer_home() / "frameworks"


def import_error(python: str | os.PathLike, modules: list[str], timeout: float = 300) -> str | None:
    """None when `python` imports every module; else the error's last line."""
    code = "".join(f"import {m}\n" for m in modules)
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {proc.returncode}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ready(venv: Path, spec: list[str]) -> bool:
    try:
        return json.loads((venv / MARKER).read_text()).get("spec") == spec
    except (OSError, ValueError):
        return False


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def build_venv(venv: Path, spec: list[str], modules: list[str], log: Callable[[str], None] = print) -> str | None:
    """Builds `venv` with `spec` installed unless it is already ready; None on success, else why not."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready(venv, spec):
            return None
        log(f"creating the venv {venv} (once; later runs reuse it): pip install {' '.join(spec) or '(nothing)'}")
        shutil.rmtree(venv, ignore_errors=True)
        steps = [[sys.executable, "-m", "venv", str(venv)]]
        if spec:
            steps.append([str(venv_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check", *spec])
        for cmd in steps:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return f"`{' '.join(cmd[2:4])}` took over {INSTALL_TIMEOUT_S} s"
            if proc.returncode:
                return f"`{' '.join(cmd[2:4])} ...` failed: {_last_line(proc.stderr + proc.stdout)}"
        err = import_error(venv_python(venv), modules)
        if err:
            return f"installed {' '.join(spec)} but the import fails: {err}"
        write_json(venv / MARKER, {"spec": spec, "modules": modules})
        log(f"venv {venv} ready")
    return None


def python_for(name: str, install: bool = True, log: Callable[[str], None] = print) -> tuple[str | None, str]:
    """(interpreter, where it came from) for framework `name`; (None, why not) when there is none."""
    modules = MODULES[name]
    err = import_error(sys.executable, modules)
    if err is None:
        return sys.executable, "this interpreter"
    if name not in SPECS:
        return None, f"{', '.join(modules)} not importable here: {err}"
    venv = home() / name
    if ready(venv, SPECS[name]) and import_error(venv_python(venv), modules) is None:
        return str(venv_python(venv)), f"venv {venv}"
    if not install:
        return None, f"{', '.join(modules)} not importable here ({err}) and no ready venv at {venv} (--no-install)"
    why = build_venv(venv, SPECS[name], modules, log)
    if why:
        return None, why
    return str(venv_python(venv)), f"venv {venv}"

"""aer from a built wheel: installed into a fresh venv and run from an unrelated directory through
its console scripts, it generates the demo data, trains, evaluates, ensembles and reports, writes
nothing inside site-packages or the checkout, and puts its files where README "Where files go" says.

The venv gets aer from the wheel alone; its dependencies (torch and the rest, too slow to install
again) come from this interpreter's site-packages through a .pth file, which adds those folders to
sys.path after the venv's own, without running their .pth files: the checkout's editable install
(a .pth hook there) stays out, so `import aer` can only find the wheel's copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

# What the build reads: pyproject's packages (aer*, hydra_plugins*), the configs aer/conf links to, the readme;
# and the checkout's studies and bench scripts beside them, which the build must leave out
SOURCES = ("pyproject.toml", "README.md", "aer", "conf", "hydra_plugins", "studies", "bench")
CLIPS = 400
TRAIN = [f"data.demo.clips={CLIPS}", "data.demo.eval_clips=200", "data.batch_size=100", "data.convert_workers=1",
         "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "threads=1"]


def _files(top: Path, prune: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file under `top` with its size and mtime; folders named in `prune` or hidden are skipped."""
    out = {}
    for d, dirs, names in os.walk(top):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x not in prune]
        for name in names:
            st = os.stat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), top)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, Path]:
    """A fresh venv holding the wheel built from this checkout: (its bin dir, its site-packages)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # built from a copy: `pip wheel` leaves build/ and *.egg-info beside the sources
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():  # symlinks kept: aer/conf is one
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(tmp / "dist")],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp / "dist").glob("aer-*.whl")
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (site / "_aer_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--compile", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return env_dir / "bin", site


def _env(bin_dir: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AER_HOME", "AER_DATA_DIR", "AER_LOG_DIR", "XDG_CACHE_HOME", "PYTHONPATH", "HYDRA_FULL_ERROR",
                        "VIRTUAL_ENV")}
    return {**env, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "MPLBACKEND": "Agg",
            "PYTHONWARNINGS": "ignore"}


def _run(cmd: list[str], cwd: Path, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr[-3000:]}"
    return r


def _one(pattern: str, top: Path) -> Path:
    found = sorted(top.glob(pattern))
    assert len(found) == 1, f"{top}/{pattern}: {found}"
    return found[0]


def test_wheel_runs_from_an_unrelated_directory(venv, tmp_path):
    bin_dir, site = venv
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = _env(bin_dir, home)
    imported = _run([str(bin_dir / "python"), "-c", "import aer, aer.conf; print(aer.__file__); "
                     "print(aer.conf.__file__)"], work, env).stdout.split()
    assert [Path(p).parent for p in imported] == [site / "aer", site / "aer" / "conf"]
    # site-packages with its __pycache__ (pip compiled the wheel's modules: a run writes none);
    # the checkout without (its tests run from source), nor its .venv, .git
    installed, checkout = _files(site), _files(ROOT, prune=("__pycache__",))

    _run(["aer-train", "-m", "seed=1,2", *TRAIN], work, env)
    sweep = _one("outputs/train/multiruns/*", work)
    assert (sweep / "summary.md").is_file()
    ckpts = [sweep / job / "checkpoints" / "last.ckpt" for job in ("0", "1")]
    assert all(c.is_file() for c in ckpts)
    _run(["aer-evaluate", f"ckpt={ckpts[0]}", "bootstrap.replicates=50"], work, env)
    evaluated = json.loads((_one("outputs/evaluate/runs/*", work) / "metrics.json").read_text())
    assert evaluated["status"] == "ok"
    _run(["aer-ensemble", f"sweep={sweep}", "split=val", "bootstrap.replicates=50"], work, env)
    assert (_one("outputs/ensemble/runs/*", work) / "ensemble.json").is_file()
    _run(["aer-report", str(sweep), "--out", str(work / "report")], work, env)
    assert (work / "report" / "report.md").is_file()
    _run(["aer-data", "demo", "small", "--clips", "20"], work, env)
    assert (work / "small" / "demo.json").is_file()
    bad = _run(["aer-train", "model=nope"], work, env, ok=False)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error:") and "model/nope" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr

    # The demo set aer made (with its caches beside it) is in $AER_HOME's default, ~/.cache/aer
    demo = home / ".cache" / "aer" / "data" / f"demo-{CLIPS}-0"
    assert (demo / "demo.json").is_file() and list((demo / "aer_cache").glob("*.h5"))
    assert sorted(p.name for p in work.iterdir()) == ["outputs", "report", "small"]
    assert _files(site) == installed, "files written inside site-packages"
    # new files only: the checkout's own files may be edited meanwhile by whoever works in it
    assert sorted(set(_files(ROOT, prune=("__pycache__",))) - set(checkout)) == [], "files written in the checkout"


def test_the_wheel_holds_the_framework_only(venv):
    """Not the checkout's studies (python -m studies.frameworks) nor its bench scripts, nor a command for them."""
    bin_dir, site = venv
    (record,) = site.glob("aer-*.dist-info/RECORD")
    files = [line.split(",")[0] for line in record.read_text().splitlines()]
    assert any(f.startswith("aer/") for f in files)
    assert [f for f in files if f.startswith(("studies/", "bench/", "aer/frameworks/"))] == []
    assert not (site / "studies").exists() and not (bin_dir / "aer-frameworks").exists()

"""The dashboards as a person sees them: one small sweep on the demo set (logger=[tensorboard,mlflow]),
served by TensorBoard and by MLflow's own server, looked at in headless Chromium driven by Playwright.

Chromium is Debian's (`apt-get install chromium`, which .ci/run does), Playwright and mlflow come with the
`test` extra. Without a browser the tests skip, saying what is missing; in CI (CI=true) they fail instead.
AER_WRITE_SCREENSHOTS=1 writes the screenshots docs/dashboards.md shows (docs/img/).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import ROOT, TINY

pytestmark = pytest.mark.slow

BROWSERS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
SHOTS = ROOT / "docs" / "img"
INITS, BATCHES = ("xavier", "kaiming"), (100, 200)
# what each job varied, as the sweep's command gave it: the runs' names in both dashboards
NAMES = [f"init={i},data.batch_size={b}" for i in INITS for b in BATCHES]


def browser_path() -> str:
    """Chromium's binary; a skip (outside CI) or a failure (CI=true) naming what is missing."""
    found = next((p for p in BROWSERS if os.access(p, os.X_OK)), None) or shutil.which("chromium")
    problem = None if found else f"no Chromium at {' or '.join(BROWSERS)} or on PATH (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = problem or "Playwright is not installed (pip install -e '.[test]')"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the dashboard tests need a browser in CI: {problem}", pytrace=False)
        pytest.skip(problem)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(name: str, cmd: list[str], url: str, log: Path, env: dict | None = None, wait: float = 120):
    """A dashboard server, up once `url` answers; stopped (its process group) after. It not answering is one
    line naming the server, the URL and its log."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
    try:
        deadline = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} before answering at {url} "
                                   f"(its log: {log}: {log.read_text()[-300:]!r})")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer at {url} within {wait:.0f} s (its log: {log})") from None
                time.sleep(0.5)
        yield url.rsplit("/", 1)[0] if url.endswith("/health") else url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def sweep(demo_root, tmp_path_factory) -> Path:
    """A 2x2 sweep of fc over init and batch size, two epochs a job, TensorBoard and MLflow logging."""
    base = tmp_path_factory.mktemp("dash")
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"init={','.join(INITS)}",
           f"data.batch_size={','.join(map(str, BATCHES))}", "model=fc", f"data.root={demo_root}",
           f"data.demo.clips={TINY}", "data.demo.eval_clips=300", "trainer.max_epochs=2",
           "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger=[tensorboard,mlflow]",
           f"hydra.sweep.dir={base / 'sweep'}"]
    env = {**os.environ, "AER_LOG_DIR": str(base / "logs"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = browser_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page, with the browser console's warnings and errors kept in `page.console`."""
    pg = browser.new_page(viewport={"width": 1400, "height": 760})
    pg.console = []
    pg.on("console", lambda m: pg.console.append(f"{m.type}: {m.text}") if m.type in ("warning", "error") else None)
    yield pg
    pg.close()


def shot(page, name: str) -> None:
    if os.environ.get("AER_WRITE_SCREENSHOTS") == "1":
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"))


@pytest.fixture(scope="module")
def tensorboard(sweep):
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(sweep / "sweep"), "--host",
           "127.0.0.1", "--port", str(port)]
    with serve("tensorboard", cmd, f"http://127.0.0.1:{port}/data/runs", sweep / "tensorboard.log") as url:
        yield url.removesuffix("/data/runs")


def test_tensorboard_names_runs_and_draws_only_measured_points(tensorboard, page):
    drawn = []  # what the page fetched to draw its charts
    page.on("response", lambda r: drawn.append(r) if "/data/plugin/timeseries/timeSeries" in r.url else None)
    page.goto(f"{tensorboard}/?smoothing=0#timeseries")
    selector = page.locator("runs-selector")
    for name in NAMES:
        selector.get_by_text(name, exact=True).wait_for(timeout=60_000)
    page.locator("metrics-tag-filter input").fill("^val/mA")
    page.get_by_text("val/mAUC", exact=True).first.wait_for(timeout=30_000)
    page.keyboard.press("Escape")  # the tag filter's suggestions
    page.wait_for_timeout(2000)  # the cards' series arrive
    shot(page, "tensorboard_timeseries")
    series = {}
    for r in drawn:
        for s in r.json():
            for run, points in (s.get("runToSeries") or {}).items():
                series[(s["tag"], run)] = [p["step"] for p in points]
    for tag in ("val/mAP", "val/mAUC"):
        for name in NAMES:
            assert series.get((tag, name)) == [1, 2], (tag, name, sorted(series))  # epoch 1 first: no 0.0 at 0
    assert not any(tag.startswith("test/") for tag, _ in series)  # no test split was scored


def test_tensorboard_hparams_shows_the_swept_keys_then_the_metrics(tensorboard, page):
    page.goto(f"{tensorboard}/#hparams")
    page.get_by_text("Trial ID").first.wait_for(timeout=60_000)
    page.get_by_text(NAMES[0][:10]).first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    shot(page, "tensorboard_hparams")
    headers = [h.strip() for h in page.locator(".table-header").all_inner_texts()]
    assert headers[:4] == ["Trial ID", "Show Metrics", "data.batch_size", "init"], headers  # the swept keys
    metrics = ["val/mAP", "val/mAUC", "val/dprime", "val/loss", "train/loss_epoch"]  # main first; no test/*
    assert headers[4:] == metrics, headers  # next to them: a sweep's other keys are the same in all its runs
    for value in INITS:  # the string key's values, each a filter box
        page.get_by_text(value, exact=True).first.wait_for(timeout=10_000)
    # TensorBoard warns in the console about a string hyper-parameter without its values
    assert not [m for m in page.console if "domain" in m.lower()], page.console


@pytest.fixture(scope="module")
def mlflow_ui(sweep):
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{sweep / 'logs' / 'mlflow.db'}", "--artifacts-destination",
           str(sweep / "served-artifacts"), "--workers", "1"]
    with serve("mlflow server", cmd, f"http://127.0.0.1:{port}/health", sweep / "mlflow.log",
               env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}) as url:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=train") as r:
            experiment = json.load(r)["experiment"]["experiment_id"]
        yield f"{url}/#/experiments/{experiment}"


def test_mlflow_lists_the_runs_by_name_with_params_curves_and_checkpoints(mlflow_ui, page):
    page.goto(f"{mlflow_ui}/runs")
    for name in NAMES:
        page.get_by_text(name, exact=True).first.wait_for(timeout=90_000)
    shot(page, "mlflow_runs")
    page.get_by_text(NAMES[0], exact=True).first.click()
    page.get_by_text("Parameters").first.wait_for(timeout=60_000)
    for key in ("init", "data.batch_size", "optim.lr", "model.hidden", "xavier", "[500]"):  # params, values
        page.get_by_text(key, exact=True).first.wait_for(timeout=30_000)
    run_url = page.url.split("?")[0]
    page.goto(f"{run_url}/model-metrics")
    page.get_by_placeholder("Search metric charts").fill("mAP")
    chart = page.locator("div").filter(has_text="mAP").locator("svg.main-svg").first
    chart.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    shot(page, "mlflow_metrics")
    page.goto(f"{run_url}/artifacts")
    page.get_by_text("checkpoints", exact=True).first.click()
    for ckpt in ("best.ckpt", "last.ckpt"):
        page.get_by_text(ckpt, exact=True).first.wait_for(timeout=30_000)

"""optuna-dashboard (the package Optuna users run) on an `hparams_search` study's storage, through its server's
JSON API over HTTP: the study, its trials with their parameters and job dirs, the per-epoch values a trial
reported (the pruned trial's curve) and the parameter importances."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import run_script

optuna = pytest.importorskip("optuna", reason="Optuna is not installed: pip install -e '.[track]' (or '.[test]')")

EPOCHS = 3
# queued before the study starts: two that learn, then one too slow to learn, which the pruner stops
BASE = {"model.hidden": "[16]", "data.batch_size": 50, "model.dropout": 0.0, "augment.mixup_alpha": 0.0}
QUEUED = [{**BASE, "optim.lr": 0.003}, {**BASE, "optim.lr": 0.001, "model.dropout": 0.3},
          {**BASE, "optim.lr": 0.000001}]


def _get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_optuna_dashboard_serves_the_studys_trials_curves_and_importances(demo_root, tmp_path):
    dashboard = shutil.which("optuna-dashboard")
    if dashboard is None:
        pytest.skip("optuna-dashboard is not installed: pip install optuna-dashboard (in '.[test]' and '.[track]')")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    queued = optuna.create_study(study_name="fc_optuna", storage=url, direction="maximize")
    for params in QUEUED:
        queued.enqueue_trial(params)
    proc = run_script("train.py", "-m", "hparams_search=fc_optuna", f"data.root={demo_root}", "data.demo.clips=600",
                      "data.demo.eval_clips=300", "data.convert_workers=1", "trainer.enable_progress_bar=false",
                      "~logger", f"trainer.max_epochs={EPOCHS}", f"hydra.sweep.dir={sweep}",
                      "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.n_startup_trials=2",
                      "hydra.sweeper.pruner.n_warmup_steps=0", "model.hidden=choice([16],[32])",
                      "data.batch_size=choice(50)")
    assert proc.returncode == 0, proc.stderr[-4000:]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([dashboard, url, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                studies = _get(port, "/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.time() < deadline, server.stderr.read().decode()[-3000:]
                time.sleep(0.2)
        assert [s["study_name"] for s in studies] == ["fc_optuna"]
        detail = _get(port, f"/api/studies/{studies[0]['study_id']}")
        importances = _get(port, f"/api/studies/{studies[0]['study_id']}/param_importances")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    stored = optuna.load_study(study_name="fc_optuna", storage=url).trials
    trials = detail["trials"]
    assert [(t["number"], t["state"]) for t in trials] == [(t.number, t.state.name.capitalize()) for t in stored]
    assert [t["state"] for t in trials[:3]] == ["Complete", "Complete", "Pruned"], "the queued trials as queued"
    assert detail["has_intermediate_values"]
    for t, s in zip(trials, stored):
        curve = {v["step"]: v["value"] for v in t["intermediate_values"]}
        assert curve == pytest.approx(s.intermediate_values) and sorted(curve) == list(range(len(curve)))
        m = json.loads((sweep / str(s.number) / "metrics.json").read_text())
        assert len(curve) == m["epochs"] and curve[m["epochs"] - 1] == pytest.approx(m["val/mAP"], abs=1e-7)
        assert {p["name"] for p in t["params"]} == set(QUEUED[0])
        assert {a["key"]: a["value"] for a in t["user_attrs"]}["job_dir"] == str((sweep / str(s.number)).resolve())
    assert len(trials[2]["intermediate_values"]) < EPOCHS, "the pruned trial's curve stops where it was pruned"
    ranked = importances["param_importances"][0]
    assert {p["name"] for p in ranked} <= set(QUEUED[0]) and ranked, importances
    assert all(0 <= p["importance"] <= 1 for p in ranked)

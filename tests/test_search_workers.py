"""One Optuna study, several workers: the same `hparams_search=...` command started N times at once (as on N
machines) on one storage, a real PostgreSQL server (started here on 127.0.0.1) or SQLite; a SIGKILLed worker, a
SIGKILLed joblib search; storage steps that fail, in one line."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, TINY, run_script

optuna = pytest.importorskip("optuna", reason="Optuna is not installed: pip install -e '.[track]' (or '.[test]')")

N_TRIALS = 5


def _args(demo_root: Path, sweep: Path, storage: str | None, n_trials: int, *extra: str) -> list[str]:
    """A small fc study on the tiny demo set: 3 epochs a trial, median pruning from the 2nd epoch on, a dead
    worker's trial taken for dead 5 s after its last heartbeat."""
    return ["-m", "hparams_search=fc_optuna", f"data.root={demo_root}", f"data.demo.clips={TINY}",
            "data.demo.eval_clips=300", "data.convert_workers=1", "trainer.enable_progress_bar=false", "~logger",
            "threads=1", "trainer.max_epochs=3", "model.hidden=choice([16],[32])", "data.batch_size=choice(50)",
            f"hydra.sweep.dir={sweep}", f"hydra.sweeper.n_trials={n_trials}",
            "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=1",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=5",
            *([f"hydra.sweeper.storage={storage}"] if storage else []), *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
    return Path(found[-1]).parent if found[-1] else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of Debian's package on 127.0.0.1, for this module: a function that makes a new
    database there and returns its URL."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]' (in '.[test]')")
    pg = _pg_bin()
    if pg is None:
        reason = "PostgreSQL's server (initdb, pg_ctl) is not installed: apt-get install postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    home = Path(tempfile.mkdtemp(prefix="aer-pg-"))
    as_pg = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(home, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    db, port = home / "db", _free_port()

    def pg_run(*cmd: str) -> None:
        subprocess.run([*as_pg, *cmd], check=True, capture_output=True, timeout=120)

    pg_run(str(pg / "initdb"), "-D", str(db), "-A", "trust", "-U", "postgres", "--no-sync")
    pg_run(str(pg / "pg_ctl"), "-D", str(db), "-l", str(home / "server.log"), "-w", "start",
           "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off")
    def database(name: str) -> str:
        pg_run(str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"

    try:
        yield database
    finally:
        pg_run(str(pg / "pg_ctl"), "-D", str(db), "-m", "immediate", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


def _popen(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _running_job(sweep: Path) -> Path | None:
    """A job dir whose trial is training: its first epoch's last.ckpt written, its metrics.json not yet."""
    for d in sorted(sweep.glob("[0-9]*")):
        if (d / "checkpoints" / "last.ckpt").exists() and not (d / "metrics.json").exists():
            return d
    return None


def _holder(job_dir: Path) -> int:
    """The pid that claimed a job dir (aer.runs.claim_run_dir's lock)."""
    return int((job_dir / ".aer-run.lock").read_text().split()[0])


def _trials(sweep: Path, storage: str | None):
    return optuna.load_study(study_name="fc_optuna", storage=storage or f"sqlite:///{sweep / 'optuna.db'}").trials


def _check_study(trials, sweep: Path, n_trials: int) -> None:
    """Exactly n_trials counted, every trial run in its own job dir with its own parameters, each finished
    trial's job dir saying what the study holds."""
    from aer.runs import read_overrides
    from aer.search import count

    assert count(trials) == (n_trials, 0), [(t.number, t.state.name) for t in trials]
    for t in trials:
        job = sweep / str(t.number)
        assert t.user_attrs["job_dir"] == str(job.resolve())
        ran = dict(o.split("=", 1) for o in read_overrides(job / ".hydra" / "overrides.yaml") if "=" in o)
        assert float(ran["optim.lr"]) == t.params["optim.lr"] and ran["model.hidden"] == t.params["model.hidden"]
        if t.state.name in ("COMPLETE", "PRUNED"):
            m = json.loads((job / "metrics.json").read_text())
            assert m["status"] == ("ok" if t.state.name == "COMPLETE" else "pruned")
            assert sorted(t.intermediate_values) == list(range(m["epochs"])), "one value reported per epoch"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_share_one_study_and_a_killed_workers_trial_runs_again(backend, demo_root, tmp_path, request):
    storage = request.getfixturevalue("postgres")("workers") if backend == "postgresql" else None
    sweep = tmp_path / "sweep"
    workers = [_popen(_args(demo_root, sweep, storage, N_TRIALS), tmp_path / f"worker{i}.log") for i in range(3)]
    killed = None
    try:
        deadline = time.time() + 300
        while killed is None and time.time() < deadline and all(w.poll() is None for w in workers):
            if (job := _running_job(sweep)) is not None:
                pid = _holder(job)
                assert pid in [w.pid for w in workers], "a job runs in its worker's process (basic launcher)"
                os.killpg(pid, signal.SIGKILL)
                killed = int(job.name)
            time.sleep(0.05)
        assert killed is not None, "no worker was caught training"
        codes = [w.wait(timeout=300) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(3)]
    live = [(c, log) for c, log in zip(codes, logs) if c != -signal.SIGKILL]
    assert len(live) == 2 and all(c == 0 for c, _ in live), [log[-3000:] for _, log in live]
    assert not any("Traceback" in log or "Cannot tell" in log for log in logs)

    trials = _trials(sweep, storage)
    _check_study(trials, sweep, N_TRIALS)
    assert trials[killed].state.name == "FAIL", "the killed worker's trial"
    again = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(again) == 1 and again[0].params == trials[killed].params and again[0].state.is_finished()
    assert sum("; overlay " in log for _, log in live) == 1, "the best overlay is written by one worker, once"
    assert (sweep / "experiment" / "fc_optuna_best.yaml").exists()
    rows = {r["job"]: r for r in json.loads((sweep / "trials.json").read_text())}
    assert rows[str(killed)]["note"] == f"interrupted; run again as trial {again[0].number}"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_killing_a_joblib_search_leaves_no_worker_and_the_same_command_goes_on(demo_root, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[scale]' (or '.[test]')")
    sweep = tmp_path / "sweep"
    args = _args(demo_root, sweep, None, 2, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    parent = _popen(args, tmp_path / "first.log")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and parent.poll() is None and _running_job(sweep) is None:
            time.sleep(0.05)
        assert parent.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        workers = _descendants(parent.pid)
        assert _holder(_running_job(sweep)) in workers, "the trial trains in a joblib worker"
        os.kill(parent.pid, signal.SIGKILL)  # the search's process alone, as the OOM killer would
        parent.wait(timeout=60)
        deadline = time.time() + 15
        while time.time() < deadline and any(map(_alive, workers)):
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "every worker of the killed search is gone"
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    killed = [t.number for t in _trials(sweep, None) if t.state.name == "RUNNING"]
    assert killed

    proc = run_script("train.py", *args)  # the same command: the killed trials run again, nothing else breaks
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "UpdateFinishedTrialError" not in proc.stdout + proc.stderr
    trials = _trials(sweep, None)
    _check_study(trials, sweep, 2)
    for number in killed:
        assert trials[number].state.name == "FAIL"
        assert [t.params for t in trials if t.user_attrs.get("retry_of") == number] == [trials[number].params]


def test_storage_steps_that_fail_say_what_and_where_in_one_line(tmp_path):
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]' (in '.[test]')")
    from aer.errors import UserError
    from aer.search import open_storage, study_lock

    port = _free_port()  # nothing listens there
    for step in (open_storage, lambda url: study_lock(url, "fc_optuna").__enter__()):
        with pytest.raises(UserError, match=rf"^hydra.sweeper.storage=postgresql\+psycopg://postgres:\*\*\*@127.0.0.1:"
                                            rf"{port}/aer: cannot open the study's storage: .*Connection refused$"):
            step(f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/aer")
    with pytest.raises(UserError, match=r"^hydra.sweeper.storage=postgres\+nodriver://h/db: cannot open the "
                                        r"study's storage: .*nodriver"):
        open_storage("postgres+nodriver://h/db")
    # a database of something else (an MLflow store has an alembic_version table too): refused, left as it was
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('0584bdc529eb')")
        db.execute("CREATE TABLE runs (run_uuid VARCHAR(32) NOT NULL PRIMARY KEY)")
    before = other.read_bytes()
    with pytest.raises(UserError, match=rf"^hydra.sweeper.storage=sqlite:///{other}: the database holds tables "
                                        r"that are not Optuna's \(alembic_version, runs\): give the study a "
                                        r"database of its own"):
        open_storage(f"sqlite:///{other}")
    assert other.read_bytes() == before


@pytest.mark.slow
def test_a_search_whose_storage_fails_ends_in_one_line(demo_root, tmp_path):
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]' (in '.[test]')")
    port = _free_port()
    proc = run_script("train.py", *_args(demo_root, tmp_path / "a", f"postgresql+psycopg://u:pw@127.0.0.1:{port}/x", 2))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith(f"error: hydra.sweeper.storage=postgresql+psycopg://u:***@127.0.0.1:{port}/x: cannot open "
                           f"the study's storage: (psycopg.OperationalError) connection failed: "), last
    assert "pw@" not in proc.stderr


@pytest.mark.slow
def test_a_sweep_dir_with_another_studys_runs_is_refused(demo_root, tmp_path):
    """The study's database lost (or another storage given) while the sweep dir keeps its runs: trial 0's job dir
    holds a run of another study, and nothing there is written over."""
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text('{"status": "ok"}\n')
    proc = run_script("train.py", *_args(demo_root, sweep, None, 2))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last == (f"error: {sweep / '0'} holds a run of another study than 'fc_optuna' in "
                    f"sqlite:///{sweep / 'optuna.db'}: give a new hydra.sweep.dir, or the storage of that study"), last
    assert (sweep / "0" / "metrics.json").read_text() == '{"status": "ok"}\n'
    assert [t.state.name for t in _trials(sweep, None)] == ["FAIL"], "the trial asked for it did not stay RUNNING"


@pytest.mark.slow
def test_every_worker_tracks_into_one_mlflow_server(postgres, demo_root, tmp_path):
    """Two workers of one study, each trial's run logged by MLflow into one tracking server (`mlflow server`, its
    runs in PostgreSQL, artifacts proxied by the server): one run a trial, named, with its curves and checkpoints."""
    mlflow = shutil.which("mlflow")
    if mlflow is None or subprocess.run([mlflow, "server", "--help"], capture_output=True).returncode != 0:
        pytest.skip("`mlflow server` needs the full mlflow package: pip install mlflow")
    from mlflow.tracking import MlflowClient

    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", postgres("mlflow"),
                               "--artifacts-destination", str(tmp_path / "artifacts")],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "mlflow.log", "w"),
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.time() < deadline, (tmp_path / "mlflow.log").read_text()[-3000:]
                time.sleep(0.5)
        sweep = tmp_path / "sweep"
        storage = postgres("study")
        args = [a for a in _args(demo_root, sweep, storage, 2) if a != "~logger"]  # a trial a worker
        args += ["logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.artifact_location=null"]
        workers = [_popen(args, tmp_path / f"worker{i}.log") for i in range(2)]
        codes = [w.wait(timeout=400) for w in workers]
        assert codes == [0, 0], [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2)]
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
        trials = _trials(sweep, storage)
        by_dir = {r.data.tags["run_dir"]: r for r in runs}
        assert sorted(by_dir) == sorted(str(sweep / str(t.number)) for t in trials), "one run a trial"
        for t in trials:
            run = by_dir[str(sweep / str(t.number))]
            assert float(run.data.params["optim.lr"]) == pytest.approx(t.params["optim.lr"])
            history = client.get_metric_history(run.info.run_id, "val/mAP")
            # aer's loggers write an epoch's metrics at step = epochs done (1 after the first), Optuna's at epoch index
            assert {m.step - 1: m.value for m in history} == pytest.approx(t.intermediate_values)
            assert "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)

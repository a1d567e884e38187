"""Optuna search: the search space from Hydra override syntax, the study's storage (SQLite in the sweep dir, or
a server's URL), what lets several workers share one study (a lock across them, heartbeats, a dead worker's trial
run again), pruning from inside a trial's training, and what a study leaves in its sweep dir (trials.json, the
best overlay).

The Hydra side is the sweeper plugin in hydra_plugins/aer_optuna_sweeper (`hydra/sweeper=aer_optuna`,
used by `hparams_search=...`). Hydra's own plugin, hydra-optuna-sweeper (1.3.0, the newest), pins
optuna>=2.10,<3, while Optuna is at 5: this one is a thin loop over Optuna's ask-and-tell API instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from aer.callbacks import StopsRun
from aer.errors import UserError, first_line, one_line
from aer.files import atomic_write_text, file_lock, write_json
from aer.runs import parse_override, render

log = logging.getLogger(__name__)

SWEEPER = "hydra_plugins.aer_optuna_sweeper.optuna_sweeper.AerOptunaSweeper"
# runs of one trial's parameters at most, when its worker keeps dying (SIGKILL, out of memory)
MAX_ATTEMPTS = 3
# Overrides that say where a study ran, not what it trained: left out of the best overlay.
LOCATION_KEYS = ("paths.", "hydra.", "data.root", "data.cache_dir", "threads", "ckpt_path", "hparams_search")


@dataclass
class Dim:
    """One searched key and its Optuna distribution. `raw`: the categorical values are override text,
    for choices that Optuna cannot store as they are (lists, dicts)."""

    key: str
    distribution: Any
    raw: bool = False

    def override(self, value) -> str:
        return f"{self.key}={value if self.raw else render(value)}"


def _dim(override) -> Dim:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, v = override.get_key_element(), override.value()
    log_scale = "log" in (getattr(v, "tags", None) or ())
    if isinstance(v, ChoiceSweep):
        plain = [c for c in v.list if c is None or isinstance(c, (bool, int, float, str))]
        if len(plain) == len(v.list):
            return Dim(key, CategoricalDistribution(v.list))
        return Dim(key, CategoricalDistribution([render(c) for c in v.list]), raw=True)
    if isinstance(v, RangeSweep):
        if all(isinstance(x, int) for x in (v.start, v.stop, v.step)):
            last = v.start + (v.stop - 1 - v.start) // v.step * v.step  # range() excludes stop
            return Dim(key, IntDistribution(v.start, last, step=v.step))
        return Dim(key, FloatDistribution(v.start, v.stop - v.step, step=v.step))
    if isinstance(v, IntervalSweep):
        return Dim(key, FloatDistribution(v.start, v.end, log=log_scale))
    raise ValueError(f"hydra.sweeper.params.{key}: {override.input_line!r} is not choice(...), range(...) "
                     f"or interval(...)")


def split_arguments(params: dict[str, str] | None, arguments: list[str]) -> tuple[list[Dim], list[str]]:
    """The search space (hydra.sweeper.params and sweep-valued command-line overrides) and the fixed overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    space: dict[str, Dim] = {}
    fixed: list[str] = []
    for o in OverridesParser.create().parse_overrides(lines):
        if o.is_sweep_override():
            space[o.get_key_element()] = _dim(o)  # the command line's range replaces the config's
        else:
            fixed.append(o.input_line)
    return list(space.values()), fixed


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """`null` means the study lives beside its jobs: sqlite in the sweep dir, found again by the same command."""
    return storage or f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


def shown(url: str) -> str:
    """A storage URL as messages and logs show it: without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 — a URL SQLAlchemy cannot parse is shown as given
        return url


@contextlib.contextmanager
def storage_errors(url: str, what: str = "the study's storage failed"):
    """A storage step that fails (server not reachable, wrong URL, a missing driver, a database that is not
    Optuna's) as one line naming the URL: aer.errors.UserError. What the storage holds is left as it was."""
    import sqlalchemy.exc

    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "optuna" not in str(e).lower():
            raise
        raise UserError(f"hydra.sweeper.storage={shown(url)}: {what}: {one_line(first_line(e))}") from None


def open_storage(url: str, heartbeat: tuple[int, int] | None = None):
    """The study's storage. `heartbeat` (interval, grace period in seconds): a sweeper's, which writes a
    heartbeat for each trial it runs; a RUNNING trial whose heartbeat is older than the grace period is a
    dead worker's (Optuna's fail_stale_trials marks it FAIL, retry_stale queues its parameters again)."""
    import optuna

    # sqlite waits 5 s for a lock by default: parallel trials reporting each epoch can wait longer
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    beats = {} if heartbeat is None else {"heartbeat_interval": heartbeat[0], "grace_period": heartbeat[1],
                                          "heartbeat_stale_trial_callback": retry_stale}
    with storage_errors(url, "cannot open the study's storage"):
        foreign = sorted(_table_names(url, kwargs))
        if foreign and "studies" not in foreign:  # another program's database (an MLflow store, ...)
            raise UserError(f"hydra.sweeper.storage={shown(url)}: the database holds tables that are not Optuna's "
                            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): give the study a "
                            f"database of its own (nothing was written to this one)")
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **beats)


def _table_names(url: str, engine_kwargs: dict | None) -> list[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **(engine_kwargs or {}))
    try:
        return sqlalchemy.inspect(engine).get_table_names()
    finally:
        engine.dispose()


_engines: dict[str, Any] = {}  # study_lock's, one a PostgreSQL URL
_unlocked: set[str] = set()  # URLs study_lock has warned about


@contextlib.contextmanager
def study_lock(url: str, study_name: str):
    """One worker at a time, across processes and machines, counts the study's trials and asks new ones (so
    that the study ends at exactly n_trials) and writes the best overlay. SQLite: a lock file beside the
    database (one machine); PostgreSQL: an advisory lock of the server; other databases: none (a warning)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        with file_lock(f"{u.database}.lock", f"the Optuna study {study_name!r}", say=log.debug):
            yield
        return
    if u.get_backend_name() != "postgresql":
        if url not in _unlocked:
            log.warning("%s: no lock between workers for this database (SQLite and PostgreSQL have one): "
                        "several workers at once may run a few trials more than n_trials", shown(url))
            _unlocked.add(url)
        yield
        return
    if url not in _engines:
        _engines[url] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    key = int.from_bytes(hashlib.sha256(f"aer-optuna:{study_name}".encode()).digest()[:8], "big", signed=True)
    with storage_errors(url, "cannot open the study's storage"), _engines[url].connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@contextlib.contextmanager
def heartbeats(storage, study_name: str, numbers: list[int], interval: float):
    """Writes a heartbeat for trials `numbers` now and every `interval` seconds until the block ends: the
    trials a live worker runs are never taken for a dead one's."""
    study_id = storage.get_study_id_from_name(study_name)
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, n) for n in numbers]
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial_id in ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as e:  # noqa: BLE001 — a missed beat; the grace period allows for some
                    log.warning("heartbeat of trial %s not written: %s", trial_id, one_line(e, typed=True))

    for trial_id in ids:
        storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, name="aer-optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def retry_stale(study, trial) -> None:
    """Optuna's heartbeat_stale_trial_callback: the trial of a worker that died (SIGKILL, a lost machine), marked
    FAIL by fail_stale_trials, is queued again with its parameters, up to MAX_ATTEMPTS runs of them."""
    attempt = int(trial.user_attrs.get("attempt", 1))
    if attempt >= MAX_ATTEMPTS:
        log.error("trial %d: its worker died, %d runs of these parameters so far: not run again", trial.number,
                  attempt)
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "attempt": attempt + 1})
    log.info("trial %d was interrupted (its worker is gone): its parameters run again", trial.number)


def instantiate_or_none(node):
    import hydra

    return hydra.utils.instantiate(node) if node else None


def make_sampler(node, n_trials: int):
    """The sampler, its seed moved on by the trials the study already has: a continued study with
    the same seed would draw the killed run's parameters again."""
    if node and node.get("seed") is not None:
        node = OmegaConf.merge(node, {"seed": int(node["seed"]) + n_trials})
    return instantiate_or_none(node)


def check_same_study(study, space: list[Dim], fixed: list[str]) -> None:
    """A study continued must be the one that was started: same search space, same fixed overrides."""
    from optuna.distributions import distribution_to_json

    trained = [o for o in fixed if not parse_override(o)[0].lstrip("+~").startswith(LOCATION_KEYS)]
    wanted = {"space": {d.key: distribution_to_json(d.distribution) for d in space}, "fixed": sorted(trained)}
    had = study.user_attrs.get("aer")
    if had is None:
        study.set_user_attr("aer", wanted)
        return
    was = {k: v for k, v in map(parse_override, had["fixed"]) if not k.lstrip("+~").startswith(LOCATION_KEYS)}
    now = dict(map(parse_override, wanted["fixed"]))
    for key in sorted(set(was) | set(now) | set(had["space"]) | set(wanted["space"])):
        before = had["space"].get(key, was.get(key, "(not set)"))
        after = wanted["space"].get(key, now.get(key, "(not set)"))
        if before != after:
            raise ValueError(f"study {study.study_name!r} was started with {key}={before}, this command has "
                             f"{key}={after}: run the same command to continue it, or give a new "
                             f"hydra.sweeper.study_name (or hydra.sweep.dir)")


def count(trials) -> tuple[int, int]:
    """(done, running) of one reading of a study's trials: done counts the finished ones (COMPLETE, PRUNED,
    FAIL) but not a dead worker's trial that was queued again; running, those RUNNING now, anyone's."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    done = sum(t.state.is_finished() and t.number not in retried for t in trials)
    return done, sum(t.state.name == "RUNNING" for t in trials)


def read_trials(storage, study_name: str) -> list:
    """The study's trials as the database holds them now, read at once from `storage` (the RDBStorage: a
    Study's own cached view can lag behind other workers' writes)."""
    return storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False)


def tell(study, trial, ret, metric: str) -> None:
    """Records a job's outcome: its metric, PRUNED when the pruning callback stopped it, FAIL otherwise. A trial
    another worker took for a dead one's (its heartbeat late by more than grace_period) is left as it is."""
    from optuna.trial import TrialState

    try:
        result = ret.return_value  # re-raises what the job raised (aer.entry.task catches most of it)
    except Exception as e:  # noqa: BLE001 — one trial's failure is the study's data, not the sweep's end
        log.error("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
        result = None
    status = result.get("status") if isinstance(result, dict) else None
    value = result.get(metric) if isinstance(result, dict) else None
    if status == "pruned":
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    elif status == "ok" and isinstance(value, (int, float)) and math.isfinite(value):
        study.tell(trial, float(value), skip_if_finished=True)
    else:
        if status == "ok":
            log.error("trial %d: %s=%r is not a finite number", trial.number, metric, value)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def trial_rows(study) -> list[dict]:
    """One row per trial for trials.json and the sweep summary (job dirs are named by trial number)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    rows = []
    for t in trials:
        row = {"job": str(t.number), "trial": t.number, "state": t.state.name, "value": t.value,
               "params": t.params, "epochs_reported": len(t.intermediate_values)}
        if t.number in retried:
            row["note"] = f"interrupted; run again as trial {retried[t.number]}"
        rows.append(row)
    return rows


def write_study_files(study, sweep_dir: Path) -> None:
    """trials.json and the sweep summary, as the study stands (every worker, after each batch)."""
    from aer.runs import write_summary

    write_json(sweep_dir / "trials.json", trial_rows(study))
    write_summary(sweep_dir)


def write_best_once(study, sweep_dir: Path, space: list[Dim], fixed: list[str], choices: dict) -> Path | None:
    """The best complete trial as an experiment overlay, written by one worker once the study has all its
    trials (called under study_lock; the study's user attr `best_overlay_of` says for how many it was
    written); returns its path when this call wrote it."""
    done = count(study.get_trials(deepcopy=False))[0]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    name = f"{study.study_name}_best"
    path = sweep_dir / "experiment" / f"{name}.yaml"
    if not complete or (study.user_attrs.get("best_overlay_of") == done and path.exists()):
        return None
    best = study.best_trial
    overrides = fixed + [d.override(best.params[d.key]) for d in space if d.key in best.params]
    head = (f"Best of the Optuna study {study.study_name!r}: trial {best.number}, value {best.value:.4f} "
            f"({len(complete)} complete of {len(study.trials)} trials). Written by the sweeper.\n"
            f"Re-run: python train.py --config-dir {sweep_dir} experiment={name} "
            f"[data.root=...] (or copy it into conf/experiment/)")
    atomic_write_text(path, overlay_yaml(overrides, choices, head))
    study.set_user_attr("best_overlay_of", done)
    return path


def overlay_yaml(overrides: list[str], choices: dict, comment: str) -> str:
    """An experiment overlay (`# @package _global_`) that composes the same config as `overrides`.

    `choices` are the config groups (hydra.runtime.choices): a group's override becomes an
    `override /group: option` default; `experiment=X` becomes the overlay's base, `- X`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    defaults: list = []
    body = OmegaConf.create()
    base = choices.get("experiment")
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        if o.is_delete() or o.is_add() or o.is_force_add() or key.startswith(LOCATION_KEYS):
            continue
        if key == "experiment":
            base = o.value()
        elif key in choices:
            defaults.append({f"override /{key}": o.value()})
        else:
            OmegaConf.update(body, key, o.value(), force_add=True)
    defaults = ([base] if base else []) + defaults + ["_self_"]
    text = OmegaConf.to_yaml(OmegaConf.merge({"defaults": defaults}, body))
    return "# @package _global_\n" + "".join(f"# {line}\n" for line in comment.splitlines()) + text


def job_trial():
    """The Optuna trial this job runs, or None outside an aer_optuna sweep.

    The trial was asked by the sweeper, maybe in another process (joblib): the job finds it in
    the study's storage by its number, which is the job's number.
    """
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or hc.sweeper.get("_target_") != SWEEPER:
        return None
    storage = open_storage(storage_url(hc.sweeper.storage, hc.sweep.dir))
    study = optuna.load_study(study_name=hc.sweeper.study_name, storage=storage,
                              pruner=instantiate_or_none(hc.sweeper.pruner))
    study_id = storage.get_study_id_from_name(hc.sweeper.study_name)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, hc.job.num))


class OptunaPruning(StopsRun):
    """Reports the sweeper's metric to this job's trial after each validation and stops training
    when the study's pruner says so; the run then ends normally with status `pruned`."""

    def __init__(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        self.trial = job_trial()
        self.metric = HydraConfig.get().sweeper.metric if self.trial else None
        self.pruned_epoch: int | None = None
        if self.trial is None:
            log.info("not an Optuna trial (no hparams_search multirun): no pruning")

    def on_validation_end(self, trainer, pl_module) -> None:
        prune = False
        if self.trial is not None and not trainer.sanity_checking and self.metric in trainer.callback_metrics:
            self.trial.report(float(trainer.callback_metrics[self.metric]), step=trainer.current_epoch)
            prune = self.trial.should_prune()
        # every DDP rank must stop at the same epoch; only rank 0 holds the trial
        if trainer.strategy.reduce_boolean_decision(prune, all=False):
            self.pruned_epoch, self.stopped = trainer.current_epoch, "pruned"
            trainer.should_stop = True
            log.info("trial pruned after epoch %d (%s)", trainer.current_epoch + 1, self.metric)


"""`hydra/sweeper=aer_optuna`: an Optuna study over Hydra overrides, through Optuna's ask-and-tell API.

Written because Hydra's own plugin, hydra-optuna-sweeper (1.3.0, the newest on PyPI), requires
optuna>=2.10,<3 (2.10 is from 2021), while Optuna is at 5. Hydra imports every module under hydra_plugins at start-up,
so this one imports nothing heavy at the top: Optuna and aer load when a sweep starts.

Each batch asks `n_jobs` trials, launches them with the configured launcher (joblib runs them side
by side) as jobs numbered by trial number, and tells the study each job's metric, PRUNED when
aer.search.OptunaPruning stopped it, or FAIL. A study's SQLite file sits in the sweep dir, so the
same command continues it. The same command may run as several workers at once, on one machine or
many (one storage URL): each counts and asks under aer.search.study_lock, writes a heartbeat for the
trials it runs, and takes a RUNNING trial for a dead worker's only when its heartbeat is older than
grace_period (then marked FAIL and its parameters queued again); a worker with nothing left to ask
waits for the others' trials, and one of them writes the best overlay when the study has n_trials.
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class AerOptunaSweeperConf:
    _target_: str = "hydra_plugins.aer_optuna_sweeper.optuna_sweeper.AerOptunaSweeper"
    # sampler and pruner reach the sweeper as configs: the sampler's seed depends on the study's
    # history, and each job builds the pruner again from the same config
    _recursive_: bool = False
    study_name: str = "aer"
    # null: sqlite in the sweep dir (optuna.db); or any Optuna storage URL (postgresql+psycopg://... for workers
    # on several machines)
    storage: Any = None
    # seconds between the heartbeats a worker writes for its running trials, and how old the last one may be
    # before the trial is taken for a dead worker's (marked FAIL, its parameters run again)
    heartbeat_interval: int = 10
    grace_period: int = 60
    direction: str = "maximize"
    # a key of the job's returned metrics; also what OptunaPruning reports after each validation
    metric: str = "val/mAP"
    # finished trials the study should hold (a continued study counts the ones it has)
    n_trials: int = 20
    # trials asked (and launched) per batch: the joblib launcher's n_jobs when that launcher is used
    n_jobs: Any = "${oc.select:hydra.launcher.n_jobs,1}"
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner",
                                                 "n_startup_trials": 3, "n_warmup_steps": 2})
    # key: choice(a,b) | range(lo,hi[,step]) | interval(lo,hi) | tag(log, interval(lo,hi))
    params: Any = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="aer_optuna", node=AerOptunaSweeperConf,
                             provider="aer")


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """(start index, length) of consecutive trial numbers: each run is one launch, jobs numbered as trials."""
    runs, start = [], 0
    for i in range(1, len(numbers) + 1):
        if i == len(numbers) or numbers[i] != numbers[i - 1] + 1:
            runs.append((start, i - start))
            start = i
    return runs


class AerOptunaSweeper(Sweeper):
    def __init__(self, study_name: str, storage: Any, heartbeat_interval: int, grace_period: int, direction: str,
                 metric: str, n_trials: int, n_jobs: Any, sampler: Any, pruner: Any, params: Any) -> None:
        self.study_name, self.storage, self.direction, self.metric = study_name, storage, direction, metric
        self.heartbeat = (int(heartbeat_interval), int(grace_period))
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs) if int(n_jobs) > 0 else (os.cpu_count() or 1)  # joblib's -1: all cores
        self.sampler, self.pruner, self.params = sampler, pruner, params
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from aer import search
        from aer.errors import Refused, UserError

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        space, fixed = search.split_arguments(self.params, arguments)
        if not space:
            raise ValueError("hydra.sweeper.params is empty: an Optuna sweep needs a search space")
        url = search.storage_url(self.storage, sweep_dir)
        try:  # a refusal: one line, whatever HYDRA_FULL_ERROR says
            with search.storage_errors(url):
                return self._sweep(url, sweep_dir, space, fixed)
        except (UserError, ValueError) as e:
            raise Refused(str(e)) from None

    def _sweep(self, url: str, sweep_dir: Path, space: list, fixed: list[str]) -> list:
        import contextlib
        import warnings

        import optuna
        from optuna.trial import TrialState

        from aer import search
        from aer.runs import is_run_dir
        from aer.sweep import LAUNCHED

        def lock():
            return search.study_lock(url, self.study_name)

        with lock():  # two workers creating Optuna's tables at once would collide
            storage = search.open_storage(url, self.heartbeat)
            study = optuna.create_study(study_name=self.study_name, storage=storage, direction=self.direction,
                                        load_if_exists=True, pruner=search.instantiate_or_none(self.pruner))
            search.check_same_study(study, space, fixed)
        choices = OmegaConf.to_container(self.config.hydra.runtime.choices)
        distributions = {d.key: d.distribution for d in space}
        log.info("study %r in %s (%s): %d of %d trials done", self.study_name, sweep_dir, search.shown(url),
                 search.count(search.read_trials(storage, self.study_name))[0], self.n_trials)
        returns, first = [], True
        while True:
            with contextlib.ExitStack() as beating:
                with lock(), warnings.catch_warnings():
                    # ask-and-tell with heartbeats (Optuna warns that they are meant for Study.optimize)
                    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)  # dead workers' trials: FAIL, parameters queued again
                    now = search.read_trials(storage, self.study_name)
                    done, running = search.count(now)
                    if done >= self.n_trials:
                        if best := search.write_best_once(study, sweep_dir, space, fixed, choices):
                            log.info("best trial %d: %s=%.4f; overlay %s", study.best_trial.number, self.metric,
                                     study.best_value, best)
                        break
                    n = min(self.n_trials - done - running, self.n_jobs)
                    if first:  # the seed moved on by the trials there, counted under the lock: workers draw apart
                        study.sampler = search.make_sampler(self.sampler, len(now)) or study.sampler
                        first = False
                    trials = [study.ask(distributions) for _ in range(n)]
                    log.debug("%d done, %d running: asks %d", done, running, n)
                    # under the lock: no trial this worker holds is ever without a heartbeat
                    beating.enter_context(search.heartbeats(storage, self.study_name, [t.number for t in trials],
                                                            self.heartbeat[0]))
                if not trials:  # the others' trials run: wait, one of them may die and its trial run again
                    time.sleep(self.heartbeat[0])
                    continue
                for t in trials:  # where a dashboard's reader finds the trial's run
                    t.set_user_attr("job_dir", str((sweep_dir / str(t.number)).resolve()))
                batch = [fixed + [d.override(t.params[d.key]) for d in space] for t in trials]
                taken = [sweep_dir / str(t.number) for t in trials if is_run_dir(sweep_dir / str(t.number))]
                try:
                    self.validate_batch_is_legal(batch)
                    if taken:
                        raise ValueError(f"{taken[0]} holds a run of another study than {self.study_name!r} in "
                                         f"{search.shown(url)}: give a new hydra.sweep.dir, or the storage of "
                                         f"that study")
                except Exception:
                    for t in trials:  # no job ran: the study must not keep them RUNNING
                        study.tell(t, state=TrialState.FAIL)
                    raise
                LAUNCHED.update(str(t.number) for t in trials)
                for start, k in _runs([t.number for t in trials]):
                    results = self.launcher.launch(batch[start:start + k], initial_job_idx=trials[start].number)
                    for t, ret in zip(trials[start:start + k], results):
                        search.tell(study, t, ret, self.metric)
                    returns.append(results)
            search.write_study_files(study, sweep_dir)  # a kill leaves them current
        search.write_study_files(study, sweep_dir)
        return returns

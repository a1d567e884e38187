"""`hydra/sweeper=aer_optuna`: an Optuna study over Hydra overrides, through Optuna's ask-and-tell API.

Written because Hydra's own plugin, hydra-optuna-sweeper (1.3.0, the newest on PyPI), requires
optuna>=2.10,<3 (2.10 is from 2021), while Optuna is at 5. Hydra imports every module under hydra_plugins at start-up,
so this one imports nothing heavy at the top: Optuna and aer load when a sweep starts.

Each batch asks `n_jobs` trials, launches them with the configured launcher (joblib runs them side
by side) as jobs numbered by trial number, and tells the study each job's metric, PRUNED when
aer.search.OptunaPruning stopped it, or FAIL. A study's SQLite file sits in the sweep dir, so the
same command continues it; trials a kill interrupted are marked failed and run again first.
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
import logging
import os
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
    # null: sqlite in the sweep dir (optuna.db); or any Optuna storage URL
    storage: Any = None
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
    def __init__(self, study_name: str, storage: Any, direction: str, metric: str, n_trials: int, n_jobs: Any,
                 sampler: Any, pruner: Any, params: Any) -> None:
        self.study_name, self.storage, self.direction, self.metric = study_name, storage, direction, metric
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

    def _open_study(self, sweep_dir: Path):
        import optuna

        from aer import search

        storage = search.open_storage(search.storage_url(self.storage, sweep_dir))
        sampler = search.make_sampler(self.sampler, search.n_trials_in(storage, self.study_name))
        return optuna.create_study(study_name=self.study_name, storage=storage, direction=self.direction,
                                   load_if_exists=True, sampler=sampler, pruner=search.instantiate_or_none(self.pruner))

    def sweep(self, arguments: list[str]) -> Any:
        from aer import search
        from aer.errors import Refused

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        space, fixed = search.split_arguments(self.params, arguments)
        if not space:
            raise ValueError("hydra.sweeper.params is empty: an Optuna sweep needs a search space")
        study = self._open_study(sweep_dir)
        try:
            search.check_same_study(study, space, fixed)
        except ValueError as e:  # a refusal: one line, whatever HYDRA_FULL_ERROR says
            raise Refused(str(e)) from None
        search.retry_interrupted(study)
        choices = OmegaConf.to_container(self.config.hydra.runtime.choices)
        distributions = {d.key: d.distribution for d in space}
        returns = []
        log.info("study %r in %s: %d of %d trials done", self.study_name, sweep_dir, search.n_done(study),
                 self.n_trials)
        while (left := self.n_trials - search.n_done(study)) > 0:
            trials = [study.ask(distributions) for _ in range(min(left, self.n_jobs))]
            batch = [fixed + [d.override(t.params[d.key]) for d in space] for t in trials]
            try:
                self.validate_batch_is_legal(batch)
            except Exception:
                from optuna.trial import TrialState

                for t in trials:  # no job ran: the study must not keep them RUNNING
                    study.tell(t, state=TrialState.FAIL)
                raise
            for start, n in _runs([t.number for t in trials]):
                results = self.launcher.launch(batch[start:start + n], initial_job_idx=trials[start].number)
                for t, ret in zip(trials[start:start + n], results):
                    search.tell(study, t, ret, self.metric)
                returns.append(results)
            search.write_study_files(study, sweep_dir, space, fixed, choices)  # a kill leaves them current
        if best := search.write_study_files(study, sweep_dir, space, fixed, choices):
            log.info("best trial %d: %s=%.4f; overlay %s", study.best_trial.number, self.metric,
                     study.best_value, best)
        return returns

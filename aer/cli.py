"""How every command starts, in one place: the root scripts (`python train.py`), `python -m aer.X` and the
console scripts (`aer-train`, ...) all call the functions here.

A Hydra command (train, evaluate, ensemble, predict, export, thresholds) composes its config, builds its
settings object once (aer.config.build: every value checked before any work) and runs `aer.<name>.run`;
an argparse command (data, report, compare) parses its arguments into its settings object the same way.
Whatever fails is reported here, and only here: a user's error (aer.errors.is_user_error) in one line on
stderr, anything else with its traceback; the exit status is 1 (a multirun's too, after its summary, when a job
or its ensemble failed). SIGTERM and SIGINT (Ctrl-C) stop a command where it is, its files whole (every write is
atomic), metrics.json saying `status: interrupted`, with status 128 + the signal.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable

from aer.errors import Interrupted, Refused, is_user_error, one_line

log = logging.getLogger("aer")


def _unwrapped(e: BaseException) -> BaseException:
    """A constructor's error that Hydra's instantiate wrapped is reported as the constructor's own."""
    from hydra.errors import InstantiationException

    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def job(run: Callable, name: str, cfg) -> dict | None:
    """One Hydra job of command `name`: its config built, `run` on it; a failure recorded in metrics.json (so a
    sweep's summary shows it) and reported: in a multirun the sweep goes on with the next job, in a single
    run the process exits with status 1. A run whose result says it diverged is reported the same way."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from aer.config import build
    from aer.files import write_json

    hc = HydraConfig.get()
    record = os.path.join(hc.runtime.output_dir, "metrics.json")

    def fail(msg: str, result: dict | None = None):
        if hc.mode == RunMode.MULTIRUN:
            log.error("job %s failed: %s", hc.job.num, msg)
            return result
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)

    try:
        result = run(build(name, cfg))
        check_signalled()
    except Interrupted as e:  # the job, and a multirun with it, stop here; aer.cli.boundary sets the status
        write_json(record, {"status": "interrupted", "error": str(e), "overrides": list(hc.overrides.task)})
        if hc.mode == RunMode.MULTIRUN:
            from aer.runs import write_summary

            write_summary(hc.sweep.dir)
            log.error("job %s %s: the sweep stops here (its summary: %s)", hc.job.num, e,
                      os.path.join(hc.sweep.dir, "summary.md"))
        raise
    except Exception as e:  # noqa: BLE001 — recorded, then reported
        cause = _unwrapped(e)
        msg = one_line(cause)
        write_json(record, {"status": "failed", "error": f"{type(cause).__name__}: {msg}",
                            "overrides": list(hc.overrides.task)})
        if not is_user_error(cause):
            log.error("%s", traceback.format_exc())
        return fail(msg)
    if isinstance(result, dict) and result.get("status") == "diverged":
        return fail(f"the run diverged: {result.get('diverged')}", result)
    return result


def _hydra(name: str) -> Callable[[], None]:
    """The command `name` on conf/<name>.yaml (the packaged configs, aer.paths.CONFIGS)."""

    def command() -> None:
        import hydra

        import aer.config  # noqa: F401 — registers the config schema and resolvers
        from aer.paths import CONFIGS

        module = importlib.import_module(f"aer.{name}")

        def main(cfg) -> dict | None:
            return job(module.run, name, cfg)

        main.__doc__ = module.__doc__
        boundary(hydra.main(version_base="1.3", config_path=CONFIGS, config_name=name)(main))

    command.__name__ = name
    return command


_signalled: list[int] = []  # the signals received: a raise from the handler is lost where it lands in a finalizer


def _interrupt(signum: int, frame) -> None:
    _signalled.append(signum)
    raise Interrupted(signum)


def check_signalled() -> None:
    """Raises Interrupted for a signal whose handler's raise was swallowed (it landed in a finalizer or a
    weakref callback, where Python only prints it): the work went on, but the command still ends as interrupted."""
    if _signalled:
        raise Interrupted(_signalled[0])


def catch_signals() -> None:
    """SIGTERM and SIGINT raise aer.errors.Interrupted where the command is (Lightning's own SIGTERM handling
    calls this handler too, during fit)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)


def interrupted(e: Interrupted) -> None:
    print(f"error: {e}: stopped, its files left whole (a training run resumes with the same command and "
          f"ckpt_path=last)", file=sys.stderr)
    sys.exit(128 + e.signum)


def boundary(main: Callable[[], object]) -> None:
    """Runs `main` so that a config Hydra itself rejects (an unknown key or group option, an override that
    does not parse) is reported in one line, like aer's own errors; then says what failed in a multirun.

    HYDRA_FULL_ERROR=1 makes Hydra raise those errors instead of printing them over several lines; a user who
    set it already gets Hydra's full report, as they asked.
    """
    from aer.sweep import OUTCOME

    catch_signals()
    full = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
        check_signalled()
    except Interrupted as e:
        interrupted(e)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 — Hydra's and OmegaConf's composition errors are the user's
        if full or not is_user_error(e):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)
    finally:
        if full is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if OUTCOME:
        for msg in OUTCOME.values():
            print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)


def argparse_command(parse: Callable[[list[str] | None], Callable[[], int | None]]) -> Callable[..., int]:
    """An argparse command: `parse(argv)` builds its settings and returns the work to run; the work's user
    errors are reported in one line (status 1), Ctrl-C as `interrupted` (status 130)."""

    def command(argv: list[str] | None = None) -> int:
        catch_signals()
        try:
            status = parse(argv)() or 0
            check_signalled()
            return status
        except Interrupted as e:
            print(f"error: {e}; rerun the same command to go on", file=sys.stderr)
            return 128 + e.signum
        except Exception as e:  # noqa: BLE001 — a user's error in one line, anything else with its traceback
            if not is_user_error(e):
                raise
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 1

    return command


train = _hydra("train")
evaluate = _hydra("evaluate")
ensemble = _hydra("ensemble")
predict = _hydra("predict")
export = _hydra("export")
thresholds = _hydra("thresholds")


def _argparse(module: str) -> Callable[[list[str] | None], int]:
    """The argparse command whose `parse(argv)` lives in `module`."""
    return argparse_command(lambda argv: importlib.import_module(module).parse(argv))


data = _argparse("aer.data.__main__")
report = _argparse("aer.report.cli")
compare = _argparse("aer.compare")

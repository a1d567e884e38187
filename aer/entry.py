"""What the root scripts share: failures turned into clear, recorded, one-line errors."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from aer.utils import write_json

log = logging.getLogger("aer")

# Errors a user can fix from the message alone: shown in one line, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, FloatingPointError, OSError,
               MisconfigurationException, OmegaConfBaseException)
# Lines of OmegaConf's messages that locate the key a second time
_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable HYDRA_FULL_ERROR",
          "Config search path", "provider=")


def one_line(e: BaseException) -> str:
    """The message of `e` (and of its cause, for Hydra's wrappers) folded into one line."""
    texts = [str(e)] + ([str(e.__cause__)] if isinstance(e, HydraException) and e.__cause__ else [])
    out = []
    for text in texts:
        folded = " ".join(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE))
        if folded and folded not in out:
            out.append(folded)
    return out[0] + (f" ({out[1]})" if len(out) > 1 else "") if out else type(e).__name__


def _unwrapped(e: BaseException) -> BaseException:
    """A constructor's error that Hydra's instantiate wrapped is reported as the constructor's own."""
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def task(fn: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict | None]:
    """Runs `fn(cfg)`; on failure writes metrics.json with the error so a sweep's summary shows it.

    In a multirun the failure is logged and the sweep goes on with the next job; in a single run
    the process exits with status 1 and a one-line message. A run whose result says it diverged is
    reported the same way (its metrics.json and checkpoints are kept).
    """

    def wrapped(cfg: DictConfig):
        hc = HydraConfig.get()
        try:
            result = fn(cfg)
        except Exception as e:  # noqa: BLE001 — recorded, then re-raised or reported
            cause = _unwrapped(e)
            user = isinstance(cause, USER_ERRORS) or isinstance(e, InstantiationException)
            msg = one_line(cause)
            write_json(os.path.join(hc.runtime.output_dir, "metrics.json"),
                       {"status": "failed", "error": f"{type(cause).__name__}: {msg}",
                        "overrides": list(hc.overrides.task)})
            if not user:
                log.error("%s", traceback.format_exc())
            return _fail(hc, msg)
        if isinstance(result, dict) and result.get("status") == "diverged":
            return _fail(hc, f"the run diverged: {result.get('diverged')}", result)
        return result

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _fail(hc, msg: str, result: dict | None = None):
    if hc.mode == RunMode.MULTIRUN:
        log.error("job %s failed: %s", hc.job.num, msg)
        return result
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def cli(main: Callable[[], object]) -> None:
    """Runs a `@hydra.main` function so that a config Hydra itself rejects (an unknown key or group
    option, an override that does not parse) is reported in one line, like aer's own errors.

    HYDRA_FULL_ERROR=1 makes Hydra raise those errors instead of printing them over several lines;
    a user who set it already gets Hydra's full report, as they asked.
    """
    if os.environ.get("HYDRA_FULL_ERROR"):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)

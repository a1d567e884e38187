"""What the root scripts share: a Hydra task wrapper that turns failures into clear, recorded errors."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from aer.utils import write_json

log = logging.getLogger("aer")

# Errors a user can fix from the message alone: shown in one line, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, FloatingPointError, OSError)


def task(fn: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict | None]:
    """Runs `fn(cfg)`; on failure writes metrics.json with the error so a sweep's summary shows it.

    In a multirun the failure is logged and the sweep goes on with the next job; in a single run
    the process exits with status 1 and a one-line message.
    """

    def wrapped(cfg: DictConfig):
        try:
            return fn(cfg)
        except Exception as e:  # noqa: BLE001 — recorded, then re-raised or reported
            hc = HydraConfig.get()
            out = Path(hc.runtime.output_dir)
            msg = f"{type(e).__name__}: {e}"
            write_json(out / "metrics.json", {"status": "failed", "error": msg,
                                              "overrides": list(hc.overrides.task)})
            if not isinstance(e, USER_ERRORS):
                log.error("%s", traceback.format_exc())
            if hc.mode == RunMode.MULTIRUN:
                log.error("job %s failed: %s", hc.job.num, msg)
                return None
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped

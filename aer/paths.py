"""Where aer writes by default: nowhere inside its own install (site-packages) or checkout.

- run outputs: `outputs/` under the current directory (Hydra's convention), or `$AER_LOG_DIR`;
- data aer makes (demo sets) and caches of data it did not make, venvs of the checkout's framework
  study (`python -m studies.frameworks`): `$AER_HOME`, default `$XDG_CACHE_HOME/aer` (`~/.cache/aer`);
  demo sets in `$AER_DATA_DIR` if set.

The configs reach these through the `${aer.home:}` and `${aer.cwd:}` resolvers (conf/paths/default.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

# The configs as a package (aer/conf links to the checkout's conf/, and ships in the wheel): the
# `config_path` of every `@hydra.main` inside aer, so that it works installed and from a checkout.
CONFIGS = "pkg://aer.conf"


def resolved_path(path: str | os.PathLike | None) -> Path | None:
    """A path the user typed, relative to where they ran the command (Hydra's runs do not change the cwd)."""
    return Path(path).expanduser().absolute().resolve() if path else None


def aer_home() -> Path:
    """`$AER_HOME`, else `$XDG_CACHE_HOME/aer`, else `~/.cache/aer`: everything aer keeps between runs."""
    if os.environ.get("AER_HOME"):
        return Path(os.environ["AER_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aer"


if not OmegaConf.has_resolver("aer.home"):
    OmegaConf.register_new_resolver("aer.home", lambda: str(aer_home()))
if not OmegaConf.has_resolver("aer.cwd"):
    # Absolute, so that a path made from it (an MLflow store, a resumed run) means the same from any process
    OmegaConf.register_new_resolver("aer.cwd", os.getcwd)

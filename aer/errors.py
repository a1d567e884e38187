"""Errors as users read them: the one formatter of one-line messages, and the one rule of which errors a
user can fix from the message alone (shown without a traceback)."""

from __future__ import annotations

import re


class UserError(Exception):
    """An error a user can fix from its message (aer's own kinds that are no ValueError or OSError)."""


class Refused(BaseException):
    """A refusal raised where Hydra would swallow an Exception (its callbacks warn and go on): the command
    must not start. aer.cli reports it in one line."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT (Ctrl-C) arrived: the command stops where it is, its files left whole, and ends with
    status 128 + the signal's number (aer.cli)."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


# Errors a user can fix from the message alone. Lightning's and OmegaConf's are named by their module, so
# that this module imports neither.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, KeyError, FloatingPointError, OSError)
USER_ERROR_MODULES = ("lightning_fabric.utilities.exceptions", "omegaconf.errors", "hydra.errors")
# Lines of OmegaConf's and Hydra's messages that locate the key a second time
_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable HYDRA_FULL_ERROR",
          "Config search path", "provider=")


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, USER_ERRORS) or _from(e, USER_ERROR_MODULES)


def _from(e: BaseException, modules: tuple[str, ...]) -> bool:
    """Whether `e` is of a class (or a subclass of one) defined in one of `modules`."""
    return any(cls.__module__ in modules for cls in type(e).__mro__)


def one_line(e: BaseException | str, typed: bool = False) -> str:
    """A message (an error's, with its cause's where Hydra wraps one) folded into one line; `typed`: the
    error's type and its message's first line, for a cause quoted inside another message."""
    if isinstance(e, str):
        return " ".join(e.split())
    if typed:
        return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__
    texts = [str(e)]
    if _from(e, ("hydra.errors",)) and e.__cause__ is not None:
        texts.append(str(e.__cause__))
    out = []
    for text in texts:
        folded = " ".join(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE))
        if folded and folded not in out:
            out.append(folded)
    return out[0] + (f" ({out[1]})" if len(out) > 1 else "") if out else type(e).__name__


def first_line(e: BaseException) -> str:
    """The first line of an error's message (a library's multi-line error quoted in aer's own)."""
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def first_sentence(text: str) -> str:
    """The first sentence of a paragraph of advice (torch's refusals), folded."""
    return re.split(r"(?<=[.!?])\s", one_line(text), maxsplit=1)[0].rstrip(".")

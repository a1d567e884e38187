"""Settings, each declared once: in the signature of the code that takes it.

A setting's default and type are the default and annotation of a parameter of the class or
function that uses it (`AudioSetDataModule`, a network, an init scheme, `OptimSettings`); its
allowed values are part of the annotation: `Literal[...]` for choices, `Annotated[T, Range(...)]`
for bounds. From one declaration, `structured()` builds the dataclass that Hydra's ConfigStore
holds (a wrong type or an unknown key then fails when the config is composed), and `check()`
validates values (choices, bounds), once, where the object is built, before any work.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from omegaconf import MISSING


@dataclass(frozen=True)
class Range:
    """Bounds of a number: lo <= v (lo < v when open_lo) and v <= hi."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False

    def holds(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo):
            return False
        return self.hi is None or v <= self.hi

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"between {self.lo:g} and {self.hi:g}"
        if self.lo is not None:
            return f"{'above' if self.open_lo else 'at least'} {self.lo:g}"
        return f"at most {self.hi:g}"


Positive = Annotated[int, Range(1)]
NonNegative = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]


def split_hint(hint) -> tuple[Any, Range | None, bool]:
    """(the bare type, its Range if annotated, whether None is allowed)."""
    rng = None
    if typing.get_origin(hint) is Annotated:
        hint, *meta = typing.get_args(hint)
        rng = next((m for m in meta if isinstance(m, Range)), None)
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) == 1:
            inner, inner_rng, _ = split_hint(args[0])
            return inner, rng or inner_rng, optional
        hint = Union[tuple(args)]  # noqa: UP007 — built at run time
    return hint, rng, optional


def _expected(hint) -> str | None:
    """What a value of `hint` must be, in words; None when anything goes (unions, containers)."""
    bare, rng, _ = split_hint(hint)
    if typing.get_origin(bare) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(bare)))
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(bare)
    if bare is int and rng == Range(1):
        return "a positive integer"
    if kind and rng:
        return f"{kind} {rng.describe()}"
    return kind


def _valid(value, hint) -> bool:
    bare, rng, optional = split_hint(hint)
    if value is None:
        return optional
    if typing.get_origin(bare) is Literal:
        return value in typing.get_args(bare)
    if bare is bool:
        return isinstance(value, bool)
    if bare in (int, float):
        kinds = (int,) if bare is int else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool) and (rng is None or rng.holds(value))
    if bare is str:
        return isinstance(value, str)
    return True


def hints(target: Callable) -> dict[str, Any]:
    """Parameter annotations of a function, a class's __init__, or a dataclass, with Annotated kept."""
    fn = target if dataclasses.is_dataclass(target) or not isinstance(target, type) else target.__init__
    return typing.get_type_hints(fn, include_extras=True)


def check(target: Callable, values: Mapping[str, Any], prefix: str) -> None:
    """Raises ValueError naming `prefix.key` for a value that `target`'s signature does not allow."""
    params = inspect.signature(target).parameters
    known = hints(target)
    for key, value in values.items():
        if key not in params:
            allowed = ", ".join(p for p in params if p != "self")
            raise ValueError(f"{prefix + '.' if prefix else ''}{key}: not a setting here (expected one of {allowed})")
        hint = known.get(key)
        if hint is not None and not _valid(value, hint):
            raise ValueError(f"{prefix + '.' if prefix else ''}{key}={value!r}: expected {_expected(hint) or hint}"
                             + (" or null" if split_hint(hint)[2] else ""))


def _config_type(hint, optional: bool) -> Any:
    """The type OmegaConf can hold for `hint` (it has no Literal, no unions but Optional)."""
    bare, _, none_ok = split_hint(hint)
    if typing.get_origin(bare) is Literal:
        bare = type(typing.get_args(bare)[0])
    elif dataclasses.is_dataclass(bare):
        bare = structured(bare)
    elif bare not in (bool, int, float, str):
        return Any
    return Optional[bare] if (optional or none_ok) else bare  # noqa: UP045 — OmegaConf reads typing.Optional


@functools.cache
def structured(settings: type, optional: bool = False, **fields: Any) -> type:
    """The dataclass OmegaConf can type-check, with the fields and defaults of the dataclass `settings`.

    `fields`: {name: default} put first (e.g. `_target_`); `optional`: every field None by default
    (the overlay configs of evaluate/ensemble, where only what is given counts).
    """
    known = hints(settings)
    out: list[tuple] = [(k, Any, dataclasses.field(default=v)) for k, v in fields.items()]
    for f in dataclasses.fields(settings):
        tp = _config_type(known[f.name], optional)
        if optional:
            out.append((f.name, tp, dataclasses.field(default=None)))
        elif dataclasses.is_dataclass(tp):  # a nested section: its schema's own defaults
            out.append((f.name, tp, dataclasses.field(default_factory=tp)))
        elif f.default_factory is not dataclasses.MISSING:
            out.append((f.name, tp, dataclasses.field(default_factory=f.default_factory)))
        elif isinstance(f.default, (list, tuple, dict)):
            out.append((f.name, tp, dataclasses.field(default_factory=lambda d=f.default: type(d)(d))))
        else:
            out.append((f.name, tp, dataclasses.field(default=MISSING if f.default is dataclasses.MISSING
                                                      else f.default)))
    suffix = "Overrides" if optional else "Schema"
    return dataclasses.make_dataclass(settings.__name__ + suffix, out)

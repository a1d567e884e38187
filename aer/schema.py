"""The rules of settings, in one place: a setting's type and allowed values are its dataclass field's
annotation (`Literal[...]` for choices, `Annotated[T, Range(...)]` for bounds), checked by `check`.

`Section` (aer.settings' base) calls `check` once, when the object is built; `structured()` derives
from the same dataclass the schema Hydra's ConfigStore holds, so that a wrong type or an unknown key
fails when the config is composed. No torch here: a bad value is reported before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from omegaconf import MISSING


@dataclass(frozen=True)
class Range:
    """Bounds of a number: lo <= v (lo < v when open_lo; v < hi when open_hi) and v <= hi."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def holds(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.open_hi else v <= self.hi)

    def describe(self) -> str:
        low = None if self.lo is None else f"{'above' if self.open_lo else 'at least'} {self.lo:g}"
        high = None if self.hi is None else f"{'below' if self.open_hi else 'at most'} {self.hi:g}"
        if low and high and not (self.open_lo or self.open_hi):
            return f"between {self.lo:g} and {self.hi:g}"
        return " and ".join(p for p in (low, high) if p)


@dataclass(frozen=True)
class Example:
    """How a required setting is given, for the message when it is missing (e.g. `ckpt=<run>/best.ckpt`)."""

    text: str


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


def example(hint) -> str | None:
    if typing.get_origin(hint) is Annotated:
        return next((m.text for m in typing.get_args(hint)[1:] if isinstance(m, Example)), None)
    return None


def choices(hint) -> tuple | None:
    """The allowed values of a Literal setting, else None."""
    bare = split_hint(hint)[0]
    return typing.get_args(bare) if typing.get_origin(bare) is Literal else None


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
    if bare is Any:
        return True
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


def has_rule(hint) -> bool:
    """Whether `check` can refuse some value of this type (a choice, a bound, a scalar type)."""
    return _expected(hint) is not None


def hints(cls: type) -> dict[str, Any]:
    """The fields' annotations of a dataclass, with Annotated kept."""
    return typing.get_type_hints(cls, include_extras=True)


def key_of(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def check(cls: type, values: dict[str, Any], prefix: str) -> None:
    """Raises ValueError naming `prefix.key` for a value that its field's annotation does not allow: the one
    place where a setting's rule is applied."""
    known = hints(cls)
    for key, value in values.items():
        hint = known.get(key)
        if hint is not None and not _valid(value, hint):
            raise ValueError(f"{key_of(prefix, key)}={value!r}: expected {_expected(hint) or hint}"
                             + (" or null" if split_hint(hint)[2] else ""))


# field metadata: a field aer fills in itself (not a key users type)
INTERNAL = "internal"


def check_keys(cls: type, values: dict[str, Any], prefix: str) -> None:
    """Raises ValueError naming a key that is not a field of `cls`."""
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in fields:
            typed = [f.name for f in dataclasses.fields(cls) if not f.metadata.get(INTERNAL)]
            raise ValueError(f"{key_of(prefix, key)}: not a setting here (expected one of {', '.join(typed)})")


def check_given(obj) -> None:
    """Raises ValueError naming a required setting (default MISSING, `???` in a config) left unset: the
    class's own settings first, then those it inherits."""
    known = hints(type(obj))
    own = type(obj).__dict__.get("__annotations__", {})
    for f in sorted(dataclasses.fields(obj), key=lambda f: f.name not in own):
        if getattr(obj, f.name) is dataclasses.MISSING or getattr(obj, f.name) == MISSING:
            how = example(known[f.name])
            raise ValueError(f"{key_of(obj.KEY, f.name)} is missing" + (f": give it, e.g. {how}" if how else ""))


@dataclass
class Section:
    """A settings section; `KEY` is where it lives in the config (the prefix of its messages). Its values
    are checked once, when it is built; nested sections given as dicts are built as their own sections."""

    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        known = hints(type(self))
        for name in (f.name for f in dataclasses.fields(self)):
            inner = split_hint(known[name])[0]
            value = getattr(self, name)
            if isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, Section):
                setattr(self, name, inner.build(value))
        check_given(self)
        check(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, self.KEY)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, nested sections as dicts: what a checkpoint stores."""
        return dataclasses.asdict(self)

    @classmethod
    def build(cls, values: dict | None) -> Section:
        """From a config node's plain values (an unknown key named in the error)."""
        values = dict(values or {})
        check_keys(cls, values, cls.KEY)
        return cls(**values)


def sections(cls: type) -> list[type[Section]]:
    """`cls` and every Section class its fields hold, nested first."""
    out = []
    for hint in hints(cls).values():
        inner = split_hint(hint)[0]
        if isinstance(inner, type) and issubclass(inner, Section):
            out += sections(inner)
    return [*out, cls]


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
def structured(settings: type, optional: bool = False, open_fields: tuple[str, ...] = (), **fields: Any) -> type:
    """The dataclass OmegaConf can type-check, with the fields and defaults of the dataclass `settings`.

    `fields`: {name: default} put first; `optional`: every field None by default (the overlay configs of
    evaluate/ensemble, where only what is given counts); `open_fields`: fields left untyped (config groups
    typed by their own schemas, Lightning's nodes).
    """
    known = hints(settings)
    out: list[tuple] = [(k, Any, dataclasses.field(default=v)) for k, v in fields.items()]
    for f in dataclasses.fields(settings):
        if f.name in open_fields:
            out.append((f.name, Any, dataclasses.field(default=None)))
            continue
        tp = _config_type(known[f.name], optional)
        if optional:
            out.append((f.name, tp, dataclasses.field(default=None)))
        elif dataclasses.is_dataclass(tp):  # a nested section: its schema's own defaults
            out.append((f.name, tp, dataclasses.field(default_factory=tp)))
        elif f.default_factory is not dataclasses.MISSING:
            out.append((f.name, tp, dataclasses.field(default_factory=f.default_factory)))
        else:
            out.append((f.name, tp, dataclasses.field(default=MISSING if f.default is dataclasses.MISSING
                                                      else f.default)))
    suffix = "Overrides" if optional else "Schema"
    return dataclasses.make_dataclass(settings.__name__ + suffix, out)

"""A tiny name -> factory registry shared by models, attacks, defenses and profiles.

Why: every extension point of the collection (a new attack, defense, model or profile)
should be *one file plus one registry line*, and every lookup of a wrong name should say
which names are valid instead of raising a bare ``KeyError``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import types
import typing
from typing import Any, Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """Raised when a registry lookup fails; the message lists the valid names."""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def build_config(cls: type, overrides: dict[str, Any] | None, what: str) -> Any:
    """Instantiate dataclass ``cls`` from ``overrides``, rejecting unknown knobs by name.

    A silently ignored misspelt hyper-parameter (``alhpa=0.9``) is the worst kind of bug in
    a reproduction, so unknown keys fail loudly and list the valid ones.
    """
    overrides = dict(overrides or {})
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise UnknownNameError(
            f"unknown {what} option(s) {', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}"
        )
    try:
        return cls(**overrides)
    except InvalidFieldError as exc:  # name the knob set the user knows ("ft defense"), not the class
        raise InvalidFieldError(what, exc.field, exc.value, exc.valid) from None


def make_component(registry: "Registry", name: str, seed: int, knobs: dict[str, Any]) -> Any:
    """Instantiate the registered class ``name`` from its dataclass ``Config`` and ``knobs``
    (attacks and defenses share this shape: ``cls(cls.Config(**knobs), seed=seed)``)."""
    cls = registry.get(name)
    return cls(build_config(cls.Config, knobs, f"{name} {registry.kind}"), seed=seed)


def check_choice(value: Any, choices: tuple, what: str) -> None:
    """Reject a value outside a fixed set of choices, naming the valid ones."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(str, choices))}")


# --- declarative field checks ----------------------------------------------------------
# Why: a knob that is accepted but meaningless (``epochs=-5``, ``batch_size=0``,
# ``lr='abc'``, ``poison_rate=1.5``) either fails deep inside training with a bare
# traceback or, worse, runs and is stored as a real result. Every config dataclass
# declares each field's type (its annotation) and valid range (``knob(default, "[1, inf)")``)
# and calls :func:`check_fields` from ``__post_init__`` (or inherits :class:`Checked`), so
# a bad value fails at construction, naming the field, the value and what is valid.


class InvalidFieldError(ValueError):
    """A config field of the wrong type or out of its valid range; names the field, the
    value and the valid type/range/choices."""

    def __init__(self, what: str, field: str, value: Any, valid: str):
        self.what, self.field, self.value, self.valid = what, field, value, valid
        super().__init__(f"{what}: field {field} = {value!r} is invalid; valid: {valid}")


_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*$")


@dataclasses.dataclass(frozen=True)
class Interval:
    """A numeric range written as in mathematics: ``"[1, inf)"``, ``"(0, 1]"``, ``"(-inf, 0]"``.

    A bracket is a closed bound, a parenthesis an open one; ``inf`` is never inside, so a
    float field whose interval is unbounded still rejects ``nan`` and ``inf``.
    """

    lo: float
    hi: float
    lo_closed: bool
    hi_closed: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> "Interval":
        m = _INTERVAL.match(text)
        if not m:
            raise ValueError(f"bad interval {text!r}; write e.g. '[1, inf)' or '(0, 1]'")
        lo, hi = float(m.group(2)), float(m.group(3))
        if lo > hi:
            raise ValueError(f"bad interval {text!r}: lower bound above upper bound")
        return cls(lo, hi, m.group(1) == "[", m.group(4) == "]", f"{m.group(1)}{m.group(2)}, {m.group(3)}{m.group(4)}")

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value >= self.lo if self.lo_closed else value > self.lo
        below = value <= self.hi if self.hi_closed else value < self.hi
        return above and below

    def __str__(self) -> str:
        return self.text


def knob(default: Any = dataclasses.MISSING, valid: str | None = None, *, choices: tuple | None = None,
         nonempty: bool = False, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a checked range: ``epochs: int = knob(100, "[1, inf)")``.

    ``valid`` is an :class:`Interval` applied to a numeric value (to each element of a
    tuple/list value; strings and None are not range-checked); ``choices`` is a fixed set
    of allowed values; ``nonempty`` rejects an empty string/tuple. The type is taken from
    the field's annotation (see :func:`check_fields`).
    """
    meta = {"valid": None if valid is None else Interval.parse(valid), "choices": choices, "nonempty": nonempty}
    kw: dict[str, Any] = {"metadata": meta}
    if default is not dataclasses.MISSING:
        kw["default"] = default
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    return dataclasses.field(**kw)


_FINITE = Interval.parse("(-inf, inf)")


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool too


def _matches(value: Any, tp: Any) -> bool:
    """Does ``value`` have type ``tp`` (an annotation)? An int is a float; a bool is neither;
    a list is accepted for a tuple (configs round-trip through JSON)."""
    if tp is Any or isinstance(tp, TypeVar):
        return True
    if tp is None or tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is bool:
        return _is_bool(value)
    if tp is int:
        return isinstance(value, numbers.Integral) and not _is_bool(value)
    if tp is float:
        return isinstance(value, numbers.Real) and not _is_bool(value)
    if tp is tuple or origin is tuple or tp is list or origin is list:
        if not isinstance(value, (tuple, list)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            return False
        return not args or all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if isinstance(origin, type):
        return isinstance(value, origin)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this checker does not understand: no type check


_NAMES = {int: "integer", float: "number", str: "string", bool: "bool", dict: "dict", tuple: "tuple", list: "list"}


def _describe(tp: Any, interval: "Interval | None" = None) -> str:
    """``tp`` in words, the range attached to its numeric part: ``integer in [1, inf) or None``."""
    if tp is None or tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(a, interval) for a in args)
    rng = f" in {interval}" if interval is not None and interval is not _FINITE else ""
    if tp in (int, float):
        return ("finite " if interval is _FINITE else "") + _NAMES[tp] + rng
    if origin in (tuple, list) and args:
        return f"{origin.__name__} of {_describe(args[0], interval)}"
    if isinstance(tp, type):
        return _NAMES.get(tp, tp.__name__)
    return str(tp).replace("typing.", "")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _numbers(value: Any) -> list[float]:
    """The numeric values a range applies to: the value itself, or a tuple/list's elements."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    return [v for v in items if isinstance(v, numbers.Real) and not _is_bool(v)]


def check_fields(obj: Any, what: str | None = None) -> None:
    """Check every field of dataclass ``obj`` against its annotation and its ``knob``
    metadata; raise :class:`InvalidFieldError` naming the first bad one.

    Types: ``int`` takes integers only (not bools, not floats); ``float`` takes ints and
    floats (not bools, not strings) and, without a declared range, only finite values;
    ``bool`` takes bools only; ``X | None`` also takes None; ``tuple[X, ...]`` takes a tuple or
    list of X. Ranges and choices come from :func:`knob`.
    """
    what = what or type(obj).__name__
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        tp = hints.get(f.name, Any)
        interval: Interval | None = f.metadata.get("valid")
        choices = f.metadata.get("choices")
        if interval is None and _matches(1.5, tp):  # a float field: at least finite
            interval = _FINITE if not isinstance(value, (tuple, list)) else None
        valid = _describe(tp, interval)
        if choices is not None:
            valid = ", ".join(map(str, choices))
        if not _matches(value, tp):
            raise InvalidFieldError(what, f.name, value, f"{valid} (got {type(value).__name__})")
        if choices is not None and value not in choices:
            raise InvalidFieldError(what, f.name, value, valid)
        if interval is not None and any(v not in interval for v in _numbers(value)):
            raise InvalidFieldError(what, f.name, value, valid)
        if f.metadata.get("nonempty") and value is not None and len(value) == 0:
            raise InvalidFieldError(what, f.name, value, f"non-empty {valid}")


class Checked:
    """Mixin for config dataclasses: ``__post_init__`` runs :func:`check_fields`. A
    subclass with its own ``__post_init__`` must call ``super().__post_init__()``."""

    def __post_init__(self) -> None:
        check_fields(self)

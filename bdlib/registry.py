"""A tiny name -> factory registry shared by models, attacks, defenses and profiles.

Why: every extension point of the collection (a new attack, defense, model or profile)
should be *one file plus one registry line*, and every lookup of a wrong name should say
which names are valid instead of raising a bare ``KeyError``.
"""
from __future__ import annotations

import dataclasses
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
    return cls(**overrides)


def make_component(registry: "Registry", name: str, seed: int, knobs: dict[str, Any]) -> Any:
    """Instantiate the registered class ``name`` from its dataclass ``Config`` and ``knobs``
    (attacks and defenses share this shape: ``cls(cls.Config(**knobs), seed=seed)``)."""
    cls = registry.get(name)
    return cls(build_config(cls.Config, knobs, f"{name} {registry.kind}"), seed=seed)


def check_choice(value: Any, choices: tuple, what: str) -> None:
    """Reject a value outside a fixed set of choices, naming the valid ones."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(str, choices))}")

"""Name -> object registries, so that components are chosen by short names without if-chains."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Collection, Generic, Iterable, Iterator, TypeVar

from .errors import ConfigError, UnknownOptionError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection filled with a decorator.

    >>> ACTIVATIONS = Registry("activation")
    >>> @ACTIVATIONS.register("tanh")
    ... def _tanh(): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)


def keywords(function: Callable[..., Any], skip: Collection[str] = ()) -> list[str]:
    """The keyword arguments ``function`` takes by name (not ``*args``/``**kwargs``), less ``skip``."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds and p.name not in skip]


def check_keywords(what: str, given: Iterable[str], valid: Collection[str]) -> None:
    """Refuses keyword arguments outside ``valid``, so that a typo (``latnet_dim=8``) is an error
    rather than a silently built default: UnknownOptionError naming the first bad keyword, the
    closest valid one and all of them."""
    unknown = [name for name in given if name not in valid]
    if not unknown:
        return
    bad = unknown[0]
    close = difflib.get_close_matches(bad, list(valid), n=1)
    hint = f" (did you mean {close[0]}=?)" if close else ""
    raise UnknownOptionError(
        f"{what} got an unexpected keyword argument {bad}={hint}; it takes: {', '.join(sorted(valid))}"
    )

"""One registry per pluggable family: the name written in YAML maps to a class.

Unknown names fail at validation with the list of known ones; registering a name twice is a programming error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """Maps lower-case names to classes of one family (strategies, codecs, partition strategies, ...)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator that adds ``cls`` under ``name``; rejects malformed or duplicate names."""
        if not _NAME.match(name):
            raise ValueError(f"{self.family} name {name!r} must be lower_snake_case")

        def add(cls: type[T]) -> type[T]:
            if name in self._items:
                raise ValueError(
                    f"{self.family} {name!r} is already registered by {self._items[name].__name__}"
                )
            self._items[name] = cls
            cls.registered_name = name  # type: ignore[attr-defined]
            return cls

        return add

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; ``KeyError`` naming the known ones otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.family} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

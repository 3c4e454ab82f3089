"""One explicit registry type for rewrites, quant schemes, formats, weight sources and datasets."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import BuildError, InternalError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> implementation. Duplicates are a bug; a miss lists what exists."""

    def __init__(self, kind: str, config_key: str) -> None:
        self.kind = kind
        self.config_key = config_key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise InternalError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise BuildError(
                f"unknown {self.kind} {name!r} at config key {self.config_key!r}",
                hint=f"use one of: {', '.join(sorted(self._items)) or '(none registered)'}",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

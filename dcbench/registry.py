"""Typed registries with "did you mean" errors and entry-point plugins.

A registry maps lowercase names to objects (classes or factory functions). Third-party packages add
plugins through an entry-point group (for example ``dcbench.methods``); the group is loaded the
first time the registry is read, so the core never imports a plugin by name.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from dcbench.errors import DcbenchError

T = TypeVar("T")
log = logging.getLogger(__name__)


class Registry(Generic[T]):
    """A name → object table for one kind of plugin (``kind`` names it in error messages)."""

    def __init__(
        self, kind: str, entry_point_group: str | None = None, builtins: str | None = None
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtins = builtins  # a core module that registers the built-in entries on import
        self._items: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None and builtins is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (lowercase, unique)."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        if name != name.lower():
            raise ValueError(f"{self.kind} names are lowercase: {name!r}")
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        if self.builtins:
            importlib.import_module(self.builtins)
        if self.entry_point_group is None:
            return
        for entry_point in metadata.entry_points(group=self.entry_point_group):
            try:
                entry_point.load()  # importing the module runs its @register decorators
            except Exception as exc:  # a broken third-party plugin must not break the core
                log.warning("could not load %s plugin %r: %s", self.kind, entry_point.name, exc)

    def get(self, name: str) -> T:
        """The object registered as ``name``; a one-line error with suggestions otherwise."""
        self._load_plugins()
        key = name.strip().lower()
        if key in self._items:
            return self._items[key]
        raise DcbenchError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        choices = self.names()
        close = difflib.get_close_matches(name.lower(), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid choices: {', '.join(choices)}"

    def names(self) -> list[str]:
        """Registered names in registration order."""
        self._load_plugins()
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

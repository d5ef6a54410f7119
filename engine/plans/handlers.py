"""Registered module handlers: a module type -> the function that handles it, in one table.

In the style of torchao's registered module handlers: each layer kind registers itself with a
decorator, so supporting a new kind is one new function (or module), not one more branch in
an ``isinstance`` chain. Lookup walks the module's class hierarchy, most specific class first,
so a handler for ``QuantLinear`` wins over one for its base ``nn.Linear``.
"""
from __future__ import annotations

from collections.abc import Callable


class Handlers:
    """A table of handlers keyed by module type; ``what`` names the job in error messages."""

    def __init__(self, what: str):
        self.what = what
        self._table: dict[type, Callable] = {}

    def register(self, *types: type) -> Callable[[Callable], Callable]:
        """Decorator: ``@handlers.register(nn.Linear, QuantLinear)`` makes the function handle those types."""
        def deco(fn: Callable) -> Callable:
            for t in types:
                if t in self._table:
                    raise ValueError(f"{self.what}: {t.__name__} already has a handler "
                                     f"({self._table[t].__name__})")
                self._table[t] = fn
            return fn
        return deco

    def unregister(self, *types: type) -> None:
        for t in types:
            self._table.pop(t, None)

    def lookup(self, mod) -> Callable | None:
        """The handler registered for the most specific class of ``mod`` (None if none is)."""
        for cls in type(mod).__mro__:
            fn = self._table.get(cls)
            if fn is not None:
                return fn
        return None

    def types(self) -> tuple[type, ...]:
        return tuple(self._table)

    def __contains__(self, mod) -> bool:
        return self.lookup(mod) is not None

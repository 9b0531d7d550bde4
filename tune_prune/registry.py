"""A name -> object registry whose lookup errors list the valid names.

Used by the dataset and model registries (and any other "pick one by name"
table): a YAML typo should fail with the list of names that would have worked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that is not in a registry; the message lists the accepted names."""

    def __init__(self, kind: str, name: str, accepted: Iterable[str]):
        self.kind = kind
        self.name = name
        self.accepted = sorted(accepted)
        super().__init__(f"unknown {kind} {name!r}; accepted: {', '.join(self.accepted)}")

    def __reduce__(self):
        # Exceptions pickle through their args by default, which would call
        # __init__ with the message only; Ray ships exceptions between processes.
        return (type(self), (self.kind, self.name, self.accepted))


class Registry(Generic[T]):
    """A plain dict of name -> entry, filled by the ``register`` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, fn: T, *, name: str | None = None) -> T: ...

    @overload
    def register(self, fn: None = None, *, name: str | None = None) -> Callable[[T], T]: ...

    def register(self, fn=None, *, name=None):
        """Register ``fn`` under ``name`` (default: its ``__name__``); usable as a decorator.

        ``@REG.register``, ``@REG.register(name="x")`` and ``REG.register(obj, name="x")``
        all work. Registering a name twice raises ValueError, because a silent
        overwrite would make which entry wins depend on import order.
        """

        def add(entry: T) -> T:
            key = name if name is not None else getattr(entry, "__name__", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.kind} registry: cannot register {entry!r} without a name")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = entry
            return entry

        return add if fn is None else add(fn)

    def get(self, name: str) -> T:
        """Return the entry registered as ``name``; UnknownNameError lists the valid names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name" from a bad YAML value
            raise UnknownNameError(self.kind, str(name), self._entries) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"

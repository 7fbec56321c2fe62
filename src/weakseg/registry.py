"""One registry mechanism for everything weakseg builds by name: backbones, heads, methods and datasets.

A :class:`Registry` maps names to factories (functions or classes), each with a one-line description
for the listing commands (``weakseg models``, ``weakseg methods``, ``weakseg datasets``)::

    BACKBONES = Registry("backbone")

    @BACKBONES.register("resnet50")
    def resnet50(**kwargs) -> Backbone:   # its docstring's first line is the description
        ...

    BACKBONES.create("resnet50", output_stride=16)   # calls the factory
    BACKBONES.names()                                # sorted names

A name that is not registered raises :class:`UnknownNameError`, which lists the registered names and
suggests the closest one. A registry is a read-only mapping (``name in BACKBONES``, ``BACKBONES[name]``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from weakseg.io import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """A name that is not registered; the message lists the registered ones.

    A :class:`~weakseg.io.UserError` (the CLI prints it as one line, exit status 2), and a ``KeyError``
    and ``ValueError`` for callers that catch those.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def first_line(doc: str | None) -> str:
    """The first non-empty line of a docstring, stripped and without reST literal quotes ("" for none)."""
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip().replace("``", "")
    return ""


class Registry(Mapping[str, T], Generic[T]):
    """Named factories of one ``kind`` ("backbone", "head", "method", "dataset").

    Args:
        kind: what the entries are, for messages ("unknown backbone 'x'; available: ...").
        hint: appended to the unknown-name message (e.g. other accepted spellings).
    """

    def __init__(self, kind: str, *, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def add(self, name: str, entry: T, *, description: str | None = None) -> T:
        """Register ``entry`` under ``name``; the description defaults to its docstring's first line."""
        if not name:
            raise ValueError(f"a {self.kind} needs a non-empty name ({entry!r})")
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        self._descriptions[name] = description or first_line(getattr(entry, "__doc__", None))
        return entry

    def register(self, name: str, *, description: str | None = None) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@REGISTRY.register("name")``."""

        def decorate(entry: T) -> T:
            return self.add(name, entry, description=description)

        return decorate

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        """The entry of ``name``, or ``default`` (as ``dict.get``)."""
        return self._entries.get(name, default)

    def __getitem__(self, name: str) -> T:
        """The entry of ``name``; :class:`UnknownNameError` (listing the names) when there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the entry of ``name`` with the given arguments."""
        return self[name](*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def descriptions(self) -> dict[str, str]:
        """``{name: one-line description}``, sorted by name."""
        return {name: self._descriptions[name] for name in self.names()}

    def unknown_message(self, name: str) -> str:
        """ "unknown <kind> '<name>'; available: a, b, c[ hint][; did you mean 'b'?]"."""
        message = f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}"
        if self.hint:
            message += f" {self.hint}"
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        return message + (f"; did you mean '{close[0]}'?" if close else "")

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


__all__ = ["Registry", "UnknownNameError", "first_line"]

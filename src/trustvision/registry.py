"""One registry pattern for everything addressable by name (after timm's ``register_model``).

Attacks, robustness presets, CAM methods, architectures, audit sections and defences each live in a
:class:`Registry`; an entry is added where it is defined, with a decorator::

    ATTACKS = Registry("attack")

    @ATTACKS.register("pgd")
    class PGD(FixedBudgetAttack): ...

    ATTACKS.get("pgd")          # -> PGD; an unknown name is a one-line TrustVisionError listing the choices
    ATTACKS.names()             # -> ["fgsm", "pgd", ...] in registration order

Entries may be any object (a class, a function, a preset tuple).  ``help`` is the first line of the
entry's docstring unless given, and is what ``trustvision list`` prints.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import TrustVisionError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with a registering decorator and one-line errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str | None = None, *, help: str | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (default: its ``__name__`` lower-cased)."""
        def deco(obj: T) -> T:
            self.add(name or getattr(obj, "__name__", "").lower(), obj, help=help)
            return obj
        return deco

    def add(self, name: str, obj: T, *, help: str | None = None) -> T:
        """Register ``obj`` under ``name`` (a duplicate name is a programming error)."""
        if not name:
            raise ValueError(f"{self.kind} registry: empty name")
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = obj
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        self._help[name] = help if help is not None else (doc[0] if doc and not isinstance(obj, (tuple, dict))
                                                           else "")
        return obj

    def get(self, name: str) -> T:
        """The entry ``name`` (case-insensitive); a one-line :class:`TrustVisionError` naming the choices if unknown."""
        key = str(name).strip().lower()
        if key not in self._items:
            raise TrustVisionError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._items)}")
        return self._items[key]

    def help(self, name: str) -> str:
        """One line describing entry ``name``."""
        self.get(name)
        return self._help[str(name).strip().lower()]

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"

"""Validation of configuration dataclasses from their type hints, with errors that name the key.

A configuration read from ``audit.toml`` arrives as plain TOML values: a string where a list was meant
(``attacks = "pgd"``, which Python would happily iterate as ``['p', 'g', 'd']``), a number where a table
was meant (``robustness = 5``), text where a number was meant (``n_images = "abc"``).  :func:`check_config`
walks the fields of a dataclass instance and compares each value with the field's type hint *before any
work starts*; the first mismatch is a one-line :class:`~trustvision.errors.TrustVisionError` such as::

    robustness.attacks must be a list of strings, got 'pgd'

Supported hints: ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``list[T]``, ``dict[K, V]``,
bare ``list``/``dict``, unions and ``Optional`` (``X | None``), ``Any``, and nested dataclasses (given as an
instance or as a table, i.e. a ``dict`` whose keys must be the nested class's fields).  ``bool`` is never
accepted for ``int``/``float`` (TOML ``true`` is not a count).  Unknown hints are not checked.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Iterable, Mapping

from .errors import TrustVisionError

__all__ = ["check_config", "check_fields", "describe"]

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
          list: "a list", dict: "a table", type(None): "none"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "strings", list: "lists", dict: "tables"}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of the dataclass ``cls``'s init fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _args(hint: Any) -> tuple[Any, tuple]:
    """``(origin, args)`` of a hint; ``X | Y`` and ``Optional[X]`` have origin :data:`typing.Union`."""
    origin = typing.get_origin(hint)
    if origin is types.UnionType:
        origin = typing.Union
    return origin, typing.get_args(hint)


def describe(hint: Any, plural: bool = False) -> str:
    """Words for a hint: ``list[str]`` -> ``"a list of strings"``, ``int | None`` -> ``"an integer"``."""
    origin, args = _args(hint)
    if origin is typing.Union:                          # None is left out: TOML cannot write it
        return " or ".join(describe(a, plural) for a in args if a is not type(None))
    if dataclasses.is_dataclass(hint):
        return "tables" if plural else "a table"
    if origin in (list, tuple, set) or hint in (list, tuple, set):
        inner = f" of {describe(args[0], True)}" if args and args[0] is not Any else ""
        return ("lists" if plural else "a list") + inner
    if origin is dict or hint is dict:
        inner = f" of {describe(args[1], True)}" if len(args) == 2 and args[1] is not Any else ""
        return ("tables" if plural else "a table") + inner
    if plural:
        return _PLURAL.get(hint, getattr(hint, "__name__", str(hint)))
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (containers checked element by element; dataclass tables by key)."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    origin, args = _args(hint)
    if origin is typing.Union:
        return any(_matches(value, a) for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (hint, dict))          # a table's own keys are checked by _check_table
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, set):
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and (len(args) != 2 or all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True                                         # a hint this validator does not know: not checked


def _nested(hint: Any) -> type | None:
    """The dataclass a hint names (``Cfg`` or ``Cfg | None``), else None."""
    origin, args = _args(hint)
    for h in (args if origin is typing.Union else (hint,)):
        if dataclasses.is_dataclass(h) and isinstance(h, type):
            return h
    return None


def check_fields(cls: type, values: Mapping[str, Any], where: str = "") -> None:
    """Check a mapping of field values (e.g. one TOML table) against the dataclass ``cls``.

    Every key must be a field of ``cls`` and every value must match the field's hint; a ``dict`` given for a
    nested dataclass field is checked recursively with the key path (``robustness.attacks``).
    ``where`` prefixes the key in messages (``"robustness."``).

    Raises:
        TrustVisionError: one line naming the first unknown key or the first key whose value has the wrong type.
    """
    hints = _hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        table = f"[{where.rstrip('.')}] " if where else ""
        raise TrustVisionError(f"{table}unknown key(s) {unknown}; known: {sorted(hints)}")
    for key, value in values.items():
        hint = hints[key]
        if not _matches(value, hint):
            raise TrustVisionError(f"{where}{key} must be {describe(hint)}, got {value!r}")
        nested = _nested(hint)
        if nested is not None and isinstance(value, dict):
            check_fields(nested, value, where=f"{where}{key}.")


def check_config(obj: Any, at_least_one: Iterable[str] = ()) -> None:
    """Check every field of the dataclass instance ``obj`` against its type hint (see :func:`check_fields`).

    ``at_least_one``: integer fields that must be >= 1 when set (e.g. ``n_images``).  Call it first thing in
    ``__post_init__``, before values are used.

    Raises:
        TrustVisionError: one line naming the key, e.g. ``n_images must be an integer, got 'abc'``.
    """
    check_fields(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init})
    for key in at_least_one:
        value = getattr(obj, key)
        if value is not None and value < 1:
            raise TrustVisionError(f"{key} must be >= 1, got {value!r}")

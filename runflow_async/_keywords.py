"""Keyword options checked at run time: unknown names and plain types, from the annotations.

Typed signatures (``TypedDict`` with ``Unpack``, typed keywords, dataclass fields)
are what mypy checks; nothing checks them when the program runs, so a misspelled
option would silently become a default. These helpers check the same names and
types the signature declares, derived from it, so the two cannot drift::

    unknown option 'max_concurency'; did you mean 'max_concurrency'?

Shared by the client and the emulator (which may import the root modules only),
so both say it alike; each raises its own error class. Pure: no I/O. Only
simple hints are checked (``int``, ``float``, ``bool``, ``str``, ``Decimal``,
``None``, ``Literal``, classes, unions of these, a generic's container, a
Protocol's methods); values are never shown (a wrong-typed API key stays secret),
except a ``Literal``'s misspelled string.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from decimal import Decimal
from typing import Any, Literal, ParamSpec, TypeVar

__all__ = [
    "check_names",
    "check_types",
    "checked_fields",
    "checked_keywords",
    "closest",
    "keyword_names",
    "unknown_names_message",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def closest(name: str, candidates: Collection[str]) -> str | None:
    """Return the candidate closest to ``name`` (``difflib``), or ``None`` if none is close."""
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return close[0] if close else None


def _suggestion(name: str, candidates: Collection[str]) -> str:
    match = closest(name, candidates)
    if match is not None:
        return f"did you mean {match!r}?"
    return f"valid options are {', '.join(sorted(candidates))}."


def unknown_names_message(
    names: Iterable[str],
    accepted: Collection[str],
    *,
    where: str,
    also: Collection[str] = (),
) -> str | None:
    """Return the message naming each name not in ``accepted`` (or ``None`` if all are).

    Args:
        names: The names given.
        accepted: The names allowed.
        where: The entry point, as the message starts (``"client.batch()"``).
        also: More names to suggest from (say, a function's other keywords).
    """
    unknown = [name for name in names if name not in accepted]
    if not unknown:
        return None
    candidates = {*accepted, *also}
    parts = [f"unknown option {name!r}; {_suggestion(name, candidates)}" for name in unknown]
    return f"{where}: " + " ".join(parts)


def check_names(
    names: Iterable[str],
    accepted: Collection[str],
    *,
    where: str,
    error: type[Exception] = TypeError,
    also: Collection[str] = (),
) -> None:
    """Raise ``error`` naming every unknown name and the closest valid one.

    Raises:
        Exception: ``error``, if a name is not in ``accepted``.
    """
    message = unknown_names_message(names, accepted, where=where, also=also)
    if message is not None:
        raise error(message)


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _describe(hint: Any) -> str:
    if _is_union(hint):
        return _either([_describe(arg) for arg in typing.get_args(hint)])
    if typing.get_origin(hint) is Literal:
        return _either([repr(arg) for arg in typing.get_args(hint)])
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _accepts(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits ``hint``; ``None`` when the hint is not one we check."""
    if _is_union(hint):
        verdicts = [_accepts(value, arg) for arg in typing.get_args(hint)]
        return True if True in verdicts else (None if None in verdicts else False)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(type(value) is type(arg) and value == arg for arg in typing.get_args(hint))
    if isinstance(value, bool) and hint is not bool:
        return False  # a bool is an int to Python, never a count or an amount to us
    numbers: dict[Any, tuple[type, ...]] = {float: (int, float), Decimal: (int, Decimal)}
    if hint in numbers:
        return isinstance(value, numbers[hint])
    if hint is type(None):
        return value is None
    if isinstance(origin, type):  # frozenset[str], Callable[..., None], Mapping[...]
        return isinstance(value, origin)
    if not isinstance(hint, type) or hint is Any:
        return None
    if getattr(hint, "_is_protocol", False) and not getattr(hint, "_is_runtime_protocol", False):
        return all(hasattr(value, member) for member in _protocol_members(hint))
    return isinstance(value, hint)


def _protocol_members(protocol: type) -> set[str]:
    """The public methods a Protocol declares (and ``__call__``): a structural check."""
    bases = [b for b in protocol.__mro__ if b not in (typing.Protocol, typing.Generic, object)]
    names = {name for base in bases for name in vars(base) if not name.startswith("_")}
    return names | {"__call__" for base in bases if "__call__" in vars(base)}


def check_types(
    values: Mapping[str, Any],
    hints: Mapping[str, Any],
    *,
    where: str,
    error: type[Exception] = TypeError,
) -> None:
    """Raise ``error`` for the first value whose type does not fit its hint.

    A bool never passes for a number, nor a string for a number. A misspelled
    ``Literal`` choice gets the closest valid one suggested. Names without a
    hint are left alone.

    Raises:
        Exception: ``error``, naming the option and the types it takes.
    """
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None or _accepts(value, hint) is not False:
            continue
        if typing.get_origin(hint) is Literal and isinstance(value, str):
            choices = [arg for arg in typing.get_args(hint) if isinstance(arg, str)]
            raise error(f"{where}: unknown {name} {value!r}; {_suggestion(value, choices)}")
        raise error(f"{where}: {name} must be {_describe(hint)}, not {type(value).__name__}.")


def keyword_names(func: Callable[..., Any]) -> frozenset[str]:
    """Return the names ``func`` takes as keywords (``self`` left out)."""
    parameters = inspect.signature(func).parameters.values()
    return frozenset(p.name for p in parameters if p.kind in _KEYWORD_KINDS) - {"self"}


def checked_keywords(
    where: str,
    *,
    error: type[Exception] = TypeError,
    hints: Callable[[], Mapping[str, Any]] | None = None,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a function so that unknown keywords and wrong-typed arguments raise ``error``.

    The names and types are the function's own signature and annotations, so
    mypy's view and the run-time check are one list.

    Args:
        where: The entry point, as messages start (``"RunflowClient()"``).
        error: The exception class raised.
        hints: Returns the annotations to check against (default: the function's).
    """

    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        signature = inspect.signature(func)
        names = keyword_names(func)

        # Resolved at the first call, when every name the annotations use is imported.
        resolve = functools.cache(hints or functools.partial(typing.get_type_hints, func))

        @functools.wraps(func)
        def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            check_names(kwargs, names, where=where, error=error)
            given = signature.bind(*args, **kwargs).arguments
            check_types(given, resolve(), where=where, error=error)
            return func(*args, **kwargs)

        return checked

    return decorate


def checked_fields(*, error: type[Exception] = TypeError) -> Callable[[type[_T]], type[_T]]:
    """Decorate a dataclass so that unknown fields and wrong-typed values raise ``error``.

    Put it above ``@dataclass``; ``__post_init__`` still checks the ranges.
    """

    def decorate(cls: type[_T]) -> type[_T]:
        # The defining module's names: a public class's __module__ may be rewritten later.
        names = vars(sys.modules[cls.__module__])
        hints = functools.partial(typing.get_type_hints, cls, globalns=names)
        init = checked_keywords(f"{cls.__name__}()", error=error, hints=hints)(cls.__init__)
        type.__setattr__(cls, "__init__", init)
        return cls

    return decorate

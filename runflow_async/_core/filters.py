"""Building ``q`` filters for ``GET /v1/runs`` (docs: concepts/requests).

The grammar: ``field:value`` terms joined by ``AND``/``OR``, ``NOT``, parentheses;
string values are case-sensitive. Values that are not plain tokens are quoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["TERMINAL_FILTER", "any_of", "term"]

_BARE = re.compile(r"[A-Za-z0-9_.\-]+")


def term(field: str, value: str) -> str:
    """Return ``field:value``, quoting the value when it is not a plain token."""
    if _BARE.fullmatch(value):
        return f"{field}:{value}"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{field}:"{escaped}"'


def any_of(field: str, values: Iterable[str]) -> str:
    """Return ``field:a OR field:b ...`` (parenthesise it before combining with AND)."""
    return " OR ".join(term(field, v) for v in values)


TERMINAL_FILTER = any_of(
    "status_code",
    ["succeeded", "partial_succeeded", "failed", "canceled", "cancelled", "errored"],
)
"""Matches every terminal status (both cancel spellings and ``errored`` included)."""

"""Which ``q`` filters a list accepts (``EmulatorConfig.list_filters``), and what kind a ``q`` is.

https://docs.runflow.io/concepts/requests documents the ``q`` grammar with one
example, ``status_code:succeeded AND created_at>2026-04-01``: ``status_code`` and
``created_at`` are the only filter fields any Runflow source names. ``id:`` and
``client_ref:`` are our inference (runflow-api.md section 3.7: "not stated"). So
``list_filters`` models three servers:

* ``all``: every field filters (a term on an unknown field is false).
* ``no-id``: only the documented fields; a ``q`` with a term on any other
  field (``id``, ``client_ref``, ``cost``...) is refused.
* ``none``: any non-blank ``q`` is refused (``sort_by``, ``limit`` and the
  cursor still work). ``EmulatorConfig.list_ignores_filter`` is the silent
  variant: ``q`` is accepted and ignored.

A refusal is ``400 INVALID_QUERY``, the code this emulator already gives a ``q``
that does not parse, with the documented envelope and one ``errors`` entry on
``q`` (code ``unknown_filter_field`` or ``filter_not_supported``). No source says
what the real API answers for an unknown filter field: that is an assumption.
"""

from __future__ import annotations

from aiohttp import web

from runflow_async.emulator._query import Query, field_names
from runflow_async.emulator._responses import error_response
from runflow_async.emulator._validation import field_error

__all__ = [
    "DOCUMENTED_FIELDS",
    "FILTER_KINDS",
    "LIST_FILTER_MODES",
    "filter_kind",
    "refusal",
]

LIST_FILTER_MODES = ("all", "no-id", "none")
"""Values of ``EmulatorConfig.list_filters``."""

DOCUMENTED_FIELDS: frozenset[str] = frozenset({"status_code", "created_at"})
"""The filter fields Runflow's documentation names (the ``no-id`` server's only ones)."""

FILTER_KINDS = ("none", "id", "client_ref", "documented", "other")
"""Kinds of list request, by their ``q`` (``EmulatorCounters.list_requests_by_filter``).

``none``: no ``q``; ``id``: a term on ``id``; ``client_ref``: a term on
``client_ref`` and none on ``id``; ``documented``: terms on ``status_code`` and
``created_at`` only; ``other``: anything else.
"""


def filter_kind(query: Query | None) -> str:
    """Return which of ``FILTER_KINDS`` a parsed ``q`` is."""
    if query is None:
        return "none"
    names = field_names(query)
    if "id" in names:
        return "id"
    if "client_ref" in names:
        return "client_ref"
    return "documented" if names <= DOCUMENTED_FIELDS else "other"


def refusal(mode: str, query: Query | None) -> web.Response | None:
    """Return the ``400`` a server in ``mode`` answers ``query`` with, or ``None`` to answer it."""
    if query is None or mode == "all":
        return None
    if mode == "none":
        error = field_error("q", "filtering runs is not supported", "filter_not_supported")
        return error_response(
            400, "INVALID_QUERY", "Invalid q: filters are not supported.", [error]
        )
    unknown = sorted(field_names(query) - DOCUMENTED_FIELDS)
    if not unknown:
        return None
    names = ", ".join(repr(name) for name in unknown)
    error = field_error("q", f"unknown filter field {names}", "unknown_filter_field")
    return error_response(400, "INVALID_QUERY", f"Invalid q: unknown field {names}.", [error])

"""``GET /v1/runs``: query parameters, keyset cursors and the page walk.

https://docs.runflow.io/concepts/requests: ``limit`` (max 500), ``pq`` cursor,
``from_prev=true`` (walk backwards), ``q`` filter, ``fields`` projection,
``sort_by``. The docs give no default ``limit``: 50 is our assumption. Every
answer pages the same way, whatever its filter (or ``list_filters`` mode): at most
``limit`` items and ``next_pq`` while more match. Runs are created in
``created_at`` order, so both sort orders walk the insertion list; a cursor is the
``seq`` of the page's edge item plus a direction, so pages stay stable while runs
are being created: walking ``created_at:desc`` from the first page by
``next_pq`` shows every run that was listed when the walk began exactly once,
and no run created since. ``pq=<prev_pq>`` walks back by itself (the cursor
knows its direction); ``from_prev=true`` walks back from any cursor.

A query that is only ``id:``/``client_ref:`` equalities joined by ``OR``, or an
``AND`` with such an operand (a batch poller's ``(id:a OR id:b) AND (status...)``),
is answered from the indexes instead of a scan; ``created_at`` bounds that a
query requires (``created_at>=T AND ...``, a batch's time window) narrow a scan
to the runs created in that window, found by bisection.
"""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice, takewhile
from typing import Any

from runflow_async.emulator._query import Query, comparisons, parse_query, required_equalities
from runflow_async.emulator._runs import RunRecord, UrlFor
from runflow_async.emulator._store import RunStore
from runflow_async.emulator._validation import FieldError, field_error

__all__ = ["Cursor", "ListParams", "Page", "parse_list_params", "walk"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_SORT_FIELDS = frozenset({"created_at", "id"})  # ids are time-ordered too
_INDEXED = frozenset({"id", "client_ref"})


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position of a page edge: items after (``forward``) or before ``seq``, in list order."""

    seq: int
    forward: bool

    def encode(self) -> str:
        """Return the opaque ``pq`` string."""
        raw = f"{'n' if self.forward else 'p'}{self.seq}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor | None:
        """Parse a ``pq`` string; ``None`` if it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        if len(raw) < 2 or raw[0] not in "np" or not (raw[1:].isascii() and raw[1:].isdigit()):
            return None
        return cls(int(raw[1:]), raw[0] == "n")


@dataclass(frozen=True, slots=True)
class ListParams:
    """The validated query of a list request.

    Attributes:
        limit: Page size.
        cursor: Where the page starts, if not at an end.
        query: The ``q`` filter, if any.
        fields: Keys to keep in each item, if projected.
        ascending: ``created_at:asc`` rather than the default ``desc``.
    """

    limit: int
    cursor: Cursor | None
    query: Query | None
    fields: frozenset[str] | None
    ascending: bool


@dataclass(frozen=True, slots=True)
class Page:
    """One page of runs, in the requested order, with its neighbour cursors."""

    runs: list[RunRecord]
    next_pq: str | None
    prev_pq: str | None


def _parse_sort(text: str, errors: list[FieldError]) -> bool:
    keys = [part.strip() for part in text.split(",") if part.strip()]
    directions: list[bool] = []
    for key in keys:
        name, _, direction = key.partition(":")
        if name not in _SORT_FIELDS or direction not in ("", "asc", "desc"):
            errors.append(field_error("sort_by", f"cannot sort by {key!r}", "invalid_choice"))
        directions.append(direction != "desc")
    return directions[0] if directions else False


def parse_list_params(query: Mapping[str, str]) -> tuple[ListParams | None, list[FieldError]]:
    """Validate the list query string.

    Returns:
        The parameters and no errors, or ``None`` and every bad parameter.

    Raises:
        QuerySyntaxError: If ``q`` does not parse.
    """
    errors: list[FieldError] = []
    limit_text = query.get("limit", str(DEFAULT_LIMIT))
    limit_text = limit_text.strip()
    limit = int(limit_text) if limit_text.isascii() and limit_text.isdigit() else -1
    if not 1 <= limit <= MAX_LIMIT:
        errors.append(field_error("limit", "must be an integer in 1..500", "out_of_range"))
    cursor = None
    if query.get("pq"):
        cursor = Cursor.decode(query["pq"])
        if cursor is None:
            errors.append(field_error("pq", "is not a valid cursor", "invalid_cursor"))
    from_prev = query.get("from_prev", "false")
    if from_prev not in ("true", "false"):
        errors.append(field_error("from_prev", "must be true or false", "invalid_type"))
    elif cursor is not None and from_prev == "true":
        cursor = Cursor(cursor.seq, forward=False)
    ascending = _parse_sort(query.get("sort_by", "created_at:desc"), errors)
    fields = frozenset(f.strip() for f in query.get("fields", "").split(",") if f.strip())
    parsed = parse_query(query.get("q", ""))
    if errors:
        return None, errors
    return ListParams(limit, cursor, parsed, fields or None, ascending), []


def _candidates(
    store: RunStore, query: Query | None
) -> tuple[list[RunRecord], Query | None] | None:
    """Return the runs an index-friendly query can match, by ``seq``, or ``None`` to scan.

    Also returns what the runs must still be checked against (``None``: nothing).
    """
    required = None if query is None else required_equalities(query, _INDEXED)
    if required is None:
        return None
    terms, rest = required
    runs: dict[int, RunRecord] = {}
    for field, value in terms:
        if field == "id":
            run = store.by_id.get(value)
            if run is not None:
                runs[run.seq] = run
        elif value == "null":  # also matches every run without a client_ref: scan
            return None
        else:
            runs.update((run.seq, run) for run in store.with_client_ref(value))
    return [runs[seq] for seq in sorted(runs)], rest


def _getter(run: RunRecord, now: float, url_for: UrlFor) -> Callable[[str], Any]:
    return lambda name: run.field(name, now, url_for)


def _from(candidates: list[RunRecord], start: int, step: int) -> Iterable[RunRecord]:
    """Yield candidates from ``seq`` ``start`` (inclusive) moving by ``step`` (+1 or -1)."""
    seqs = [run.seq for run in candidates]
    if step > 0:
        return candidates[bisect_left(seqs, start) :]
    return reversed(candidates[: bisect_right(seqs, start)])


def _seq_bounds(store: RunStore, query: Query | None) -> tuple[int, int]:
    """Return the ``seq`` range (inclusive) that the ``created_at`` bounds of ``query`` allow."""
    low, high = 0, store.created - 1
    first = store.ledger.first_created
    for op, text in () if query is None else comparisons(query, "created_at"):
        if op in (">", ">="):
            low = max(low, first(text, after=op == ">"))
        else:
            high = min(high, first(text, after=op == "<=") - 1)
    return low, high


def _scan(store: RunStore, start: int, step: int, query: Query | None) -> Iterator[RunRecord]:
    """Yield kept runs from ``seq`` ``start`` on, within the ``created_at`` bounds of ``query``."""
    low, high = _seq_bounds(store, query)
    if step > 0:
        return takewhile(lambda run: run.seq <= high, store.scan(max(start, low), step))
    return takewhile(lambda run: run.seq >= low, store.scan(min(start, high), step))


def walk(
    store: RunStore, params: ListParams, now: float, url_for: UrlFor, *, lag: float = 0.0
) -> Page:
    """Return the page of runs ``params`` asks for, as of emulated time ``now``.

    ``lag``: a run appears in lists only this many emulated seconds after it
    was created (an eventually consistent index; reads by id see it at once).
    """
    cursor = params.cursor
    order = 1 if params.ascending else -1
    forward = cursor is None or cursor.forward
    step = order if forward else -order
    edge = 0 if params.ascending else store.created - 1
    start = edge if cursor is None else cursor.seq + step
    query = params.query
    indexed = _candidates(store, query)
    runs: Iterator[RunRecord]
    if indexed is None:
        runs, check = _scan(store, start, step, query), query
    else:
        runs, check = iter(_from(indexed[0], start, step)), indexed[1]
    if lag > 0:
        runs = (run for run in runs if run.created <= now - lag)
    if check is not None:
        runs = (run for run in runs if check.matches(_getter(run, now, url_for)))
    found = list(islice(runs, params.limit + 1))
    more = len(found) > params.limit
    found = found[: params.limit]
    if not forward:
        found.reverse()
    if not found:
        return Page(found, None, None)
    first, last = Cursor(found[0].seq, False), Cursor(found[-1].seq, True)
    if forward:
        return Page(found, last.encode() if more else None, first.encode() if cursor else None)
    return Page(found, last.encode(), first.encode() if more else None)

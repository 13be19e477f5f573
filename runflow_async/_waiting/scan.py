"""Steps 2 and 3 of the status chain: reading the organisation's newest runs a page at a time.

When the server refuses the ``id:`` filter (or contradicts it), the list poller
asks instead for what any Runflow server documents: the newest runs first
(``sort_by=created_at:desc``, ``limit`` 500, the ``next_pq`` cursor), either
under the documented filters (step 2: ``status_code:`` terminal statuses AND
``created_at>=`` the earliest watched create, less a margin) or with no filter
at all (step 3). A walk stops once it has paged back past the oldest run still
watched, or when the budget of pages is spent: a tick never pays more pages
than its runs in flight are worth (:attr:`Scan.runs_per_page`), and the runs
older than where the pages reached are handed to per-run polling.

Most listed runs may belong to other clients of the organisation: an item is
checked against the watched ids (a dict lookup) and its status before anything
is parsed, so a run that is not ours or not finished is never validated into a
model. The server is checked on each step's first pages: the newest-first
order, and under step 2 every item terminal and inside the time window; a
contradiction (or a 4xx refusal) raises :class:`ChainBroken`, which moves the
chain to its next step.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runflow_async._core.errors import APIStatusError, ServerError
from runflow_async._core.filters import TERMINAL_FILTER
from runflow_async._core.models import TERMINAL_STATUSES
from runflow_async._http.transport import Transport

__all__ = ["ChainBroken", "Scan", "ScanResult", "list_items", "refusal"]

_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)
PAGE_LIMIT = 500
"""The documented maximum ``limit`` of ``GET /v1/runs``."""
MARGIN = timedelta(seconds=1)
"""Subtracted from the earliest create in step 2's ``created_at>=`` bound (timestamp precision)."""


class ChainBroken(Exception):
    """The server refused or contradicted the current step of the status chain."""


def refusal(exc: APIStatusError) -> ChainBroken | None:
    """A :class:`ChainBroken` for a refusal (a 4xx but 429); ``None`` for a transient failure."""
    if isinstance(exc, ServerError) or exc.status == 429:
        return None
    return ChainBroken(f"the API answered {exc.status} to the list request")


def list_items(data: Any) -> list[dict[str, Any]]:
    """The ``items`` of a list answer, or :class:`ChainBroken` when there is none."""
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ChainBroken("the list response has no items array")
    return items


@dataclass
class ScanResult:
    """What one walk found: our finished runs' raw items, and where the pages reached."""

    finished: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    pages: int = 0
    reach: datetime | None = None
    """The oldest ``created_at`` listed when the budget stopped the walk short, else ``None``."""


def _created(item: Mapping[str, Any]) -> datetime:
    value = item.get("created_at")
    try:
        created = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        created = None
    if created is None or created.tzinfo is None:
        raise ChainBroken("a listed run has no usable created_at")
    return created


class Scan:
    """One step (2 or 3) of the chain: newest runs first, filtered or not.

    Args:
        transport: The HTTP layer (reads are retried there).
        documented: Step 2 (the documented filters) rather than step 3 (none).
        runs_per_page: Runs in flight that justify one page per tick.
    """

    def __init__(self, transport: Transport, *, documented: bool, runs_per_page: int = 4) -> None:
        self._transport = transport
        self.documented = documented
        self.runs_per_page = runs_per_page
        self.verified = False

    def budget(self, in_flight: int) -> int:
        """Pages one tick may read for ``in_flight`` runs (at least one)."""
        return max(1, -(-in_flight // self.runs_per_page))

    def _params(self, oldest: datetime) -> dict[str, str]:
        params = {"limit": str(PAGE_LIMIT), "sort_by": "created_at:desc"}
        if self.documented:
            bound = (oldest - MARGIN).isoformat(timespec="microseconds")
            params["q"] = f"({TERMINAL_FILTER}) AND created_at>={bound}"
        return params

    async def walk(self, watched: Mapping[str, datetime]) -> ScanResult:
        """Page back from the newest run to the oldest of ``watched`` (id -> ``created_at``)."""
        oldest = min(watched.values())
        bound = oldest - MARGIN
        budget = self.budget(len(watched))
        params = self._params(oldest)
        result = ScanResult()
        while True:
            try:
                response = await self._transport.request("GET", "/v1/runs", params=params)
            except APIStatusError as exc:
                broken = refusal(exc)
                if broken is None:
                    raise
                raise broken from exc
            data = response.data
            items = list_items(data)
            result.pages += 1
            self._read_page(items, watched, result, bound)
            cursor = data.get("next_pq")
            if not items or not isinstance(cursor, str) or not cursor:
                return result
            last = _created(items[-1])
            if last < oldest:
                return result
            if result.pages >= budget:
                result.reach = last
                return result
            params = {**params, "pq": cursor}

    def _read_page(
        self,
        items: list[dict[str, Any]],
        watched: Mapping[str, datetime],
        result: ScanResult,
        bound: datetime,
    ) -> None:
        if not self.verified and items:
            self._verify(items, bound)
        documented = self.documented
        for item in items:
            status = item.get("status_code")
            if documented and status not in _TERMINAL:
                raise ChainBroken(f"the API returned a {status!r} run under a terminal filter")
            run_id = item.get("id")
            if isinstance(run_id, str) and run_id in watched:
                result.seen.add(run_id)
                if status in _TERMINAL:
                    result.finished.append(item)

    def _verify(self, items: list[dict[str, Any]], bound: datetime) -> None:
        """The first page must come newest first (and, under step 2, inside the window)."""
        created = [_created(item) for item in items]
        if any(a < b for a, b in itertools.pairwise(created)):
            raise ChainBroken("the API did not list runs newest first")
        if self.documented and created[-1] < bound:
            raise ChainBroken("the API listed runs created before the created_at bound")
        self.verified = True

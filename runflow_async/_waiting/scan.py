"""Steps 2 and 3 of the status chain: reading the organisation's newest runs a page at a time.

When the server refuses the ``id:`` filter (or contradicts it), the list poller
asks instead for what any Runflow server documents: the newest runs first
(``sort_by=created_at:desc``, ``limit`` 500, the ``next_pq`` cursor), either
under the documented filters (step 2: ``status_code:`` terminal statuses AND
``created_at>=`` the earliest watched create, less a margin) or with no filter
at all (step 3). A walk stops as soon as every watched run is accounted for
(listed, or older than where the pages reached): once all are listed, once a
page reaches past the oldest, or once too few of them are left further back to
pay for another page (:meth:`Scan.worth_another_page`); those older runs are
handed to per-run polling.

Pages ask for the documented ``fields`` projection (:data:`FIELDS`, what
settling a run reads). The first page tells whether the server honoured it;
one that ignores it is asked without it from then on, and one that refuses it
is asked again without it once, before the step is judged broken.

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
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runflow_async._core.errors import APIStatusError, ServerError
from runflow_async._core.filters import TERMINAL_FILTER
from runflow_async._core.models import TERMINAL_STATUSES, listed_created_at
from runflow_async._http.transport import Transport

__all__ = ["FIELDS", "ChainBroken", "Scan", "ScanResult", "list_items", "refusal"]

logger = logging.getLogger("runflow_async")

_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)
PAGE_LIMIT = 500
"""The documented maximum ``limit`` of ``GET /v1/runs``."""
MARGIN = timedelta(seconds=1)
"""Subtracted from the earliest create in step 2's ``created_at>=`` bound (timestamp precision)."""
FIELDS = (
    "id",
    "status_code",
    "client_ref",
    "created_at",
    "completed_at",
    "cost",
    "output",
    "failure_code",
    "failure_message",
    "failure_stage_code",
)
"""The documented ``fields`` projection a scan asks for: what settling a run reads.

The status and ``created_at`` (the walk), ``client_ref`` (the run is the
create's own), ``completed_at`` (learned durations), ``cost`` (the budget),
``output`` (the images) and the ``failure_*`` reason. Every name is a field of
the documented run object, so a server that honours projections has no reason
to refuse it; one that refuses it anyway, or ignores it, is served without.
"""
_KEPT = frozenset(FIELDS)


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
    deferred: datetime | None = None
    """The oldest ``created_at`` listed when deeper pages were not due this walk, else ``None``."""


def _created(item: Mapping[str, Any]) -> datetime:
    created = listed_created_at(item)
    if created is None:
        raise ChainBroken("a listed run has no usable created_at")
    return created


class Scan:
    """One step (2 or 3) of the chain: newest runs first, filtered or not.

    Args:
        transport: The HTTP layer (reads are retried there).
        documented: Step 2 (the documented filters) rather than step 3 (none).
        runs_per_page: How many of our runs in flight further back make
            another page worth reading in a tick (fewer are read one by one).
        deep_share: Pages past the first are read again once the time since
            they were last read reaches this share of the age of the youngest
            watched run there (:meth:`_deep_due`).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        documented: bool,
        runs_per_page: int = 4,
        deep_share: float = 0.05,
    ) -> None:
        self._transport = transport
        self.documented = documented
        self.runs_per_page = runs_per_page
        self.deep_share = deep_share
        self._deep_at: float | None = None
        self.verified = False
        self.projection: bool | None = None
        """Whether the server honours :data:`FIELDS` (``None``: not yet known)."""

    def worth_another_page(self, further_back: int) -> bool:
        """Whether ``further_back`` of the watched runs, not yet listed, pay for another page.

        A page costs a request and the parsing of up to 500 runs, every tick; a
        run read on its own costs a request every few ticks. So a page is read
        for at least :attr:`runs_per_page` of our runs; fewer are read one by one.
        """
        return further_back >= self.runs_per_page

    def _params(self, oldest: datetime) -> dict[str, str]:
        params = {"limit": str(PAGE_LIMIT), "sort_by": "created_at:desc"}
        if self.projection is not False:
            params["fields"] = ",".join(FIELDS)
        if self.documented:
            bound = (oldest - MARGIN).isoformat(timespec="microseconds")
            params["q"] = f"({TERMINAL_FILTER}) AND created_at>={bound}"
        return params

    async def walk(self, watched: Mapping[str, datetime]) -> ScanResult:
        """Page back from the newest run to the oldest of ``watched`` (id -> ``created_at``).

        It stops at the first of: every watched run listed, no further page, a
        page that reaches past the oldest watched run, too few watched runs
        left further back to pay for another page (:attr:`ScanResult.reach`),
        or deep pages not due again yet (:attr:`ScanResult.deferred`).
        """
        oldest = min(watched.values())
        bound = oldest - MARGIN
        params = self._params(oldest)
        result = ScanResult()
        newest: datetime | None = None
        while True:
            data = await self._page(params)
            items = self._read_page(data, watched, result, bound)
            result.pages += 1
            cursor = data.get("next_pq")
            if not items or not isinstance(cursor, str) or not cursor:
                return result
            if len(result.seen) == len(watched):
                return result
            last = _created(items[-1])
            if last < oldest:
                return result
            newest = newest or _created(items[0])
            further, youngest = _further_back(watched, result.seen, last)
            if not self.worth_another_page(further):
                result.reach = last
                return result
            if result.pages == 1 and not self._deep_due((newest - youngest).total_seconds()):
                result.deferred = last
                return result
            params = {**params, "pq": cursor}
            if self.projection is False:
                params.pop("fields", None)

    def _deep_due(self, age: float) -> bool:
        """Whether pages past the first are read this walk, for runs ``age`` seconds old.

        The first page (the newest runs, most of a tick's news) is read every
        walk; the deeper ones, where only older runs still in flight lie, once
        the time since they were last read reaches :attr:`deep_share` of the
        age of the youngest watched run there (ages as the listed
        ``created_at`` tell them): such a run's notice is then late by at most
        that share of its age, and a long run at the back costs a page walk
        every few ticks, not every tick.
        """
        now = self._transport.clock.now()
        if self._deep_at is not None and now - self._deep_at < self.deep_share * age:
            return False
        self._deep_at = now
        return True

    async def _page(self, params: dict[str, str]) -> Any:
        """One page's JSON; a refused projection is asked once more without it."""
        try:
            response = await self._transport.request("GET", "/v1/runs", params=params)
        except APIStatusError as exc:
            broken = refusal(exc)
            if broken is None:
                raise
            if self.projection is not None or "fields" not in params:
                raise broken from exc
            # Maybe the projection it refuses, not the step: judged by one more request.
            self.projection = False
            logger.info("The run list refused a fields projection; listing full runs.")
            return await self._page({k: v for k, v in params.items() if k != "fields"})
        return response.data

    def _read_page(
        self,
        data: Any,
        watched: Mapping[str, datetime],
        result: ScanResult,
        bound: datetime,
    ) -> list[dict[str, Any]]:
        """A page's items; the watched ones are marked seen, the finished ones kept.

        Per listed run: one ``get`` of its id and one dict lookup (and, under
        step 2, its status): a run not ours is never looked at further.
        """
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ChainBroken("the list response has no items array")
        if not self.verified and items:
            self._verify(items, bound)
        if self.projection is None and items:
            # Honoured: no item carries a field it was not asked for. Ignored: stop asking.
            self.projection = all(_KEPT.issuperset(item) for item in items)
        try:
            _mark(items, watched, result, documented=self.documented)
        except AttributeError as exc:
            raise ChainBroken("the list response has an item that is not an object") from exc
        return items

    def _verify(self, items: list[Any], bound: datetime) -> None:
        """The first page must come newest first (and, under step 2, inside the window)."""
        if not all(isinstance(i, dict) for i in items):
            raise ChainBroken("the list response has an item that is not an object")
        created = [_created(item) for item in items]
        if any(a < b for a, b in itertools.pairwise(created)):
            raise ChainBroken("the API did not list runs newest first")
        if self.documented and created[-1] < bound:
            raise ChainBroken("the API listed runs created before the created_at bound")
        self.verified = True


def _further_back(
    watched: Mapping[str, datetime], seen: set[str], last: datetime
) -> tuple[int, datetime]:
    """How many watched runs not yet seen lie at or before ``last``, and the youngest of them."""
    count = 0
    youngest = last
    first = True
    for run_id, created in watched.items():
        if created <= last and run_id not in seen:
            count += 1
            if first or created > youngest:
                youngest, first = created, False
    return count, youngest


def _mark(
    items: list[dict[str, Any]],
    watched: Mapping[str, datetime],
    result: ScanResult,
    *,
    documented: bool,
) -> None:
    """Mark the watched runs of ``items`` seen and keep the finished ones (the hot loop)."""
    # ``__class__ is str`` (an attribute, not a call) keeps an odd id (a list,
    # unhashable) out of the dict lookup.
    seen = result.seen
    finished = result.finished
    if documented:
        for item in items:
            status = item.get("status_code")
            if status not in _TERMINAL:
                raise ChainBroken(f"the API returned a {status!r} run under a terminal filter")
            run_id = item.get("id")
            if run_id.__class__ is str and run_id in watched:
                seen.add(run_id)
                finished.append(item)
        return
    for item in items:
        run_id = item.get("id")
        if run_id.__class__ is str and run_id in watched:
            seen.add(run_id)
            if item.get("status_code") in _TERMINAL:
                finished.append(item)

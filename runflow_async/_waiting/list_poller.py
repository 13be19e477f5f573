"""Noticing that runs finished, cheaply, for many runs at once.

A batch slot is freed only when the client *notices* a run ended, so late
noticing costs throughput as well as latency, and per-run polling costs about
one GET per interval per run. The shared :class:`ListPoller` instead asks
``GET /v1/runs`` about many runs per request, so a tick costs a request or two
whatever the number of runs in flight. It walks a chain of ways to ask, each
verified on first use, each falling to the next when the server refuses it
(a 4xx) or contradicts it:

1. the ``id:`` filter, up to ``chunk_size`` runs per request (``q=(id:a OR id:b
   ...) AND (status_code:succeeded OR ...)``): only finished runs come back.
   This use of the documented grammar is our inference, so the first query
   names ids without a status filter and must get back exactly those runs (a
   run left out is tolerated while it is younger than the visibility window of
   :mod:`._http.visibility`: lists lag behind creates);
2. the documented filters only (terminal ``status_code:`` AND ``created_at>=``
   the earliest watched create), newest first, paging with the cursor;
3. no filter: the newest runs first, paging back only to the oldest watched run
   (steps 2 and 3: :mod:`._waiting.scan`);
4. per-run polling that learns run durations and polls first near the expected
   finish (with ``allow_fallback``; else the last list step keeps trying).

Steps 2 and 3 need each run's ``created_at``: a run given without one (a
resumed run) is read once to learn it, then scanned like the others (the
``list`` strategy reads no run on its own: it keeps waiting for the list); a run
older than the pages a tick may pay for reach is handed back to be read one by
one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Literal

import anyio
import pydantic

from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import APIError, APIStatusError, ConfigurationError
from runflow_async._core.filters import TERMINAL_FILTER, term
from runflow_async._core.models import TERMINAL_STATUSES, Run
from runflow_async._http.runs import fetch_run
from runflow_async._http.transport import Transport
from runflow_async._waiting.durations import DurationStats
from runflow_async._waiting.scan import ChainBroken, Scan, list_items, refusal

__all__ = ["DurationStats", "ListPoller", "Step", "WaitStrategy"]

logger = logging.getLogger("runflow_async")

WaitStrategy = Literal["auto", "list", "per_run"]
"""``auto``: the list poller's chain, ending in per-run polling if the server
rejects or contradicts every list step; ``list``: the list steps only; ``per_run``:
one adaptive poll loop per run."""

Step = Literal["id", "documented", "newest", "per_run"]
"""The chain's steps, in order (see the module docstring)."""

_STEPS: tuple[Step, ...] = ("id", "documented", "newest", "per_run")
_DOCUMENTED_FIRST: tuple[Step, ...] = ("documented", "id", "newest", "per_run")
_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)


class _Watch:
    __slots__ = ("created_at", "done", "run")

    def __init__(self, created_at: datetime | None) -> None:
        self.done = anyio.Event()
        self.run: Run | None = None
        self.created_at = created_at


class ListPoller:
    """One shared loop that reports on every watched run with a few list requests per tick.

    Args:
        transport: The HTTP layer (reads are retried there).
        stats: Learned durations; the tick is a fifteenth of the median run, so
            the median notice delay stays near 4% of a run.
        policy: The client's poll policy.
        allow_fallback: When every list step fails, hand waiters back to per-run
            polling (``auto``); otherwise keep trying the last one (``list``).
        chunk_size: Runs named per request in step 1 (keeps URLs well under 8 KiB).
        min_tick: Shortest tick in seconds.
        max_tick: Longest tick in seconds.
        runs_per_page: Steps 2-3: runs in flight that justify one page per tick.
        documented_first: Start with step 2, then step 1, 3, 4: for batches
            whose runs in flight outnumber ``chunk_size`` (step 1 then costs
            a request per ``chunk_size`` runs each tick, step 2 about one page).
        ticks_per_run: Ticks per median run (the tick's divisor, default 15).
    """

    def __init__(
        self,
        transport: Transport,
        stats: DurationStats,
        policy: PollPolicy,
        *,
        allow_fallback: bool = True,
        chunk_size: int = 100,
        min_tick: float = 0.1,
        max_tick: float = 2.0,
        runs_per_page: int = 4,
        documented_first: bool = False,
        ticks_per_run: float = 15.0,
    ) -> None:
        self._transport = transport
        self._stats = stats
        self._policy = policy
        self._allow_fallback = allow_fallback
        self._chunk_size = chunk_size
        self._min_tick = min_tick
        self._max_tick = max_tick
        # Several waiters may watch one run id (a server that answered two
        # creates with one run): each of them hears of it.
        self._watches: dict[str, list[_Watch]] = {}
        # Steps 2-3 read these, kept as waits come and go (not rebuilt per tick):
        # the live watched runs with their created_at, and those without one.
        self._dated: dict[str, datetime] = {}
        self._undated: dict[str, None] = {}
        self._terms: dict[str, str] = {}  # step 1: each watched id's ``id:`` term, built once
        self._wake = anyio.Event()
        self._scans = {
            "documented": Scan(transport, documented=True, runs_per_page=runs_per_page),
            "newest": Scan(transport, documented=False, runs_per_page=runs_per_page),
        }
        self._ticks_per_run = ticks_per_run
        self._steps = _DOCUMENTED_FIRST if documented_first else _STEPS
        self.step: Step = self._steps[0]
        self.verified = False

    @property
    def fell_back(self) -> bool:
        """Whether the chain ended in per-run polling."""
        return self.step == "per_run"

    @property
    def tick(self) -> float:
        """Seconds between polls (emulated seconds, as the clock counts them)."""
        return min(self._max_tick, max(self._min_tick, self._stats.median / self._ticks_per_run))

    async def wait(self, run_id: str, created_at: datetime | None = None) -> Run | None:
        """Wait until ``run_id`` is terminal; ``None`` means "poll it yourself".

        Args:
            run_id: The run.
            created_at: Its server ``created_at`` (the create's answer), which
                steps 2-3 need; without it they hand the run back at once.
        """
        if self.fell_back:
            return None
        watch = _Watch(created_at)
        self._watches.setdefault(run_id, []).append(watch)
        if run_id not in self._terms:
            self._terms[run_id] = term("id", run_id)
        if created_at is not None:
            self._dated.setdefault(run_id, created_at)
            self._undated.pop(run_id, None)
        elif run_id not in self._dated:
            self._undated[run_id] = None
        self._wake.set()
        try:
            await watch.done.wait()
        finally:
            watches = self._watches.get(run_id, [])
            if watch in watches:
                watches.remove(watch)
            if not watches:
                self._watches.pop(run_id, None)
                self._terms.pop(run_id, None)
                self._forget(run_id)
        return watch.run

    def _forget(self, run_id: str) -> None:
        """No live watch of ``run_id`` is left: steps 2-3 stop looking for it."""
        self._dated.pop(run_id, None)
        self._undated.pop(run_id, None)

    async def run(self) -> None:
        """Poll until cancelled (run it in the batch's task group)."""
        while not self.fell_back:
            if not self._watches:
                self._wake = anyio.Event()
                await self._wake.wait()
            await self._transport.clock.sleep(self.tick)
            await self.poll_once()

    async def poll_once(self) -> None:
        """Ask about every watched run once, with the chain's current step."""
        if self.step == "id":
            ids = list(self._watches)
            for start in range(0, len(ids), self._chunk_size):
                if not await self._attempt(self._poll_ids(ids[start : start + self._chunk_size])):
                    return
        elif self.step != "per_run":
            await self._attempt(self._poll_scan(self._scans[self.step]))

    async def _attempt(self, poll: Awaitable[None]) -> bool:
        """Run one poll; ``False`` when it broke the current step (the chain moved on)."""
        try:
            await poll
        except ChainBroken as exc:
            self._advance(exc)
            return False
        except (APIError, pydantic.ValidationError) as exc:
            # Transient after the HTTP layer's retries: the next tick tries again.
            logger.info("Run list poll failed (%s); retrying next tick.", exc)
        return True

    def _advance(self, exc: ChainBroken) -> None:
        following = self._steps[self._steps.index(self.step) + 1]
        if following == "per_run" and not self._allow_fallback:
            logger.warning("Run list poll unusable (%s); trying again.", exc)
            return
        logger.warning("Run list step %r unusable (%s); trying %r.", self.step, exc, following)
        self.step = following
        if following == "per_run":
            self._hand_back(list(self._watches))

    def _hand_back(self, run_ids: list[str]) -> None:
        """Release these runs' waiters with no run: they poll on their own.

        Only with ``allow_fallback``: the ``list`` strategy keeps watching them
        (and they time out if no list step ever reports them).
        """
        if not self._allow_fallback:
            return
        for run_id in run_ids:
            self._forget(run_id)
            for watch in self._watches.get(run_id, ()):
                watch.done.set()

    async def _poll_scan(self, scan: Scan) -> None:
        watched = dict(self._dated)  # a copy: waits come and go during the walk
        unknown = list(self._undated)
        if unknown and self._allow_fallback:  # no created_at (a resumed run): one read tells it
            await self._learn_created(unknown[: self._chunk_size], watched)
        if not watched:
            return
        result = await scan.walk(watched)
        now = self._transport.clock.now()
        if not scan.documented:
            self._check_listed(watched, result.seen, result.reach or result.deferred, now)
        for run_id in result.seen:
            self._transport.visibility.sighted(run_id, now)
        for item in result.finished:
            self._resolve(item)
        reach = result.reach
        if reach is not None:  # too far back to pay for: the older runs are read one by one
            self._hand_back([i for i, c in watched.items() if c <= reach and i not in result.seen])

    async def _learn_created(self, run_ids: list[str], watched: dict[str, datetime]) -> None:
        """Read each run once: a finished one is reported, the others join ``watched``.

        A run whose read fails (or shows no ``created_at``) is handed back, to
        be polled (and its error told) one by one.
        """

        async def learn(run_id: str) -> None:
            try:
                run = await fetch_run(self._transport, run_id)
            except (APIError, ConfigurationError) as exc:
                logger.info("Reading run %s failed (%s); it is polled on its own.", run_id, exc)
                self._hand_back([run_id])
                return
            if run.is_terminal:
                self._deliver(run)
            elif run.created_at is None:
                self._hand_back([run_id])
            else:
                for watch in self._watches.get(run_id, ()):
                    watch.created_at = run.created_at
                if run_id in self._undated:  # still watched after the read
                    self._undated.pop(run_id)
                    self._dated[run_id] = run.created_at
                watched[run_id] = run.created_at

        async with anyio.create_task_group() as tg:
            for run_id in run_ids:
                tg.start_soon(learn, run_id)

    def _check_listed(
        self, watched: dict[str, datetime], seen: set[str], reach: datetime | None, now: float
    ) -> None:
        """Unfiltered, the pages show every run they reach: one of ours missing contradicts them.

        A run is given the visibility window to show (lists lag behind creates);
        one whose send time is not known (sighted before, or forgotten) is not judged.
        """
        visibility = self._transport.visibility
        for run_id, created in watched.items():
            if run_id in seen or (reach is not None and created <= reach):
                continue
            sent_at = visibility.sent_at(run_id)
            if sent_at is not None and now - sent_at > visibility.window:
                raise ChainBroken(f"the API did not list run {run_id} within its reach")

    async def _poll_ids(self, chunk: list[str]) -> None:
        terms = self._terms  # a run may have left since the chunk was cut: built anew then
        ids = " OR ".join([terms[i] if i in terms else term("id", i) for i in chunk])
        filtered = self.verified
        q = f"({ids}) AND ({TERMINAL_FILTER})" if filtered else ids
        try:
            response = await self._transport.request(
                "GET", "/v1/runs", params={"q": q, "limit": str(min(500, len(chunk)))}
            )
        except APIStatusError as exc:
            broken = refusal(exc)
            if broken is None:
                raise
            raise broken from exc
        items = list_items(response.data)
        asked = set(chunk)
        seen = {item.get("id") for item in items}
        if not seen <= asked:
            raise ChainBroken("the API returned runs it was not asked about")
        now = self._transport.clock.now()
        if not self.verified:
            if seen == asked:
                self.verified = True
            elif self._past_window(asked - seen, now):
                raise ChainBroken("the API did not return every run it was asked about")
            # Else the missing runs may only lag behind in the list: ask again.
        for run_id in seen:  # how long runs take to show in lists (an upper bound)
            if isinstance(run_id, str):
                self._transport.visibility.sighted(run_id, now)
        for item in items:
            status = item.get("status_code")
            if status in _TERMINAL:
                self._resolve(item)
            elif filtered:
                raise ChainBroken(f"the API returned a {status!r} run under a terminal filter")

    def _past_window(self, missing: set[str], now: float) -> bool:
        """Whether a run the list left out was created longer than the visibility window ago."""
        visibility = self._transport.visibility
        for run_id in missing:
            sent_at = visibility.sent_at(run_id)
            if sent_at is None or now - sent_at > visibility.window:
                return True
        return False

    def _resolve(self, item: dict[str, Any]) -> None:
        self._deliver(Run.model_validate(item))

    def _deliver(self, run: Run) -> None:
        self._stats.add(run)
        self._forget(run.id)
        for watch in self._watches.get(run.id, ()):
            watch.run = run
            watch.done.set()

"""Noticing that runs finished, cheaply, for many runs at once.

A batch slot is freed only when the client *notices* a run ended, so late
noticing costs throughput as well as latency, and per-run polling costs about
one GET per interval per run. The shared :class:`ListPoller` instead asks
``GET /v1/runs`` about up to ``chunk_size`` runs per request (``q=(id:a OR id:b
...) AND (status_code:succeeded OR ...)``), so a tick costs a request or two
whatever the number of runs in flight, and only finished runs come back.

The filter grammar is documented (docs: concepts/requests) but this use of it is
not, so the poller verifies the server's answers on first use: its first query
names ids without a status filter and must get back exactly those runs (a run
left out is tolerated while it is younger than the visibility window of
:mod:`._http.visibility`: lists lag behind creates). Any
rejection (4xx) or contradiction (a run it did not ask for, a non-terminal
status under a terminal-only filter) switches the batch to per-run polling
that learns run durations and polls first near the expected finish.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import anyio
import pydantic

from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import APIError, APIStatusError, ServerError
from runflow_async._core.filters import TERMINAL_FILTER, any_of
from runflow_async._core.models import TERMINAL_STATUSES, Run
from runflow_async._http.transport import Transport
from runflow_async._waiting.durations import DurationStats

__all__ = ["DurationStats", "ListPoller", "WaitStrategy"]

logger = logging.getLogger("runflow_async")

WaitStrategy = Literal["auto", "list", "per_run"]
"""``auto``: the list poller, falling back to per-run polling if the server
rejects or contradicts it; ``list``: the list poller only; ``per_run``: one
adaptive poll loop per run."""

_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)


class _Fallback(Exception):
    """The server rejected or contradicted the list filter."""


class _Watch:
    __slots__ = ("done", "run")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.run: Run | None = None


class ListPoller:
    """One shared loop that reports on every watched run with a few list requests per tick.

    Args:
        transport: The HTTP layer (reads are retried there).
        stats: Learned durations; the tick is a fifteenth of the median run, so
            the median notice delay stays near 4% of a run.
        policy: The client's poll policy.
        allow_fallback: On rejection, hand waiters back to per-run polling
            (``auto``); otherwise keep trying the list (``list``).
        chunk_size: Runs named per request (keeps URLs well under 8 KiB).
        min_tick: Shortest tick in seconds.
        max_tick: Longest tick in seconds.
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
        self._wake = anyio.Event()
        self.verified = False
        self.fell_back = False

    @property
    def tick(self) -> float:
        """Seconds between polls (emulated seconds, as the clock counts them)."""
        return min(self._max_tick, max(self._min_tick, self._stats.median / 15))

    async def wait(self, run_id: str) -> Run | None:
        """Wait until ``run_id`` is terminal; ``None`` means "poll it yourself" (fallback)."""
        if self.fell_back:
            return None
        watch = _Watch()
        self._watches.setdefault(run_id, []).append(watch)
        self._wake.set()
        try:
            await watch.done.wait()
        finally:
            watches = self._watches.get(run_id, [])
            if watch in watches:
                watches.remove(watch)
            if not watches:
                self._watches.pop(run_id, None)
        return watch.run

    async def run(self) -> None:
        """Poll until cancelled (run it in the batch's task group)."""
        while not self.fell_back:
            if not self._watches:
                self._wake = anyio.Event()
                await self._wake.wait()
            await self._transport.clock.sleep(self.tick)
            await self.poll_once()

    async def poll_once(self) -> None:
        """Ask about every watched run once."""
        ids = list(self._watches)
        for start in range(0, len(ids), self._chunk_size):
            chunk = ids[start : start + self._chunk_size]
            try:
                await self._poll(chunk)
            except _Fallback as exc:
                if not self._allow_fallback:
                    logger.warning("Run list poll contradicted (%s); trying again.", exc)
                    continue
                logger.warning("Run list filter unusable (%s); polling runs one by one.", exc)
                self._fall_back()
                return
            except (APIError, pydantic.ValidationError) as exc:
                # Transient after the HTTP layer's retries: the next tick tries again.
                logger.info("Run list poll failed (%s); retrying next tick.", exc)

    def _fall_back(self) -> None:
        self.fell_back = True
        for watches in self._watches.values():
            for watch in watches:
                watch.done.set()  # run stays None: the waiter polls on its own

    async def _poll(self, chunk: list[str]) -> None:
        ids = any_of("id", chunk)
        filtered = self.verified
        q = f"({ids}) AND ({TERMINAL_FILTER})" if filtered else ids
        try:
            response = await self._transport.request(
                "GET", "/v1/runs", params={"q": q, "limit": str(min(500, len(chunk)))}
            )
        except APIStatusError as exc:
            if isinstance(exc, ServerError) or exc.status == 429:
                raise
            raise _Fallback(f"the API answered {exc.status} to the filter") from exc
        items = _items(response.data)
        asked = set(chunk)
        seen = {item.get("id") for item in items}
        if not seen <= asked:
            raise _Fallback("the API returned runs it was not asked about")
        now = self._transport.clock.now()
        if not self.verified:
            if seen == asked:
                self.verified = True
            elif self._past_window(asked - seen, now):
                raise _Fallback("the API did not return every run it was asked about")
            # Else the missing runs may only lag behind in the list: ask again.
        for run_id in seen:  # how long runs take to show in lists (an upper bound)
            if isinstance(run_id, str):
                self._transport.visibility.sighted(run_id, now)
        for item in items:
            status = item.get("status_code")
            if status in _TERMINAL:
                self._resolve(item)
            elif filtered:
                raise _Fallback(f"the API returned a {status!r} run under a terminal filter")

    def _past_window(self, missing: set[str], now: float) -> bool:
        """Whether a run the list left out was created longer than the visibility window ago."""
        visibility = self._transport.visibility
        for run_id in missing:
            sent_at = visibility.sent_at(run_id)
            if sent_at is None or now - sent_at > visibility.window:
                return True
        return False

    def _resolve(self, item: dict[str, Any]) -> None:
        run = Run.model_validate(item)
        self._stats.add(run)
        for watch in self._watches.get(run.id, ()):
            watch.run = run
            watch.done.set()


def _items(data: Any) -> list[dict[str, Any]]:
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _Fallback("the list response has no items array")
    return items

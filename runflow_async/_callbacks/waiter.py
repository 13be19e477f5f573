"""Waiting for runs by callback, with slow polling as the safety net.

A run created with the receiver's ``callback_url`` is watched on the
:class:`CallbackReceiver`. The signed delivery settles it with no request at
all when its payload carries the output (its cost comes in bulk from
:class:`CostLookup`); a payload without the output, or a failed run (whose
failure reason is not in the payload), costs one ``GET /v1/runs/{id}``.

Deliveries can be lost for good (receiver down, retries exhausted), so each run
is also read by a fallback schedule: first ``callback_fallback_after`` seconds
after it is watched, then every ``callback_fallback_interval`` (both on
:class:`PollPolicy`). In a batch the fallback reads go through a shared
:class:`ListPoller` ticking at that interval, so a tick costs a request per 100
overdue runs. Whichever way learns first settles the run; the other is dropped.

A forged callback never gets here: the receiver answers it 401 before parsing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import anyio
import pydantic

from runflow_async._callbacks.receiver import CallbackReceiver
from runflow_async._callbacks.watch import CallbackWatch, Deadlines
from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import APIError, ClientClosedError
from runflow_async._core.models import CallbackPayload, Run, RunStatus
from runflow_async._http.runs import fallback, fetch_run, poll_run
from runflow_async._http.transport import Transport
from runflow_async._waiting.costs import CostLookup
from runflow_async._waiting.durations import DurationStats
from runflow_async._waiting.list_poller import ListPoller

__all__ = ["CallbackWaiter"]

logger = logging.getLogger("runflow_async")

_SUCCESS = frozenset({RunStatus.SUCCEEDED, RunStatus.PARTIAL_SUCCEEDED})


class CallbackWaiter:
    """Waits for runs by callback; in a batch, :meth:`run` must run alongside.

    Args:
        transport: The HTTP layer.
        receiver: The started receiver whose ``url`` the runs were created with.
        stats: Learned durations (callbacks teach it too).
        policy: ``callback_fallback_after``/``_interval``.
        shared: Batch mode: bulk cost lookups and a shared fallback poller, both
            served by :meth:`run`. Otherwise (one run) each read is a plain GET.
    """

    def __init__(
        self,
        transport: Transport,
        receiver: CallbackReceiver,
        stats: DurationStats,
        policy: PollPolicy,
        *,
        shared: bool = True,
    ) -> None:
        self.receiver = receiver
        self._transport = transport
        self._stats = stats
        self._policy = policy
        interval = policy.callback_fallback_interval
        self._poller = (
            ListPoller(transport, stats, policy, min_tick=interval, max_tick=interval)
            if shared
            else None
        )
        self._costs = CostLookup(transport) if shared else None
        self._deadlines = Deadlines()  # every first window is as long: one timer for all
        self._loops = [self._poller.run, self._costs.run] if self._poller and self._costs else []

    async def run(self) -> None:
        """Serve the shared fallback poller and cost lookups until cancelled."""
        async with anyio.create_task_group() as tg:
            for loop in self._loops:
                tg.start_soon(loop)

    async def wait(self, run_id: str, on_noticed: Callable[[], None] | None = None) -> Run:
        """Wait until run ``run_id`` is terminal, by callback or by the fallback schedule.

        ``on_noticed`` is called when a callback shows the run ended, before its
        cost is looked up (a batch frees the run's slot then).
        """
        try:
            watch = self.receiver.watch(run_id)
        except ClientClosedError:
            logger.info("The callback receiver is closed; polling run %s.", run_id)
            return await self._fallback(run_id)
        try:
            # Until the first fallback read is due only the callback can come:
            # no task, no timer of its own. Most runs end here.
            payload = await self._first_window(watch, self._policy.callback_fallback_after)
            if payload is None:
                schedule = fallback(self._policy)
                next(schedule)  # that first read is due now
                outcome = await self._race(watch, run_id, schedule)
                if isinstance(outcome, Run):
                    return outcome
                payload = outcome
        finally:
            watch.cancel()
        if on_noticed is not None:
            on_noticed()
        try:
            run = await self._complete(run_id, payload)
        except APIError as exc:  # after the HTTP layer's retries
            logger.info("Reading run %s after its callback failed (%s).", run_id, exc)
            run = None
        return run if run is not None else await self._fallback(run_id)

    async def _first_window(self, watch: CallbackWatch, after: float) -> CallbackPayload | None:
        """The callback if it comes within ``after`` emulated seconds, else ``None`` then."""
        real = self._transport.clock.real(after)
        loop = asyncio.get_running_loop()  # asyncio only: anyio's clock looks its backend up
        due = loop.time() + real
        try:
            return await watch._within(real, self._deadlines)
        except ClientClosedError:  # the receiver stopped: the fallback schedule goes on
            await asyncio.sleep(max(0.0, due - loop.time()))
            return None

    async def _race(
        self, watch: CallbackWatch, run_id: str, schedule: Iterator[float]
    ) -> Run | CallbackPayload:
        """The callback or the fallback reads (the first is due now), whichever ends first."""
        polled: Run | None = None
        payload: CallbackPayload | None = None
        refused: APIError | None = None

        async def by_callback() -> None:
            nonlocal payload
            try:
                payload = await watch.wait()
            except ClientClosedError:
                return  # the receiver stopped: the fallback schedule goes on
            tg.cancel_scope.cancel()  # noticed: no more fallback reads

        async def by_fallback() -> None:
            nonlocal polled, refused
            try:
                polled = await self._read_from_now(run_id, schedule)
            except APIError as exc:  # raised below as itself, not in an ExceptionGroup
                refused = exc
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(by_callback)
            tg.start_soon(by_fallback)
        if refused is not None:
            raise refused
        if polled is not None:
            return polled
        assert payload is not None  # noqa: S101 - the group ends only once one is set
        return payload

    async def _complete(self, run_id: str, payload: CallbackPayload) -> Run | None:
        status = payload.run_status
        run: Run | None = None
        if status in _SUCCESS and payload.output is not None:
            if self._costs is not None:
                found, cost = await self._costs.cost(run_id)
                # The run is built once, with its cost (no copy of it afterwards).
                run = _from_payload(run_id, payload, status, cost)
                if found and run is not None:
                    self._stats.add(run)
                    return run
            else:
                run = _from_payload(run_id, payload, status, None)
        # No output, a failure (its reason is not in the payload), an unknown
        # status, or no cost: one read of the full run.
        fetched = await fetch_run(self._transport, run_id)
        if fetched.is_terminal:
            self._stats.add(fetched)
            return fetched
        # A signed delivery said it ended but the read lags behind: trust the
        # delivery if it carried the output, else leave it to the fallback.
        return run

    async def _fallback(self, run_id: str) -> Run:
        schedule = fallback(self._policy)
        await self._transport.clock.sleep(next(schedule))
        return await self._read_from_now(run_id, schedule)

    async def _read_from_now(self, run_id: str, schedule: Iterator[float]) -> Run:
        """Read the run now, then by the rest of ``schedule``, until it is terminal."""
        if self._poller is not None:
            final = await self._poller.wait(run_id)
            if final is not None:
                return final
        # One run, or the list filter proved unusable: read now, then every interval.
        run = await poll_run(self._transport, run_id, schedule=itertools.chain([0.0], schedule))
        self._stats.add(run)
        return run


def _from_payload(
    run_id: str, payload: CallbackPayload, status: RunStatus, cost: Decimal | None
) -> Run | None:
    """The run as the callback tells it (with ``cost``), or ``None`` if its output is trimmed."""
    fields: dict[str, Any] = {
        "id": run_id,
        "status_code": status.value,
        "output": payload.output,
        "cost": cost,
        "duration_ms": payload.duration_ms,
        "created_at": payload.created_at,
        "completed_at": payload.completed_at,
        "metadata": payload.metadata,
    }
    try:
        run = Run.model_validate(fields)
    except pydantic.ValidationError:
        return None
    if run.output is None or not run.output.outputs:
        return None
    return run

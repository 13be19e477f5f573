"""The batch engine: one owner for a batch's whole life.

``async with Engine(...)`` owns everything a batch starts: its task group, the
shared pollers, the only loop that acquires slots (:meth:`Engine._dispatch`),
and every item task. Items come in by :meth:`Engine.submit` (queued at once) or
:meth:`Engine.put` (waits for a slot: backpressure for lazy sources); each
ends in one :class:`Outcome`, told to ``hooks.on_outcome`` and offered to
:attr:`Engine.outcomes`. :class:`Batch`, ``map`` and the dataset pipeline are
thin adapters over it; nothing outside reads or steers its ledger, window or
slots (:meth:`Engine.snapshot` is the read-only view).

Leaving the block normally waits until every item has its outcome. Leaving it
by an exception or a cancellation stops submitting at once: queued items end
"not submitted", creates already sent are read to the end (shielded) and their
runs listed, waits are abandoned; then the exception leaves as itself. An
unexpected failure inside (the client closed under the batch, a bug) stops the
batch the same way and is raised from the block as itself; only failures of
different kinds form an ``ExceptionGroup``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from decimal import Decimal
from types import MappingProxyType, TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from runflow_async._batch.budget import BudgetLedger
from runflow_async._batch.creates import Creating
from runflow_async._batch.grouping import BatchRoutes, create_groups, list_poller
from runflow_async._batch.groups import exit_group
from runflow_async._batch.handover import Handover
from runflow_async._batch.hooks import EngineHooks, EngineSnapshot, NoHooks, WorkItem
from runflow_async._batch.items import STOP_MESSAGES, ItemLife
from runflow_async._batch.limits import AdaptiveWindow, Pacer, Slot
from runflow_async._batch.options import EngineOptions
from runflow_async._batch.outcomes import Outcome
from runflow_async._callbacks.waiter import CallbackWaiter
from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import BudgetExceededError, ClientClosedError
from runflow_async._core.estimate import Estimate, estimate_request, estimate_requests
from runflow_async._core.requests import RunRequest
from runflow_async._http.transport import Transport
from runflow_async._pricing import PricingPolicy
from runflow_async._waiting.durations import DurationStats

__all__ = ["Engine"]

logger = logging.getLogger("runflow_async")


class Engine(ItemLife):
    """Runs items under one batch's limits; an async context manager that owns its tasks.

    Args:
        transport: The client's HTTP layer.
        pricing: Prices estimates.
        poll: Poll spacing.
        stats: Learned run durations (shared by the client's batches).
        options: Validated batch options.
        hooks: Record-only hooks (write-ahead journals, futures).
        outcome_buffer: How many outcomes :attr:`outcomes` holds before items
            wait for a reader (holding their slots): ``0`` for backpressure.
        spent_usd: Money spent earlier that counts against ``max_cost_usd``.
        batch_routes: The client's record of refused batch routes (``create_via``).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        pricing: PricingPolicy,
        poll: PollPolicy,
        stats: DurationStats,
        options: EngineOptions,
        hooks: EngineHooks | None = None,
        outcome_buffer: float = float("inf"),
        spent_usd: Decimal = Decimal(0),
        batch_routes: BatchRoutes | None = None,
    ) -> None:
        clock = transport.clock
        self._started_at = clock.now()  # maybe_created items were sent before it, if at all
        self._transport = transport
        self._pricing = pricing
        self._poll = poll
        self._stats = stats
        self._options = options
        self._hooks = hooks if hooks is not None else NoHooks()
        self._window = AdaptiveWindow(
            options.max_concurrency, adaptive=options.adaptive, clock=clock
        )
        self._ledger = BudgetLedger(
            options.max_cost_usd, margin=options.billing_margin, probe_runs=options.probe_runs
        )
        if spent_usd:
            self._ledger.add_spent(spent_usd)
        rate = options.submits_per_second
        self._pacer = Pacer(rate, clock=clock) if rate else None
        self._poller = list_poller(transport, stats, poll, options)
        rx = options.callbacks
        self._callbacks = CallbackWaiter(transport, rx, stats, poll) if rx is not None else None
        self._groups = create_groups(transport, options, batch_routes, self.start, self._window)
        self._stop_reason: str | None = None
        self._unfinished: dict[int, str] = {}
        self._unsettled: dict[int, str] = {}
        self._uncertain: dict[int, str] = {}
        self._undelivered: dict[int, str] = {}
        self._creating: dict[int, Creating] = {}
        self._billed = Decimal(0)
        self._wait_scopes: set[anyio.CancelScope] = set()
        self._queue: deque[tuple[WorkItem, Decimal, asyncio.Event | None]] = deque()
        # asyncio's events: anyio's look the backend up on each one made (asyncio only).
        self._queued = asyncio.Event()
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._fatal: list[BaseException] = []
        self._out = Handover(outcome_buffer, self._hooks.on_outcome, self._done)
        self._tg: TaskGroup | None = None
        self._work: TaskGroup | None = None
        self._closing = self._aborted = False

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("An Engine can be entered only once.")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        # The work runs in a task group of its own, so that stopping it never
        # cancels the caller's block (which runs inside the outer group's scope).
        await self._tg.start(self._supervise)
        return self

    async def _supervise(self, *, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as work:
            self._work = self._out.work = work
            if self._poller is not None:
                work.start_soon(self._guard, self._poller.run)
            if self._callbacks is not None:
                work.start_soon(self._guard, self._callbacks.run)
            work.start_soon(self._dispatch)
            task_status.started()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if exc is None and not self._aborted:
            try:
                await self._idle.wait()
            except BaseException as caught:  # cancelled (Ctrl-C) while waiting for the last items
                self.abort()
                await self._end(caught)
                raise
        elif exc is not None:
            self.abort()
        await self._end(exc)
        if exc is None and self._fatal:
            self._raise_fatal()

    async def _end(self, exc: BaseException | None) -> None:
        assert self._tg is not None  # noqa: S101 - entered before exited
        # Ends the pollers and the dispatcher, and (after an abort) every item
        # still admitting or waiting; creates in flight are shielded.
        if self._work is not None:
            self._work.cancel_scope.cancel()
        try:
            await exit_group(self._tg, exc)
        finally:
            self._out.send.close()
            self._out.receive.close()

    def _raise_fatal(self) -> None:
        first = self._fatal[0]
        if all(type(e) is type(first) for e in self._fatal):
            raise first
        raise BaseExceptionGroup("the batch failed in several ways", self._fatal)

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except Exception as exc:  # the client closed under us, or a bug: stop it all
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._fatal.append(exc)
        self.stop("closed" if isinstance(exc, ClientClosedError) else "error")
        self.abort()

    def start(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run ``task`` in the engine's task group (ended with it; its error ends the batch)."""
        assert self._work is not None  # noqa: S101 - entered
        self._work.start_soon(self._guard, task)

    def abort(self) -> None:
        """Stop submitting and abandon every item still admitting or waiting (runs stay listed).

        Creates already sent are read to the end; the caller's block goes on.
        """
        self.stop("cancelled", cancel_in_flight=True)
        self._closing = self._aborted = True
        if self._work is not None:
            self._work.cancel_scope.cancel()

    @property
    def stop_reason(self) -> str | None:
        """Why submitting stopped, or ``None`` (cheap; :meth:`snapshot` copies more)."""
        return self._stop_reason

    @property
    def outcomes(self) -> MemoryObjectReceiveStream[Outcome]:
        """Every outcome as it happens; read it inside the block (it closes with the engine)."""
        return self._out.receive

    # -- submitting ----------------------------------------------------------

    def estimate(self, request: RunRequest, index: int = 0) -> Decimal:
        """The USD estimate reserved for ``request``."""
        return estimate_request(request, policy=self._pricing, index=index).usd

    def estimate_all(self, requests: list[RunRequest]) -> Estimate:
        """Estimate ``requests`` with the engine's pricing (no I/O)."""
        return estimate_requests(requests, policy=self._pricing)

    def check_budget(self, estimate: Estimate) -> None:
        """Refuse ``estimate`` if it cannot fit on top of what is committed.

        Raises:
            BudgetExceededError: It would exceed ``max_cost_usd``; nothing was queued.
        """
        ledger = self._ledger
        if ledger.cap is not None and ledger.committed + estimate.total_usd > ledger.cap:
            raise BudgetExceededError(
                f"The batch would cost about ${estimate.total_usd} on top of "
                f"${ledger.committed} already committed, over max_cost_usd ${ledger.cap}; "
                "nothing was submitted.",
                estimate=estimate,
                max_cost_usd=ledger.cap,
                committed_usd=ledger.committed,
            )

    def submit(self, item: WorkItem) -> None:
        """Queue ``item``; it starts when a slot is free (its outcome comes to the hooks).

        Raises:
            ClientClosedError: The engine is not running, or it is ending.
        """
        est = self._accept(item)
        if self._stop_reason is not None and item.creates:
            self._out.refuse(self.not_submitted(item.index, item.request, est, self._stop_reason))
            return
        self._queue.append((item, est, None))
        self._queued.set()

    async def put(self, item: WorkItem) -> bool:
        """Queue ``item`` and wait until it has a slot; ``False`` if the engine stopped.

        An item refused because the engine stopped still gets its outcome.
        """
        est = self._accept(item)
        stopped = self._stop_reason
        if stopped is not None and item.creates:
            await self._out.deliver(self.not_submitted(item.index, item.request, est, stopped))
            return False
        started = asyncio.Event()
        self._queue.append((item, est, started))
        self._queued.set()
        await started.wait()
        return self._stop_reason is None

    async def end_input(self) -> None:
        """No more items will come: once every item has its outcome, end :attr:`outcomes`."""
        self._closing = True
        while self._outstanding:
            await self._idle.wait()
        self._out.send.close()

    def _accept(self, item: WorkItem) -> Decimal:
        if self._tg is None or self._closing:
            raise ClientClosedError("Submit inside `async with client.batch(...)`, before it ends.")
        self._outstanding += 1
        self._idle.clear()
        if item.estimate_usd is not None:
            return item.estimate_usd
        return self.estimate(item.request, item.index)

    async def _dispatch(self) -> None:
        assert self._work is not None  # noqa: S101 - started from _supervise
        while True:
            while not self._queue:
                self._queued.clear()
                await self._queued.wait()
            slot = Slot(self._window)
            await slot.acquire()
            if not self._queue:  # stopped meanwhile: the queue was emptied
                slot.release()
                continue
            item, est, started = self._queue.popleft()
            self._work.start_soon(self._run, item, est, slot)
            if started is not None:
                started.set()

    async def _run(self, item: WorkItem, est: Decimal, slot: Slot) -> None:
        try:
            outcome = await self._live(item, est, slot)
        except anyio.get_cancelled_exc_class():
            slot.release()
            self._out.deliver_now(self.abandoned(item.index, item.request, est))
            raise
        except Exception as exc:  # not an API outcome: the client closed, or a bug
            slot.release()
            self._out.deliver_now(self.abandoned(item.index, item.request, est, exc))
            self._fail(exc)
            return
        try:
            await self._out.deliver(outcome)
        finally:
            slot.release()

    # -- outcomes and stopping -----------------------------------------------

    def _done(self, outcome: Outcome, *, handed: bool) -> None:
        if handed:  # else its run, if any, stays listed as undelivered
            self._undelivered.pop(outcome.index, None)
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    def stop(self, reason: str, *, cancel_in_flight: bool = False) -> None:
        """Stop submitting (first reason wins); optionally abandon runs being waited on."""
        if self._stop_reason is None:
            self._stop_reason = reason
            logger.info("Batch stopped submitting: %s.", STOP_MESSAGES[reason])
            self._hooks.on_stop(reason)
            # Queued items that would create end now; runs to collect stay queued.
            kept: deque[tuple[WorkItem, Decimal, asyncio.Event | None]] = deque()
            while self._queue:
                item, est, started = entry = self._queue.popleft()
                if not item.creates:
                    kept.append(entry)
                    continue
                self._out.refuse(self.not_submitted(item.index, item.request, est, reason))
                if started is not None:
                    started.set()
            self._queue = kept
        if cancel_in_flight:
            for scope in self._wait_scopes:
                scope.cancel()

    def snapshot(self) -> EngineSnapshot:
        """The engine's state now, as copies."""
        ledger = self._ledger
        return EngineSnapshot(
            stop_reason=self._stop_reason,
            window=self._window.capacity,
            in_flight=self._window.in_use,
            queued=len(self._queue),
            spent_usd=ledger.spent,
            committed_usd=ledger.committed,
            billing_factor=ledger.factor,
            billed_usd=self._billed,
            unfinished=MappingProxyType({**self._unsettled, **self._unfinished}),
            uncertain=MappingProxyType(dict(self._uncertain)),
            undelivered=MappingProxyType(dict(self._undelivered)),
        )

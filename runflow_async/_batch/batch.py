"""``Batch``: submit runs, get futures, stay under limits and a budget; nothing outlives it.

Use it through :meth:`RunflowClient.batch`::

    async with client.batch(max_concurrency=50, max_cost_usd=5) as batch:
        futures = batch.submit_many(requests)      # BudgetExceededError: nothing sent
        async for outcome in batch.as_completed():
            ...

Leaving the block waits for everything submitted. An exception or cancellation
inside it stops submitting at once; runs already created keep going on Runflow
(there is no public cancel) and stay listed in :attr:`Batch.run_ids`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from decimal import Decimal
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runflow_async._batch.engine import Engine, EngineView
from runflow_async._batch.limits import Slot
from runflow_async._batch.outcomes import CostReport, ItemCost, Outcome, RunFuture
from runflow_async._core.errors import BudgetExceededError, ClientClosedError
from runflow_async._core.estimate import Estimate, estimate_requests
from runflow_async._core.requests import RunRequest

__all__ = ["Batch"]


class Batch(EngineView):
    """A batch of runs under one concurrency window, rate, budget and wait strategy.

    Create it with :meth:`RunflowClient.batch`; use it as an async context manager.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        engine.on_stop = self._on_stop
        engine.on_abandon = self._resolve
        self._futures: list[RunFuture] = []
        self._pending: deque[tuple[RunFuture, Decimal]] = deque()
        self._pending_event = anyio.Event()
        self._outstanding = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._send: MemoryObjectSendStream[Outcome] | None = None
        self._receive: MemoryObjectReceiveStream[Outcome] | None = None
        self._tg: TaskGroup | None = None
        self._closing = False

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._send, self._receive = anyio.create_memory_object_stream[Outcome](float("inf"))
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._engine.run_background)
        self._tg.start_soon(self._dispatch)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None  # noqa: S101 - entered before exited
        assert self._send is not None  # noqa: S101
        assert self._receive is not None  # noqa: S101
        try:
            if exc is None:
                self._closing = True
                self._pending_event.set()
                await self._idle.wait()
            else:
                self._engine.stop("cancelled")
            self._tg.cancel_scope.cancel()  # the poller and the dispatcher
        finally:
            try:
                result = await self._tg.__aexit__(exc_type, exc, tb)
            finally:
                self._send.close()
                self._receive.close()
        return result

    # -- submitting ----------------------------------------------------------

    def submit(self, request: RunRequest) -> RunFuture:
        """Queue one run and return its future at once (it starts when a slot is free)."""
        return self._submit(request, self._engine.estimate(request, len(self._futures)))

    def submit_many(self, requests: Iterable[RunRequest]) -> list[RunFuture]:
        """Estimate the whole list, then queue every item.

        Raises:
            BudgetExceededError: The estimate plus what the batch has already
                committed exceeds ``max_cost_usd``; nothing was queued or sent.
        """
        requests = list(requests)
        estimate = self.estimate(requests)
        ledger = self._engine.ledger
        if ledger.cap is not None and ledger.committed + estimate.total_usd > ledger.cap:
            raise BudgetExceededError(
                f"The batch would cost about ${estimate.total_usd} on top of "
                f"${ledger.committed} already committed, over max_cost_usd ${ledger.cap}; "
                "nothing was submitted.",
                estimate=estimate,
                max_cost_usd=ledger.cap,
                committed_usd=ledger.committed,
            )
        return [self._submit(r, item.usd) for r, item in zip(requests, estimate.items, strict=True)]

    def estimate(self, requests: Iterable[RunRequest]) -> Estimate:
        """Estimate ``requests`` with the batch's pricing policy (no I/O)."""
        return estimate_requests(requests, policy=self._engine.pricing)

    def _submit(self, request: RunRequest, estimate: Decimal) -> RunFuture:
        if self._tg is None or self._closing:
            raise ClientClosedError("Submit inside `async with client.batch(...)`, before it ends.")
        future = RunFuture(len(self._futures), request)
        self._futures.append(future)
        self._outstanding += 1
        self._idle = anyio.Event()
        if self._engine.stop_reason is not None:
            reason = self._engine.stop_reason
            self._resolve(self._engine.not_submitted(future.index, request, estimate, reason))
        else:
            self._pending.append((future, estimate))
            self._pending_event.set()
        return future

    async def _dispatch(self) -> None:
        assert self._tg is not None  # noqa: S101 - started from __aenter__
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._pending_event = anyio.Event()
                await self._pending_event.wait()
            slot = Slot(self._engine.window)
            await slot.acquire()
            if not self._pending:  # stopped meanwhile: the queue was resolved
                slot.release()
                continue
            future, estimate = self._pending.popleft()
            self._tg.start_soon(self._run, future, estimate, slot)

    async def _run(self, future: RunFuture, estimate: Decimal, slot: Slot) -> None:
        try:
            outcome = await self._engine.run_item(future.index, future.request, slot, estimate)
        finally:
            slot.release()
        self._resolve(outcome)

    def _on_stop(self, reason: str) -> None:
        while self._pending:
            future, estimate = self._pending.popleft()
            self._resolve(
                self._engine.not_submitted(future.index, future.request, estimate, reason)
            )

    def _resolve(self, outcome: Outcome) -> None:
        future = self._futures[outcome.index]
        if future.done():
            return
        future.run_id = outcome.run_id
        future._resolve(outcome)
        assert self._send is not None  # noqa: S101 - only resolved while entered
        self._send.send_nowait(outcome)
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    # -- results -------------------------------------------------------------

    def as_completed(self) -> AsyncIterator[Outcome]:
        """Yield outcomes as they finish, until every item submitted so far has one."""
        assert self._receive is not None  # noqa: S101 - use it inside the block
        return _AsCompleted(self._receive, lambda: len(self._futures))

    async def gather(self) -> list[Outcome]:
        """Wait for every item submitted so far; return outcomes in submission order."""
        return [await future.wait() for future in list(self._futures)]

    @property
    def futures(self) -> list[RunFuture]:
        """Every future, in submission order."""
        return list(self._futures)

    @property
    def run_ids(self) -> list[str]:
        """Every run this batch created (finished or not), in submission order."""
        ids = {f.index: f.run_id for f in self._futures if f.run_id is not None}
        ids.update(self._engine.unfinished)
        return [ids[i] for i in sorted(ids)]

    @property
    def window(self) -> int:
        """The concurrency window now (shrinks on 429s, grows back on successes)."""
        return self._engine.window.capacity

    def cost_report(self) -> CostReport:
        """Estimated vs billed, per finished item and in total."""
        items = tuple(
            ItemCost(o.index, o.run_id, o.estimated_usd, o.billed_usd)
            for f in self._futures
            if (o := f.outcome) is not None and o.run_id is not None
        )
        return CostReport(
            items=items,
            estimated_usd=sum((i.estimated_usd for i in items), Decimal(0)),
            billed_usd=sum((i.billed_usd or Decimal(0) for i in items), Decimal(0)),
            unsettled_run_ids=tuple(self.unfinished_run_ids),
        )


class _AsCompleted:
    """An iterator object, not an async generator: safe to abandon mid-way."""

    def __init__(self, receive: MemoryObjectReceiveStream[Outcome], total: Callable[[], int]):
        self._receive = receive
        self._total = total
        self._seen = 0

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Outcome:
        if self._seen >= self._total():
            raise StopAsyncIteration
        outcome = await self._receive.receive()
        self._seen += 1
        return outcome

"""``Batch``: submit runs, get futures, stay under limits and a budget; nothing outlives it.

Use it through :meth:`RunflowClient.batch`::

    async with client.batch(max_concurrency=50, max_cost_usd=5) as batch:
        futures = batch.submit_many(requests)      # BudgetExceededError: nothing sent
        async for outcome in batch.as_completed():
            ...

Leaving the block waits for everything submitted. An exception or cancellation
(Ctrl-C) inside it, or while it waits at its end, stops submitting at once:
creates already sent are read to the end, runs already created keep going on
Runflow (there is no public cancel) and stay listed in :attr:`Batch.run_ids`
and :attr:`Batch.unfinished_run_ids`, and the exception leaves the block as
itself (``except BudgetExceededError`` works). Only failures of different kinds
inside the engine at once form an ``ExceptionGroup``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from decimal import Decimal
from types import TracebackType
from typing import Self

from anyio.streams.memory import MemoryObjectReceiveStream

from runflow_async._batch.engine import Engine
from runflow_async._batch.hooks import EngineHooks, NoHooks, WorkItem
from runflow_async._batch.outcomes import CostReport, ItemCost, Outcome, RunFuture
from runflow_async._batch.view import EngineView
from runflow_async._core.estimate import Estimate
from runflow_async._core.models import Run
from runflow_async._core.requests import RunRequest

__all__ = ["Batch"]


class Batch(EngineView):
    """A batch of runs under one concurrency window, rate, budget and wait strategy.

    Create it with :meth:`RunflowClient.batch`; use it as an async context manager.
    """

    def __init__(self, make_engine: Callable[[EngineHooks], Engine]) -> None:
        self._futures: list[RunFuture] = []
        self._engine = make_engine(_ResolveFutures(self._futures))

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._engine.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._engine.__aexit__(exc_type, exc, tb)
        finally:
            self._engine.outcomes.close()

    # -- submitting ----------------------------------------------------------

    def submit(self, request: RunRequest) -> RunFuture:
        """Queue one run and return its future at once (it starts when a slot is free)."""
        return self._submit(request, None)

    def submit_many(self, requests: Iterable[RunRequest]) -> list[RunFuture]:
        """Estimate the whole list, then queue every item.

        Raises:
            BudgetExceededError: The estimate plus what the batch has already
                committed exceeds ``max_cost_usd``; nothing was queued or sent.
        """
        requests = list(requests)
        estimate = self.estimate(requests)
        self._engine.check_budget(estimate)
        return [self._submit(r, item.usd) for r, item in zip(requests, estimate.items, strict=True)]

    def estimate(self, requests: Iterable[RunRequest]) -> Estimate:
        """Estimate ``requests`` with the batch's pricing policy (no I/O)."""
        return self._engine.estimate_all(list(requests))

    def _submit(self, request: RunRequest, estimate: Decimal | None) -> RunFuture:
        future = RunFuture(len(self._futures), request)
        self._futures.append(future)
        try:
            self._engine.submit(WorkItem(future.index, request, estimate))
        except BaseException:
            self._futures.pop()
            raise
        return future

    # -- results -------------------------------------------------------------

    def as_completed(self) -> AsyncIterator[Outcome]:
        """Yield outcomes as they finish, until every item submitted so far has one."""
        return _AsCompleted(self._engine.outcomes, lambda: len(self._futures))

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
        snapshot = self._engine.snapshot()
        ids.update(snapshot.unfinished)
        ids.update(snapshot.undelivered)
        return [ids[i] for i in sorted(ids)]

    @property
    def window(self) -> int:
        """The concurrency window now (shrinks on 429s, grows back on successes)."""
        return self._engine.snapshot().window

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


class _ResolveFutures(NoHooks):
    """The batch's hooks: an outcome resolves its future."""

    def __init__(self, futures: list[RunFuture]) -> None:
        self._futures = futures

    def on_created(self, index: int, run: Run, /) -> None:
        self._futures[index].run_id = run.id

    def on_outcome(self, outcome: Outcome, /) -> None:
        future = self._futures[outcome.index]
        if outcome.run_id is not None:
            future.run_id = outcome.run_id
        future._resolve(outcome)


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

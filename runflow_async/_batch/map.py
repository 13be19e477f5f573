"""``client.map``: the batch engine over a lazy (even endless) stream of requests.

Memory stays bounded by the concurrency: an input item is pulled only once a
slot is free, only in-flight items have a task, and an item keeps its slot
until its outcome has been handed to the consumer (so a slow consumer slows
submission instead of piling outcomes up)::

    async with client.map(requests, max_concurrency=100) as outcomes:
        async for outcome in outcomes:
            ...
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Self

from runflow_async._batch.engine import Engine
from runflow_async._batch.hooks import WorkItem
from runflow_async._batch.outcomes import Outcome
from runflow_async._batch.view import EngineView
from runflow_async._core.requests import GenerateRequest, RunRequest

__all__ = ["MapRun", "RequestSource"]

RequestSource = Iterable[RunRequest | str] | AsyncIterable[RunRequest | str]
"""Requests, or plain prompts (text-to-image with default settings)."""


async def _aiter(source: RequestSource) -> AsyncIterator[RunRequest]:
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield GenerateRequest(prompt=item) if isinstance(item, str) else item
    else:
        for item in source:
            yield GenerateRequest(prompt=item) if isinstance(item, str) else item


class MapRun(EngineView):
    """The running map: an async context manager whose value iterates outcomes.

    Leaving the block early (``break``, an exception, a cancellation) stops
    pulling input at once; at most ``max_concurrency`` items were started
    beyond those you received, and every run among them is listed in
    :attr:`undelivered_run_ids`.
    """

    def __init__(self, make_engine: Callable[[float], Engine], source: RequestSource) -> None:
        # No buffer: an item keeps its slot until you take its outcome.
        self._engine = make_engine(0)
        self._source = source
        self._ended = False
        self.submitted = 0

    async def __aenter__(self) -> Self:
        await self._engine.__aenter__()
        self._engine.start(self._pull)  # the engine owns the feeding task too
        return self

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self._engine.outcomes  # a stream object: safe to abandon mid-way

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None or not self._ended:  # left early: stop pulling input
            self._engine.abort()
        try:
            await self._engine.__aexit__(exc_type, exc, tb)
        finally:
            self._engine.outcomes.close()

    @property
    def undelivered_run_ids(self) -> list[str]:
        """Runs created whose outcome you did not receive (you hold the others' ids).

        After leaving the block early these are every run the map created
        beyond the outcomes you took: finished, abandoned or timed out.
        """
        undelivered = self._engine.snapshot().undelivered
        return [undelivered[i] for i in sorted(undelivered)]

    async def _pull(self) -> None:
        index = 0
        async for request in _aiter(self._source):  # an error here leaves the block as itself
            if not await self._engine.put(WorkItem(index, request)):
                break  # stopped: an endless input cannot be enumerated, stop pulling it
            index += 1
            self.submitted = index
        await self._engine.end_input()
        self._ended = True

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

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runflow_async._batch.engine import Engine, EngineView
from runflow_async._batch.limits import Slot
from runflow_async._batch.outcomes import Outcome
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
    """The running map: an async context manager whose value iterates outcomes."""

    def __init__(self, engine: Engine, source: RequestSource) -> None:
        self._engine = engine
        self._source = source
        self._tg: TaskGroup | None = None
        self._send: MemoryObjectSendStream[Outcome]
        self._receive: MemoryObjectReceiveStream[Outcome]
        self._fed_all = False
        self.submitted = 0

    async def __aenter__(self) -> Self:
        self._send, self._receive = anyio.create_memory_object_stream[Outcome](0)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._engine.run_background)
        self._tg.start_soon(self._feed)
        return self

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self._receive  # a stream object: safe to abandon mid-way

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None  # noqa: S101 - entered before exited
        if not self._fed_all:  # the consumer left early, or an error: stop pulling input
            self._engine.stop("cancelled")
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._send.close()
            self._receive.close()

    async def _feed(self) -> None:
        assert self._tg is not None  # noqa: S101 - started from __aenter__
        engine = self._engine
        index = 0
        async with self._send:
            async with anyio.create_task_group() as items:
                async for request in _aiter(self._source):
                    slot = Slot(engine.window)
                    await slot.acquire()
                    if engine.stop_reason is not None:
                        slot.release()
                        # An endless input cannot be enumerated: stop pulling it.
                        await self._send.send(
                            engine.not_submitted(
                                index, request, engine.estimate(request), engine.stop_reason
                            )
                        )
                        break
                    items.start_soon(self._run, index, request, slot)
                    index += 1
                    self.submitted = index
            self._fed_all = True

    async def _run(self, index: int, request: RunRequest, slot: Slot) -> None:
        try:
            outcome = await self._engine.run_item(index, request, slot)
            await self._send.send(outcome)
        finally:
            slot.release()

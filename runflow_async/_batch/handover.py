"""How an outcome reaches the engine's reader: the outcome stream and its hand-over rules.

Every outcome is told to ``on_outcome`` first (the hooks: futures, journals),
then offered to the stream. ``done(outcome, handed=...)`` is called once per
outcome, with whether the reader took it: an outcome nobody will read any
more (the stream closed, the block left early) is never waited for.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from runflow_async._batch.outcomes import Outcome

__all__ = ["Handover"]

_GONE = (anyio.ClosedResourceError, anyio.BrokenResourceError)


class Handover:
    """The outcome stream: :attr:`receive` is the reader's end."""

    __slots__ = ("_done", "_on_outcome", "receive", "send", "work")

    def __init__(
        self,
        buffer: float,
        on_outcome: Callable[[Outcome], None],
        done: Callable[..., None],
    ) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[Outcome](buffer)
        self._on_outcome = on_outcome
        self._done = done
        self.work: TaskGroup | None = None  # the engine's work group, once it runs

    async def deliver(self, outcome: Outcome) -> None:
        """Hand ``outcome``, waiting for room or a reader (backpressure)."""
        self._on_outcome(outcome)
        try:
            try:  # room in the buffer, or a reader waiting: handed with no checkpoint
                self.send.send_nowait(outcome)
            except anyio.WouldBlock:
                await self.send.send(outcome)
        except _GONE:
            self._done(outcome, handed=False)  # nobody reads outcomes any more
        else:
            self._done(outcome, handed=True)

    def deliver_now(self, outcome: Outcome) -> None:
        """Hand ``outcome`` only if it can go at once (a cancelled item's last word)."""
        self._on_outcome(outcome)
        try:
            self.send.send_nowait(outcome)
        except (anyio.WouldBlock, *_GONE):
            self._done(outcome, handed=False)  # the reader is gone or busy
        else:
            self._done(outcome, handed=True)

    def refuse(self, outcome: Outcome) -> None:
        """Hand a queued item's refusal without waiting, and never drop it for a busy reader.

        When the reader is not in ``receive()`` this instant (or the buffer is
        full), a task in :attr:`work` hands it when the reader comes back, as a
        finished run's outcome would be; after an abort that task is cancelled
        at once (nobody reads any more).
        """
        self._on_outcome(outcome)
        try:
            self.send.send_nowait(outcome)
        except anyio.WouldBlock:
            assert self.work is not None  # noqa: S101 - items are accepted only once it runs
            self.work.start_soon(self._send_later, outcome)
        except _GONE:
            self._done(outcome, handed=False)
        else:
            self._done(outcome, handed=True)

    async def _send_later(self, outcome: Outcome) -> None:
        handed = False
        try:
            await self.send.send(outcome)
            handed = True
        except _GONE:
            pass  # nobody reads outcomes any more
        finally:  # cancelled too: the block was left early, the outcome is not taken
            self._done(outcome, handed=handed)

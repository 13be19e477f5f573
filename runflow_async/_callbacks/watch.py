"""``CallbackWatch``: one party's interest in one run's callback, settled once."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from runflow_async._core.models import CallbackPayload

if TYPE_CHECKING:
    from runflow_async._callbacks.receiver import CallbackReceiver

__all__ = ["CallbackWatch", "Deadlines"]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Deadlines:
    """Wakes parked waiters at deadlines set in time order, on one loop timer for all.

    A batch parks every run's first callback window for the same span, so its
    deadlines come in the order they are set: a queue and its head's timer
    replace a timer per run armed, then cancelled when the callback comes. A
    deadline set earlier than the last one gets a timer of its own.
    """

    __slots__ = ("_queue", "_timer")

    def __init__(self) -> None:
        self._queue: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(
        self, loop: asyncio.AbstractEventLoop, when: float, waiter: asyncio.Future[None]
    ) -> asyncio.TimerHandle | None:
        """Wake ``waiter`` at loop time ``when``; the handle to cancel if it has its own timer."""
        queue = self._queue
        while queue and queue[0][1].done():  # woken before their deadline: forgotten
            queue.popleft()
        if queue and when < queue[-1][0]:
            return loop.call_at(when, _wake, waiter)
        queue.append((when, waiter))
        if self._timer is None:
            self._timer = loop.call_at(when, self._fire, loop, when)
        return None

    def _fire(self, loop: asyncio.AbstractEventLoop, armed: float) -> None:
        # The loop may run a timer a clock tick early: what it was armed for is due.
        now = max(armed, loop.time())
        queue = self._queue
        while queue and (queue[0][0] <= now or queue[0][1].done()):
            _wake(queue.popleft()[1])
        self._timer = None
        if queue:
            when = queue[0][0]
            self._timer = loop.call_at(when, self._fire, loop, when)


class CallbackWatch:
    """Interest in one run's callback, from :meth:`CallbackReceiver.watch`.

    Like an ``asyncio.Future`` it settles once: with the first valid delivery
    for the run, by :meth:`cancel`, or when the receiver closes.

    Attributes:
        run_id: The run being watched.
    """

    __slots__ = ("_done", "_outcome", "_receiver", "_waiters", "run_id")

    def __init__(self, run_id: str, receiver: CallbackReceiver) -> None:
        self.run_id = run_id
        self._receiver = receiver
        self._done = False
        self._waiters: list[asyncio.Future[None]] = []
        self._outcome: CallbackPayload | BaseException | None = None

    async def wait(self) -> CallbackPayload:
        """Wait for the run's callback; its ``run_status`` says how the run ended.

        Cancelling the waiting task leaves the watch in place: wait again, or
        :meth:`cancel` it.

        Raises:
            asyncio.CancelledError: The watch was cancelled with :meth:`cancel`.
            ClientClosedError: The receiver closed before the callback came.
        """
        if not self._done:
            await self._park(None)
        return self._result()

    async def _within(
        self, seconds: float, deadlines: Deadlines | None = None
    ) -> CallbackPayload | None:
        """Like :meth:`wait`, but ``None`` if still unsettled after ``seconds`` real seconds.

        No task and no cancel scope, and with ``deadlines`` no timer of its
        own either: a batch waits this way for every run's callback until its
        first fallback read is due.
        """
        if not self._done:
            await self._park(seconds, deadlines)
            if not self._done:
                return None
        return self._result()

    async def _park(self, seconds: float | None, deadlines: Deadlines | None = None) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = None
        if seconds is not None:
            if deadlines is None:
                timer = loop.call_later(seconds, _wake, waiter)
            else:
                timer = deadlines.add(loop, loop.time() + seconds, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if not self._done:  # timed out or cancelled: settling empties the list
                self._waiters.remove(waiter)

    def _result(self) -> CallbackPayload:
        if isinstance(self._outcome, CallbackPayload):
            return self._outcome
        raise self._outcome or asyncio.CancelledError()

    def done(self) -> bool:
        """Return whether the watch has settled (delivered, cancelled or closed)."""
        return self._done

    def cancel(self) -> None:
        """Stop watching and free the slot; a no-op once settled.

        A later delivery for the run is buffered as if nobody had watched it.
        """
        if not self._done:
            self._receiver._forget(self)
            self._settle(None)

    def _settle(self, outcome: CallbackPayload | BaseException | None) -> None:
        self._outcome = outcome
        self._done = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _wake(waiter)

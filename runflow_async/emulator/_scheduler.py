"""One task and one heap of due times: what the lazy clock needs to act on its own.

Nothing else in the emulator runs in the background: a run's state is computed
from the clock when asked. Callbacks are the exception, as they must be sent when a
run ends whether anyone asks or not. Rather than one sleeping task per run (a task
and a coroutine frame each, and no way to wake them when ``advance`` moves the clock
forward), one task sleeps until the earliest due time of a heap and runs every
action that is due; pushing an earlier item, or moving the clock, wakes it. An
entry costs a tuple, so 100,000 pending callbacks cost a few megabytes and a push
is O(log n).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from runflow_async.emulator._clock import EmulatedClock

__all__ = ["Action", "Scheduler"]

Action = Callable[[], None]
"""Something to do at a due time; it must not block (start a task to do I/O)."""


class Scheduler:
    """Runs actions at emulated due times, in due-time order (ties in push order)."""

    __slots__ = ("_clock", "_heap", "_order", "_wakeup")

    def __init__(self, clock: EmulatedClock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Action]] = []
        self._order = itertools.count()
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        """Return the number of actions not yet due."""
        return len(self._heap)

    def at(self, due: float, action: Action) -> None:
        """Run ``action`` once the emulated clock reaches ``due``."""
        entry = (due, next(self._order), action)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wakeup.set()

    def wake(self) -> None:
        """Look at the clock again now (call it after the clock jumped)."""
        self._wakeup.set()

    async def run(self) -> None:
        """Run due actions forever; cancel the task to stop."""
        heap = self._heap
        clock = self._clock
        while True:
            # Cleared before the actions run, so a push made by one of them still wakes us.
            self._wakeup.clear()
            now = clock.now()
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2]()
            delay = max(clock.real_seconds(heap[0][0] - clock.now()), 0.0) if heap else None
            try:
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

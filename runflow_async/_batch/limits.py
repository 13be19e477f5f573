"""Batch-wide limits: an adaptive concurrency window with a shared cool-down, and a pacer.

Why AIMD: a 429 says the organisation is over a limit Runflow does not publish
(docs: concepts/rate-limits), so the client must find it by probing. Additive
increase, multiplicative decrease (TCP's rule) is the simplest controller that
is known to converge on an unknown capacity and stay stable: halving reacts to
a hard cap within one round trip, and growing by one slot per window's worth
of successes probes back slowly, so the batch oscillates just under the limit
instead of hammering it. One decrease per cool-down keeps a burst of 429s
(every in-flight create hitting the same wall) from collapsing the window to 1.

They run on every create, so they use asyncio directly (the client runs on
asyncio only, as aiohttp does): ``asyncio.Event``, the loop's time and
``asyncio.sleep`` are what anyio's wrappers end in there, without the backend
lookup each of those makes per call; anyio's cancel scopes cancel them alike.
"""

from __future__ import annotations

import asyncio
import math

from runflow_async._core.clock import Clock

__all__ = ["AdaptiveWindow", "Pacer", "Slot"]


def _now() -> float:
    """``anyio.current_time()`` on asyncio: the running loop's time."""
    return asyncio.get_running_loop().time()


class AdaptiveWindow:
    """How many runs may be in flight (create until the client notices the end).

    Args:
        max_limit: The ceiling (the batch's ``max_concurrency``).
        adaptive: Shrink on rate limiting and grow back on success (AIMD).
        clock: Scales cool-down waits to the server's time.
        initial_backoff: Cool-down after a 429 without ``Retry-After``, doubled on
            each consecutive one (reset by a success), capped at ``max_backoff``.
    """

    def __init__(
        self,
        max_limit: int,
        *,
        adaptive: bool = True,
        clock: Clock | None = None,
        initial_backoff: float = 1.0,
        max_backoff: float = 32.0,
    ) -> None:
        self.max_limit = max_limit
        self.adaptive = adaptive
        self.limit = float(max_limit)
        self.in_use = 0
        self._clock = clock or Clock()
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._backoff = initial_backoff
        self._cooldown_until = 0.0
        self._changed = asyncio.Event()

    @property
    def capacity(self) -> int:
        """Slots allowed now (at least one)."""
        return max(1, math.floor(self.limit))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        """Wait for a free slot and take it."""
        while self.in_use >= self.capacity:
            await self._changed.wait()
        self.in_use += 1

    def release(self) -> None:
        """Give a slot back."""
        self.in_use -= 1
        self._notify()

    async def wait_cooldown(self) -> None:
        """Wait out a shared cool-down, if one is running (it may grow while we wait)."""
        while True:
            remaining = self._cooldown_until - _now()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)

    def on_success(self) -> None:
        """A run finished: grow by one slot per window's worth of successes."""
        self._backoff = self._initial_backoff
        if self.adaptive and self.limit < self.max_limit:
            self.limit = min(float(self.max_limit), self.limit + 1.0 / self.limit)
            self._notify()

    def on_throttle(self, retry_after: float | None) -> None:
        """A create got 429: start (or extend) the shared cool-down; halve once per cool-down."""
        if not self.adaptive:
            return
        now = _now()
        wait = retry_after if retry_after is not None else self._backoff
        if retry_after is None:
            self._backoff = min(self._max_backoff, self._backoff * 2)
        if now >= self._cooldown_until:
            self.limit = max(1.0, self.limit / 2)
        self._cooldown_until = max(self._cooldown_until, now + self._clock.real(wait))


class Pacer:
    """Spaces creates evenly at ``rate`` per second, with no burst at start-up.

    Each caller reserves the next start time without awaiting in between, so
    concurrent callers are spread out exactly ``1/rate`` apart.
    """

    def __init__(self, rate: float, *, clock: Clock | None = None) -> None:
        self.interval = (clock or Clock()).real(1.0 / rate)
        self._next = -math.inf

    async def wait_turn(self) -> None:
        """Wait until this caller's start time."""
        now = _now()
        start = max(now, self._next)
        self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class Slot:
    """One item's hold on the window; releasing twice is harmless."""

    __slots__ = ("_window", "held")

    def __init__(self, window: AdaptiveWindow) -> None:
        self._window = window
        self.held = False

    async def acquire(self) -> None:
        """Take a slot (waits for one)."""
        await self._window.acquire()
        self.held = True

    def release(self) -> None:
        """Give the slot back if held."""
        if self.held:
            self.held = False
            self._window.release()

"""One clock for every wait the client chooses itself (backoff, poll spacing, cool-downs).

Against an emulator whose time runs faster (``--time-scale 0.01``), the client's
own waits must shrink with it. Instead of a ``time_scale`` number forwarded
through every module, the client builds one :class:`Clock` and hands it down
with its transport. Deadlines the caller gives (``timeout=``) stay real seconds.
"""

from __future__ import annotations

import asyncio
import functools

import anyio

__all__ = ["Clock", "shielded"]


class Clock:
    """Emulated seconds, as the server counts them, mapped onto real ones.

    Args:
        scale: Real seconds per emulated second (1 in production; 0 turns waits off).
    """

    __slots__ = ("scale",)

    def __init__(self, scale: float = 1.0) -> None:
        if scale < 0:
            raise ValueError("a clock's scale must not be negative")
        self.scale = scale

    def __repr__(self) -> str:
        return f"Clock(scale={self.scale})"

    def real(self, seconds: float) -> float:
        """Real seconds for ``seconds`` emulated ones."""
        return seconds * self.scale

    def now(self) -> float:
        """The event loop's time in emulated seconds (only differences mean anything).

        Read from the running loop directly: the client runs on asyncio only
        (aiohttp does), where this is what ``anyio.current_time()`` returns,
        without its per-call backend lookup.
        """
        now = asyncio.get_running_loop().time()
        return now / self.scale if self.scale else now

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` emulated seconds (still a checkpoint when it is 0).

        ``asyncio.sleep`` is what ``anyio.sleep`` awaits on asyncio; anyio's
        cancel scopes cancel it alike.
        """
        await asyncio.sleep(max(0.0, seconds) * self.scale)


@functools.cache
def _scope_type() -> type[anyio.CancelScope]:
    return type(anyio.CancelScope())


def shielded() -> anyio.CancelScope:
    """A cancel scope shielded from outside cancellation, as ``anyio.CancelScope(shield=True)``.

    Built from the running backend's class (asyncio's: aiohttp runs on
    nothing else) rather than through ``anyio.CancelScope``, which looks the
    backend up on every call.
    """
    return _scope_type()(shield=True)

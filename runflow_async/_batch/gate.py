"""The :class:`CreateGate` of a batch item: what a 429'd create does until it may retry."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from runflow_async._batch.limits import Slot

if TYPE_CHECKING:
    from runflow_async._batch.engine import Engine

__all__ = ["GaveUp", "ItemGate"]


class GaveUp(Exception):
    """The throttled create was given up before it was sent again; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class ItemGate:
    """A throttled create gives back its slot and its money, and waits out the cool-down.

    A 429 proves nothing was created, so the reservation is freed while the
    item waits: items holding slots while they wait for money can then go on,
    and the one that waits for a slot never waits on them (a deadlock once).
    """

    __slots__ = ("_engine", "_estimate", "_index", "_slot")

    def __init__(self, engine: Engine, index: int, slot: Slot, estimate: Decimal) -> None:
        self._engine = engine
        self._index = index
        self._slot = slot
        self._estimate = estimate

    def throttled(self, retry_after: float | None) -> None:
        self._engine.throttled(self._index, retry_after)

    async def wait_to_retry(self) -> None:
        engine = self._engine
        self._slot.release()
        engine.ledger.release(self._estimate)
        await engine.window.wait_cooldown()
        await self._slot.acquire()
        if engine.stop_reason is not None:
            raise GaveUp(engine.stop_reason)
        if not await engine.ledger.reserve(self._estimate):
            raise GaveUp("budget")
        if engine.stop_reason is not None:  # stopped while waiting for money
            engine.ledger.release(self._estimate)
            raise GaveUp(engine.stop_reason)

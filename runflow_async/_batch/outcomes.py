"""What a batch hands back: per-item outcomes, awaitable futures and the cost report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from runflow_async._core.models import GenerationResult

if TYPE_CHECKING:
    from collections.abc import Generator

    from runflow_async._core.requests import RunRequest

__all__ = ["CostReport", "ItemCost", "Outcome", "RunFuture"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one batch item: a result, or the typed error that stopped it.

    Attributes:
        index: Position of the item in submission order.
        request: What was asked.
        result: The finished run, when it succeeded.
        error: Why it did not: a ``RunError`` (the run failed, timed out or was
            abandoned), an ``APIError`` (the create failed), or a
            ``NotSubmittedError`` (never created: budget, credit, cancel).
        run_id: The run's id, whenever a run was created (also on errors).
        estimated_usd: The estimate reserved for it.
        billed_usd: What the API billed (``None`` if unknown or never billed).
    """

    index: int
    request: RunRequest
    result: GenerationResult | None = None
    error: BaseException | None = None
    run_id: str | None = None
    estimated_usd: Decimal = Decimal(0)
    billed_usd: Decimal | None = None

    @property
    def ok(self) -> bool:
        """Whether the item produced its images."""
        return self.result is not None

    def unwrap(self) -> GenerationResult:
        """Return the result or raise the error."""
        if self.result is not None:
            return self.result
        assert self.error is not None  # noqa: S101 - an outcome has one or the other
        raise self.error


class RunFuture:
    """An awaitable handle on one submitted item; ``await`` it for the result.

    Attributes:
        index: Position of the item in submission order.
        request: What was asked.
    """

    def __init__(self, index: int, request: RunRequest) -> None:
        self.index = index
        self.request = request
        self.run_id: str | None = None
        self._outcome: Outcome | None = None
        self._done = asyncio.Event()  # asyncio only: anyio's looks its backend up

    def __repr__(self) -> str:
        state = "pending" if self._outcome is None else ("ok" if self._outcome.ok else "error")
        return f"<RunFuture #{self.index} run_id={self.run_id!r} {state}>"

    def done(self) -> bool:
        """Whether the outcome is known."""
        return self._outcome is not None

    @property
    def outcome(self) -> Outcome | None:
        """The outcome, once known."""
        return self._outcome

    def _resolve(self, outcome: Outcome) -> None:
        if self._outcome is None:
            self._outcome = outcome
            self._done.set()

    async def wait(self) -> Outcome:
        """Wait for the outcome (never raises the item's error)."""
        await self._done.wait()
        assert self._outcome is not None  # noqa: S101 - set before the event fires
        return self._outcome

    async def result(self) -> GenerationResult:
        """Wait, then return the result or raise the item's error."""
        return (await self.wait()).unwrap()

    def __await__(self) -> Generator[Any, None, GenerationResult]:
        return self.result().__await__()


@dataclass(frozen=True, slots=True)
class ItemCost:
    """Estimated and billed cost of one item."""

    index: int
    run_id: str | None
    estimated_usd: Decimal
    billed_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class CostReport:
    """Estimated vs billed, per item and in total, after a batch.

    Attributes:
        items: One line per finished item, in submission order.
        estimated_usd: Sum of the estimates of items that were created.
        billed_usd: Sum of what the API billed.
        unsettled_run_ids: Runs created whose cost is not known yet (timed out,
            abandoned): they may still be billed.
    """

    items: tuple[ItemCost, ...] = ()
    estimated_usd: Decimal = Decimal(0)
    billed_usd: Decimal = Decimal(0)
    unsettled_run_ids: tuple[str, ...] = field(default=())

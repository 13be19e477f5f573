"""Observing a batch: one event type, a one-method protocol, a progress-bar adapter.

Observers are synchronous and observe-only: they run inline on the event loop,
so they must be quick and must not raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

__all__ = ["BatchEvent", "BatchObserver", "EventKind", "ProgressBarObserver"]

EventKind = Literal[
    "submitted",
    "retried",
    "throttled",
    "succeeded",
    "failed",
    "not_submitted",
    "cost_settled",
    "budget_recalibrated",
    "reconciled",
]


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """Something that happened in a batch.

    Attributes:
        kind: What happened. ``reconciled``: the run the item's create was
            answered with proved another create's; ``run_id`` is the item's
            own run, found by its ``client_ref``.
        index: The item, when the event is about one.
        run_id: The run, when there is one.
        error: The error, for ``failed``, ``not_submitted`` and ``retried``.
        retry_after: Seconds the server asked for, for ``throttled``.
        window: The concurrency window after a ``throttled`` event.
        estimated_usd: For ``cost_settled`` and ``budget_recalibrated``.
        billed_usd: For ``cost_settled`` and ``budget_recalibrated``.
        previous_factor: For ``budget_recalibrated``: the billing factor the
            run was admitted on, which its bill exceeded.
        factor: For ``budget_recalibrated``: the billing factor from now on
            (admission pauses until the runs in flight have settled).
    """

    kind: EventKind
    index: int | None = None
    run_id: str | None = None
    error: BaseException | None = None
    retry_after: float | None = None
    window: int | None = None
    estimated_usd: Decimal | None = None
    billed_usd: Decimal | None = None
    previous_factor: Decimal | None = None
    factor: Decimal | None = None


class BatchObserver(Protocol):
    """Anything callable with a :class:`BatchEvent`."""

    def __call__(self, event: BatchEvent, /) -> None:
        """Observe one event."""


class _Bar(Protocol):
    def update(self, n: int = 1, /) -> object: ...

    def set_postfix_str(self, s: str, /) -> object: ...


class ProgressBarObserver:
    """Drives a tqdm-style bar (``update`` and ``set_postfix_str``) from batch events.

    Example::

        with tqdm(total=len(prompts)) as bar:
            async with client.batch(observer=ProgressBarObserver(bar)) as batch: ...
    """

    def __init__(self, bar: _Bar) -> None:
        self.bar = bar
        self.done = 0
        self.failed = 0
        self.in_flight = 0
        self.spent_usd = Decimal(0)

    def __call__(self, event: BatchEvent, /) -> None:
        """Update counts and the bar."""
        if event.kind == "submitted":
            self.in_flight += 1
        elif event.kind in ("succeeded", "failed", "not_submitted"):
            if event.run_id is not None:  # it was counted as submitted
                self.in_flight = max(0, self.in_flight - 1)
            if event.kind == "succeeded":
                self.done += 1
            else:
                self.failed += 1
            self.bar.update(1)
        elif event.kind == "cost_settled" and event.billed_usd is not None:
            self.spent_usd += event.billed_usd
        else:
            return
        self.bar.set_postfix_str(
            f"done={self.done} failed={self.failed} in_flight={self.in_flight} "
            f"spent=${self.spent_usd:.4f}"
        )

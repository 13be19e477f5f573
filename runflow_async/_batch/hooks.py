"""What the engine is given and what it shows: work items, typed hooks, a read-only snapshot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from runflow_async._batch.outcomes import Outcome
from runflow_async._core.models import Run
from runflow_async._core.requests import RunRequest

__all__ = ["EngineHooks", "EngineSnapshot", "NoHooks", "WorkItem"]

Prepare = Callable[[RunRequest], Awaitable[RunRequest]]
"""Turns a request into the one to create, inside the item's slot (uploads, say)."""


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One item for :meth:`Engine.submit` / :meth:`Engine.put`.

    Attributes:
        index: The item's position; outcomes and hooks name it.
        request: What to create (its ``client_ref`` is kept when set).
        estimate_usd: The reservation; ``None`` estimates it with the engine's pricing.
        run_id: A run created earlier: collect it, never create (a resumed dataset).
        maybe_created: A create with ``request.client_ref`` may have been sent
            before the engine started (by an earlier process or batch, never
            later): it is looked up by ``client_ref`` over the visibility window
            counted from the engine's start (one window for all such items) and
            collected if found; created (same ``Idempotency-Key``) only once the
            window passed without a sighting; outcome-unknown, never sent, if
            absence cannot be established (filter ignored, lookups failing).
        prepare: Called inside the slot, just before the create. If it raises
            (an upload failed), the item ends with that error, never created,
            and its siblings go on; a closed client still ends the batch.
    """

    index: int
    request: RunRequest
    estimate_usd: Decimal | None = None
    run_id: str | None = None
    maybe_created: bool = False
    prepare: Prepare | None = None

    @property
    def creates(self) -> bool:
        """Whether it would create a run (rather than collect one that may exist)."""
        return self.run_id is None and not self.maybe_created


class EngineHooks(Protocol):
    """Synchronous, record-only hooks given to the engine at construction.

    They run inline on the event loop and must not raise. ``on_submitting``
    comes before a create is sent (write-ahead: the ``client_ref`` to find it
    by), ``on_created`` as soon as the create returns, ``on_outcome`` when an
    item ends (before the outcome is offered to :attr:`Engine.outcomes`), and
    ``on_stop`` once, when the engine stops submitting.
    """

    def on_submitting(self, index: int, client_ref: str, /) -> None:
        """A create for item ``index`` is about to be sent with ``client_ref``."""

    def on_created(self, index: int, run: Run, /) -> None:
        """Item ``index`` has its run.

        Called again, with the item's real run, when the run its create was
        answered with proves to be another create's (a server that answered
        two creates with one run id): the later call wins.
        """

    def on_outcome(self, outcome: Outcome, /) -> None:
        """Item ``outcome.index`` ended."""

    def on_stop(self, reason: str, /) -> None:
        """The engine stopped submitting (``budget``, ``cancelled``, ...)."""


class NoHooks:
    """Hooks that do nothing; subclass it to implement only some."""

    def on_submitting(self, index: int, client_ref: str, /) -> None:
        """Do nothing."""

    def on_created(self, index: int, run: Run, /) -> None:
        """Do nothing."""

    def on_outcome(self, outcome: Outcome, /) -> None:
        """Do nothing."""

    def on_stop(self, reason: str, /) -> None:
        """Do nothing."""


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """The engine's state at one moment (copies: reading it changes nothing).

    Attributes:
        stop_reason: Why it stopped submitting, or ``None``.
        window: The concurrency window now.
        in_flight: Slots taken now.
        queued: Items waiting for a slot.
        spent_usd: Spent so far (earlier spend given at construction included).
        committed_usd: Spent plus reservations at the current billing factor.
        billing_factor: What reservations are multiplied by now (the guess
            ``1.5`` until a run settles, then the largest billed/estimated
            ratio seen times ``billing_margin``).
        billed_usd: What the API billed for this engine's runs.
        unfinished: Runs created and not seen to finish, by item index
            (being waited on, timed out, abandoned or unreadable).
        uncertain: ``client_ref`` of creates whose outcome is unknown, by index.
        undelivered: Runs created whose outcome was not handed over yet, by index.
    """

    stop_reason: str | None
    window: int
    in_flight: int
    queued: int
    spent_usd: Decimal
    committed_usd: Decimal
    billing_factor: Decimal
    billed_usd: Decimal
    unfinished: Mapping[int, str]
    uncertain: Mapping[int, str]
    undelivered: Mapping[int, str]

"""The create half of one item's life: admission, the create, and what stopping it means.

Admission (:meth:`CreateLife._admit`, the only one) waits out any shared 429
cool-down and the pacer, then reserves the estimate in the
:class:`BudgetLedger`. The create is retried by the HTTP layer; a 429 comes
back here through :class:`_Readmission`, which gives the slot and the money
back and admits the item again.

While a create is under way its :class:`Creating` record says whether a run
may exist (an attempt was answered 2xx, or went unanswered, or a run an
earlier process sent may exist). An item stopped from then on (the batch
cancelled, Ctrl-C, the client closed) ends ``CreateOutcomeUnknownError`` with
its ``client_ref`` listed and its money held; only an item whose create
provably made nothing ends "not submitted".

A run the item was answered with that turns out to be another create's (read
with another ``client_ref``) is given up for the item's own, found by its
``client_ref`` (:meth:`CreateLife._own_run`): both items collect their runs.

This is a part of :class:`Engine`, kept in its own module for size; nothing
else calls it.
"""

from __future__ import annotations

import functools
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio

from runflow_async._batch.budget import BudgetLedger
from runflow_async._batch.grouping import CreateGroups
from runflow_async._batch.hooks import EngineHooks
from runflow_async._batch.limits import AdaptiveWindow, Pacer, Slot
from runflow_async._batch.observe import BatchEvent
from runflow_async._batch.options import EngineOptions
from runflow_async._batch.outcomes import Outcome
from runflow_async._callbacks.waiter import CallbackWaiter
from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import (
    APIError,
    AuthenticationError,
    ClientClosedError,
    CreateOutcomeUnknownError,
    InsufficientCreditError,
    NotSubmittedError,
    PermissionDeniedError,
    TLSVerificationError,
)
from runflow_async._core.models import Run
from runflow_async._core.requests import RunRequest
from runflow_async._http.create import (
    CreateProgress,
    create_run,
    idempotency_key_for,
    new_client_ref,
)
from runflow_async._http.reclaim import not_ours, reclaim
from runflow_async._http.retry import RetryEvent
from runflow_async._http.transport import Transport
from runflow_async._waiting.durations import DurationStats
from runflow_async._waiting.list_poller import ListPoller

__all__ = ["STOP_MESSAGES", "CreateLife", "Creating"]

logger = logging.getLogger("runflow_async")

STOP_MESSAGES = {
    "budget": "it would exceed max_cost_usd",
    "insufficient_credit": "the organisation ran out of credit (402 INSUFFICIENT_CREDIT)",
    "fail_fast": "an earlier item failed and fail_fast is set",
    "cancelled": "the batch was cancelled",
    "closed": "the client was closed",
    "authentication": "the API refused the key or its permissions (401/403)",
    "tls": "the API's TLS certificate did not verify (trust its CA: ssl_context)",
    "error": "the batch failed",
}


# Create refusals that prove nothing was created and that every later create
# would get too (a wrong key, no credit): the batch stops at the first one.
_STOPPING: dict[type[APIError], str] = {
    InsufficientCreditError: "insufficient_credit",
    AuthenticationError: "authentication",
    PermissionDeniedError: "authentication",
    TLSVerificationError: "tls",
}


# What a batch item may carry: a callback_url or metadata are a batch's own, not an item's.
_BATCHABLE = frozenset({"input", "client_ref"})


class _GaveUp(Exception):
    """A throttled create was given up before it was sent again; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Creating(CreateProgress):
    """One item's create while it may be under way (see the module doc).

    Attributes:
        client_ref: What it is (or will be) sent with, once known.
        reserved: Whether the ledger holds the item's reservation now (a 429
            wait gives it back until the item is admitted again).
    """

    __slots__ = ("client_ref", "reserved")

    def __init__(self, client_ref: str | None, *, maybe_created: bool = False) -> None:
        super().__init__(maybe_created=maybe_created)
        self.client_ref = client_ref
        self.reserved = False


class CreateLife:
    """The create half of :class:`Engine`'s items (state is the engine's own)."""

    _transport: Transport
    _poll: PollPolicy
    _stats: DurationStats
    _options: EngineOptions
    _hooks: EngineHooks
    _window: AdaptiveWindow
    _ledger: BudgetLedger
    _pacer: Pacer | None
    _poller: ListPoller | None
    _callbacks: CallbackWaiter | None
    _groups: CreateGroups | None
    _stop_reason: str | None
    _unfinished: dict[int, str]
    _unsettled: dict[int, str]
    _uncertain: dict[int, str]
    _undelivered: dict[int, str]
    _creating: dict[int, Creating]
    _billed: Decimal
    _wait_scopes: set[anyio.CancelScope]
    _started_at: float  # clock seconds: anything ``maybe_created`` was sent before it

    if TYPE_CHECKING:  # the engine's and the item half's; declared for the type checker

        def stop(self, reason: str, *, cancel_in_flight: bool = False) -> None: ...

        async def _wait(self, run: Run, request: RunRequest, slot: Slot | None) -> Run: ...

    def emit(self, event: BatchEvent) -> None:
        """Pass an event to the observer, if any."""
        if self._options.observer is not None:
            self._options.observer(event)

    def not_submitted(
        self, index: int, request: RunRequest, estimate: Decimal, reason: str
    ) -> Outcome:
        """Build (and announce) the outcome of an item that was never created."""
        error = NotSubmittedError(
            f"Item {index} was not submitted: {STOP_MESSAGES[reason]}.", reason=reason
        )
        self.emit(BatchEvent("not_submitted", index=index, error=error))
        return Outcome(index, request, error=error, estimated_usd=estimate)

    async def _admit(self, estimate: Decimal) -> str | None:
        """Admit an item holding a slot: ``None``, or the reason it may not start."""
        if self._stop_reason is None:
            await self._window.wait_cooldown()
            if self._pacer is not None:
                await self._pacer.wait_turn()
        if self._stop_reason is not None:
            return self._stop_reason
        if not await self._ledger.reserve(estimate):
            return "budget"
        if self._stop_reason is not None:  # stopped while waiting for money
            self._ledger.release(estimate)
            return self._stop_reason
        return None

    async def _create(
        self, index: int, request: RunRequest, est: Decimal, slot: Slot
    ) -> Run | Outcome:
        client_ref = request.client_ref or new_client_ref()
        creating = self._creating.setdefault(index, Creating(client_ref))
        creating.client_ref, creating.reserved = client_ref, True  # admitted by the caller
        self._uncertain[index] = client_ref
        self._hooks.on_submitting(index, client_ref)
        body = request.to_body(client_ref=client_ref)
        if self._callbacks is not None and request.callback_url is None:
            body["callback_url"] = self._callbacks.receiver.url
        gate = _Readmission(self, index, slot, est, creating) if self._options.adaptive else None
        try:
            run = await self._create_call(index, request.model, body, gate, creating)
        except _GaveUp as exc:  # throttled, then stopped or priced out: never created
            del self._uncertain[index]
            return self.not_submitted(index, request, est, exc.reason)
        except APIError as exc:
            if not creating.reserved:  # given up in a 429 wait after an ambiguous
                self._ledger.reserve_unchecked(est)  # attempt: it may exist, hold its money
            return self._create_failed(index, request, est, exc)
        del self._uncertain[index]
        self._unfinished[index] = self._undelivered[index] = run.id
        self._hooks.on_created(index, run)
        self.emit(BatchEvent("submitted", index=index, run_id=run.id))
        if creating.untrusted is not None:  # answered with another create's run, then found
            self.emit(BatchEvent("reconciled", index=index, run_id=run.id))
        return run

    async def _create_call(
        self,
        index: int,
        model: str,
        body: dict[str, Any],
        gate: _Readmission | None,
        creating: Creating,
    ) -> Run:
        """The item's run: by its group's batch create when it may join one, else on its own."""
        client_ref: str = body["client_ref"]
        on_retry = functools.partial(self._on_create_retry, index)
        if self._groups is not None and body.keys() <= _BATCHABLE:
            got = await self._groups.create(model, client_ref, body["input"], creating)
            if isinstance(got, APIError):
                raise got
            if got is not None:
                return got
        return await create_run(
            self._transport,
            model,
            body,
            idempotency_key=idempotency_key_for(client_ref),
            on_retry=on_retry,
            gate=gate,
            progress=creating,
        )

    def _create_failed(
        self, index: int, request: RunRequest, est: Decimal, exc: APIError
    ) -> Outcome:
        stop = _STOPPING.get(type(exc))
        if stop is not None:  # the next creates would be refused alike: stop them all
            del self._uncertain[index]
            self._ledger.release(est)
            self.stop(stop)
            outcome = self.not_submitted(index, request, est, stop)
            assert outcome.error is not None  # noqa: S101 - not_submitted sets it
            outcome.error.__cause__ = exc
            return outcome
        if isinstance(exc, CreateOutcomeUnknownError):
            # It may exist and be billed: keep its money aside for good (left
            # as a reservation, later items would wait for a settlement that
            # never comes), and its client_ref listed.
            self._ledger.hold(est)
        else:
            del self._uncertain[index]
            self._ledger.release(est)  # provably not created
        self.emit(BatchEvent("failed", index=index, error=exc))
        if self._options.fail_fast:
            self.stop("fail_fast", cancel_in_flight=True)
        return Outcome(index, request, error=exc, estimated_usd=est)

    def _on_create_retry(self, index: int, event: RetryEvent) -> None:
        self.emit(BatchEvent("retried", index=index, error=event.error))

    def _throttled(self, index: int, retry_after: float | None) -> None:
        self._window.on_throttle(retry_after)
        event = BatchEvent(
            "throttled", index=index, retry_after=retry_after, window=self._window.capacity
        )
        self.emit(event)

    async def _own_run(self, index: int, request: RunRequest, final: Run, slot: Slot | None) -> Run:
        """``final``, or the item's own run once ``final`` shows another create's ``client_ref``.

        Raises:
            CreateOutcomeUnknownError: The item's own run was not found (its
                ``client_ref`` is listed as uncertain).
        """
        creating = self._creating.get(index)
        ref = request.client_ref or (creating.client_ref if creating is not None else None)
        if ref is None or not not_ours(final, ref):
            return final
        try:
            real = await reclaim(self._transport, ref, idempotency_key_for(ref), final)
        except CreateOutcomeUnknownError:
            self._unfinished.pop(index, None)
            self._undelivered.pop(index, None)
            self._uncertain[index] = ref
            raise
        self._unfinished[index] = self._undelivered[index] = real.id
        self._hooks.on_created(index, real)
        self.emit(BatchEvent("reconciled", index=index, run_id=real.id))
        return await self._wait(real, request, slot)

    def _stopped_create(
        self,
        index: int,
        request: RunRequest,
        est: Decimal,
        creating: Creating | None,
        error: BaseException | None,
    ) -> Outcome | None:
        """The outcome of an item stopped without a run while a run may exist, else ``None``."""
        if creating is None:  # its create never started
            return None
        ref = creating.client_ref
        if ref is None or not creating.maybe_created:
            self._uncertain.pop(index, None)  # provably nothing was made
            return None
        if not creating.reserved:
            self._ledger.reserve_unchecked(est)
        self._ledger.hold(est)  # it may bill: its money stays aside for good
        self._uncertain[index] = ref
        closed = isinstance(error, ClientClosedError)
        why = STOP_MESSAGES["closed" if closed else self._stop_reason or "cancelled"]
        unknown = CreateOutcomeUnknownError(
            f"Item {index} stopped ({why}) while its create with client_ref {ref} may have "
            "made a run; look it up by client_ref before creating it again.",
            client_ref=ref,
            idempotency_key=idempotency_key_for(ref),
            method="POST",
        )
        if error is not None and not isinstance(error, anyio.get_cancelled_exc_class()):
            unknown.__cause__ = error
        self.emit(BatchEvent("failed", index=index, error=unknown))
        return Outcome(index, request, error=unknown, estimated_usd=est)


class _Readmission:
    """The :class:`CreateGate` of one item: a 429'd create is admitted again.

    A 429 proves nothing was created, so the slot and the reservation are given
    back while the item waits: items holding slots while they wait for money
    can then go on, and the one that waits for a slot never waits on them.
    """

    __slots__ = ("_creating", "_estimate", "_index", "_life", "_slot")

    def __init__(
        self, life: CreateLife, index: int, slot: Slot, estimate: Decimal, creating: Creating
    ) -> None:
        self._life = life
        self._index = index
        self._slot = slot
        self._estimate = estimate
        self._creating = creating

    def throttled(self, retry_after: float | None) -> None:
        self._life._throttled(self._index, retry_after)

    async def wait_to_retry(self) -> None:
        self._slot.release()
        self._life._ledger.release(self._estimate)
        self._creating.reserved = False
        await self._life._window.wait_cooldown()
        await self._slot.acquire()
        reason = await self._life._admit(self._estimate)
        if reason is not None:
            raise _GaveUp(reason)
        self._creating.reserved = True

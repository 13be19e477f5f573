"""One item's life inside the engine: admission, create, wait, settle.

An item holds a slot of the :class:`AdaptiveWindow` from before its create until
the client notices its run ended. Admission (:meth:`ItemLife._admit`, the only
one) waits out any shared 429 cool-down and the pacer, then reserves the
estimate in the :class:`BudgetLedger`. The create is retried by the HTTP layer;
a 429 comes back here through :class:`_Readmission`, which gives the slot and
the money back and admits the item again. The run is then waited for with the
batch's strategy and its cost settled with what the API billed.

This is a part of :class:`Engine`, kept in its own module for size; nothing
else calls it.
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio

from runflow_async._batch.budget import BudgetLedger, recalibrated
from runflow_async._batch.hooks import EngineHooks, WorkItem
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
    RunAbandonedError,
    RunError,
    RunTimeoutError,
)
from runflow_async._core.models import GenerationResult, Run, RunStatus
from runflow_async._core.requests import RunRequest
from runflow_async._http.create import create_run, find_sent_before, idempotency_key_for
from runflow_async._http.retry import RetryEvent
from runflow_async._http.runs import check_outcome, complete, growing, poll_run
from runflow_async._http.transport import Transport
from runflow_async._waiting.durations import DurationStats
from runflow_async._waiting.list_poller import ListPoller

__all__ = ["STOP_MESSAGES", "ItemLife"]

logger = logging.getLogger("runflow_async")

STOP_MESSAGES = {
    "budget": "it would exceed max_cost_usd",
    "insufficient_credit": "the organisation ran out of credit (402 INSUFFICIENT_CREDIT)",
    "fail_fast": "an earlier item failed and fail_fast is set",
    "cancelled": "the batch was cancelled",
    "closed": "the client was closed",
    "authentication": "the API refused the key or its permissions (401/403)",
    "error": "the batch failed",
}


# Create refusals that prove nothing was created and that every later create
# would get too (a wrong key, no credit): the batch stops at the first one.
_STOPPING: dict[type[APIError], str] = {
    InsufficientCreditError: "insufficient_credit",
    AuthenticationError: "authentication",
    PermissionDeniedError: "authentication",
}


class _GaveUp(Exception):
    """A throttled create was given up before it was sent again; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class ItemLife:
    """The per-item half of :class:`Engine` (state is the engine's own)."""

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
    _stop_reason: str | None
    _unfinished: dict[int, str]
    _unsettled: dict[int, str]
    _uncertain: dict[int, str]
    _undelivered: dict[int, str]
    _billed: Decimal
    _wait_scopes: set[anyio.CancelScope]
    _started_at: float  # clock seconds: anything ``maybe_created`` was sent before it

    def emit(self, event: BatchEvent) -> None:
        """Pass an event to the observer, if any."""
        if self._options.observer is not None:
            self._options.observer(event)

    if TYPE_CHECKING:  # the engine's; declared here for the type checker only

        def stop(self, reason: str, *, cancel_in_flight: bool = False) -> None: ...

    def not_submitted(
        self, index: int, request: RunRequest, estimate: Decimal, reason: str
    ) -> Outcome:
        """Build (and announce) the outcome of an item that was never created."""
        error = NotSubmittedError(
            f"Item {index} was not submitted: {STOP_MESSAGES[reason]}.", reason=reason
        )
        self.emit(BatchEvent("not_submitted", index=index, error=error))
        return Outcome(index, request, error=error, estimated_usd=estimate)

    # -- admission -----------------------------------------------------------

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

    # -- one item ------------------------------------------------------------

    async def _live(self, item: WorkItem, est: Decimal, slot: Slot) -> Outcome:
        """Run one admitted-or-not item to its outcome (the caller holds ``slot``)."""
        request = item.request
        if item.run_id is not None:
            return await self._attach(item.index, request, item.run_id, est)
        if item.maybe_created and request.client_ref is not None:
            found = await self._find(item.index, request, est)
            if isinstance(found, Outcome):
                return found
            if found is not None:
                return await self._attach(item.index, request, found.id, est)
        reason = await self._admit(est)
        if reason is not None:
            return self.not_submitted(item.index, request, est, reason)
        if item.prepare is not None:
            try:
                request = await item.prepare(request)
            except BaseException as exc:
                self._ledger.release(est)
                if not isinstance(exc, Exception) or isinstance(exc, ClientClosedError):
                    raise  # cancelled, or the client closed under us: not this item's own
                # This item's own preparation (an upload) failed: it alone ends, never created.
                self.emit(BatchEvent("failed", index=item.index, error=exc))
                return Outcome(item.index, request, error=exc, estimated_usd=est)
        created = await self._create(item.index, request, est, slot)
        if isinstance(created, Outcome):
            return created
        return await self._finish(item.index, request, est, created, slot=slot)

    async def _find(self, index: int, request: RunRequest, est: Decimal) -> Run | Outcome | None:
        ref = request.client_ref
        assert ref is not None  # noqa: S101 - checked by the caller
        try:  # one empty lookup is no proof: look over the window since this engine began
            found = await find_sent_before(self._transport, ref, since=self._started_at)
        except CreateOutcomeUnknownError as exc:
            self._uncertain[index] = ref
            self._ledger.reserve_unchecked(est)  # it may exist and bill: its money is held
            self._ledger.hold(est)
            return Outcome(index, request, error=exc, estimated_usd=est)
        if found is not None:
            self._hooks.on_created(index, found)
        return found

    async def _attach(self, index: int, request: RunRequest, run_id: str, est: Decimal) -> Outcome:
        # The run exists and bills whatever the cap says: reserve unconditionally.
        self._ledger.reserve_unchecked(est)
        self._unfinished[index] = self._undelivered[index] = run_id
        return await self._finish(index, request, est, Run(id=run_id))

    async def _create(
        self, index: int, request: RunRequest, est: Decimal, slot: Slot
    ) -> Run | Outcome:
        client_ref = request.client_ref or f"rfa-{uuid.uuid4().hex}"
        self._uncertain[index] = client_ref
        self._hooks.on_submitting(index, client_ref)
        body = request.to_body(client_ref=client_ref)
        if self._callbacks is not None and request.callback_url is None:
            body["callback_url"] = self._callbacks.receiver.url
        gate = _Readmission(self, index, slot, est) if self._options.adaptive else None
        try:
            run = await create_run(
                self._transport,
                request.model,
                body,
                idempotency_key=idempotency_key_for(client_ref),
                on_retry=lambda event: self._on_create_retry(index, event),
                gate=gate,
            )
        except _GaveUp as exc:  # throttled, then stopped or priced out: never created
            del self._uncertain[index]
            return self.not_submitted(index, request, est, exc.reason)
        except APIError as exc:
            if isinstance(exc.__cause__, _GaveUp):  # after an ambiguous attempt: the
                self._ledger.reserve_unchecked(est)  # run may exist, hold what the gate freed
            return self._create_failed(index, request, est, exc)
        del self._uncertain[index]
        self._unfinished[index] = self._undelivered[index] = run.id
        self._hooks.on_created(index, run)
        self.emit(BatchEvent("submitted", index=index, run_id=run.id))
        return run

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

    async def _finish(
        self, index: int, request: RunRequest, est: Decimal, run: Run, *, slot: Slot | None = None
    ) -> Outcome:
        with anyio.CancelScope() as scope:
            self._wait_scopes.add(scope)
            try:
                final = await self._wait(run, request, slot)
            except (RunTimeoutError, APIError) as exc:
                # Timed out, or unreadable for good (a 404, a refused key): this
                # item ends, never its siblings. It may still bill: listed, held.
                self._unsettled[index] = self._unfinished.pop(index)
                self._ledger.hold(est)
                self.emit(BatchEvent("failed", index=index, run_id=run.id, error=exc))
                return Outcome(index, request, error=exc, run_id=run.id, estimated_usd=est)
            finally:
                self._wait_scopes.discard(scope)
        if scope.cancelled_caught:  # fail_fast abandoned it; the run goes on
            return self.abandoned(index, request, est)
        del self._unfinished[index]
        return self._settle(index, request, est, final)

    def _by_callback(self, request: RunRequest) -> bool:
        rx = self._callbacks.receiver if self._callbacks is not None else None
        return rx is not None and request.callback_url in (None, rx.url)

    async def _wait(self, run: Run, request: RunRequest, slot: Slot | None) -> Run:
        try:
            with anyio.fail_after(self._options.timeout):  # the caller's real seconds
                final = run if run.is_terminal else await self._notice(run, request, slot)
                if complete(final):
                    return final
                # Succeeded and billed, but this answer shows no images: read it again.
                return await poll_run(self._transport, run.id, schedule=growing(self._poll))
        except TimeoutError as exc:
            raise RunTimeoutError(
                f"Run {run.id} did not finish within {self._options.timeout}s; it may still "
                "finish and be billed.",
                run=run,
            ) from exc

    async def _notice(self, run: Run, request: RunRequest, slot: Slot | None) -> Run:
        """The run once the batch's strategy notices it ended."""
        if self._callbacks is not None and self._by_callback(request):
            # Noticed by callback: the slot is free while the cost is looked up.
            on_noticed = slot.release if slot is not None else None
            return await self._callbacks.wait(run.id, on_noticed)
        clock = self._transport.clock
        started = clock.now()
        final = await self._poller.wait(run.id) if self._poller is not None else None
        if final is not None:
            return final
        schedule = self._stats.schedule(self._poll, elapsed=clock.now() - started)
        return await poll_run(self._transport, run.id, schedule=schedule)

    def _settle(self, index: int, request: RunRequest, est: Decimal, final: Run) -> Outcome:
        if final.succeeded:
            settled = self._ledger.settle(est, final.cost)
            billed: Decimal | None = settled.billed_usd
            if settled.recalibration is not None:
                self.emit(recalibrated(index, final.id, settled.recalibration))
            self._window.on_success()
        else:
            self._ledger.release(est)
            # A canceled run may still bill what the provider charged (never
            # a negative amount: nothing the API reports lowers spending).
            billed = final.cost if final.cost is not None and final.cost > 0 else None
            if billed is not None:
                self._ledger.add_spent(billed)
        self._billed += billed or 0
        self.emit(
            BatchEvent(
                "cost_settled", index=index, run_id=final.id, estimated_usd=est, billed_usd=billed
            )
        )
        try:
            checked = check_outcome(final)
        except RunError as exc:
            self.emit(BatchEvent("failed", index=index, run_id=final.id, error=exc))
            if self._options.fail_fast:
                self.stop("fail_fast", cancel_in_flight=True)
            return Outcome(
                index, request, error=exc, run_id=final.id, estimated_usd=est, billed_usd=billed
            )
        self.emit(BatchEvent("succeeded", index=index, run_id=final.id))
        partial = checked.status is RunStatus.PARTIAL_SUCCEEDED
        result = GenerationResult(checked, partial=partial)
        return Outcome(
            index, request, result=result, run_id=final.id, estimated_usd=est, billed_usd=billed
        )

    def abandoned(
        self, index: int, request: RunRequest, est: Decimal, error: BaseException | None = None
    ) -> Outcome:
        """The outcome of an item stopped midway; its run, if any, stays listed and held."""
        run_id = self._unfinished.pop(index, None)
        if run_id is None:
            run_id = self._unsettled.get(index)
        else:
            self._ledger.hold(est)  # it goes on (no public cancel) and may bill
            self._unsettled[index] = run_id
        if run_id is None:
            if error is not None and not isinstance(error, anyio.get_cancelled_exc_class()):
                return Outcome(index, request, error=error, estimated_usd=est)
            return self.not_submitted(index, request, est, self._stop_reason or "cancelled")
        if error is None or isinstance(error, anyio.get_cancelled_exc_class()):
            error = RunAbandonedError(
                f"Run {run_id} was still running when the batch stopped; it may still be "
                "billed, so collect it later with wait().",
                run=Run(id=run_id),
            )
        return Outcome(index, request, error=error, run_id=run_id, estimated_usd=est)


class _Readmission:
    """The :class:`CreateGate` of one item: a 429'd create is admitted again.

    A 429 proves nothing was created, so the slot and the reservation are given
    back while the item waits: items holding slots while they wait for money
    can then go on, and the one that waits for a slot never waits on them.
    """

    __slots__ = ("_estimate", "_index", "_life", "_slot")

    def __init__(self, life: ItemLife, index: int, slot: Slot, estimate: Decimal) -> None:
        self._life = life
        self._index = index
        self._slot = slot
        self._estimate = estimate

    def throttled(self, retry_after: float | None) -> None:
        self._life._throttled(self._index, retry_after)

    async def wait_to_retry(self) -> None:
        self._slot.release()
        self._life._ledger.release(self._estimate)
        await self._life._window.wait_cooldown()
        await self._slot.acquire()
        reason = await self._life._admit(self._estimate)
        if reason is not None:
            raise _GaveUp(reason)

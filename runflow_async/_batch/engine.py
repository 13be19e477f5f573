"""One batch item's life, shared by :class:`Batch` and ``map``: limits, money, create, wait.

An item holds a slot of the :class:`AdaptiveWindow` from before its create until
the client notices its run ended. In between it waits out any shared 429
cool-down and the pacer, reserves its estimate in the :class:`BudgetLedger`,
creates the run (the HTTP layer retries; this only listens), waits with the
chosen strategy, then settles the cost with what the API billed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from decimal import Decimal

import anyio

from runflow_async._batch.budget import BudgetLedger
from runflow_async._batch.gate import GaveUp, ItemGate
from runflow_async._batch.limits import AdaptiveWindow, Pacer, Slot
from runflow_async._batch.observe import BatchEvent
from runflow_async._batch.options import EngineOptions
from runflow_async._batch.outcomes import Outcome
from runflow_async._callbacks.waiter import CallbackWaiter
from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import (
    APIError,
    CreateOutcomeUnknownError,
    InsufficientCreditError,
    NotSubmittedError,
    RunAbandonedError,
    RunError,
    RunTimeoutError,
)
from runflow_async._core.estimate import estimate_request
from runflow_async._core.models import GenerationResult, Run, RunStatus
from runflow_async._core.requests import RunRequest
from runflow_async._http.create import create_run
from runflow_async._http.retry import RetryEvent
from runflow_async._http.runs import check_outcome
from runflow_async._http.transport import Transport
from runflow_async._pricing import PricingPolicy
from runflow_async._waiting.list_poller import DurationStats, ListPoller, poll_run

__all__ = ["Engine", "EngineView"]

logger = logging.getLogger("runflow_async")

_STOP_MESSAGES = {
    "budget": "it would exceed max_cost_usd",
    "insufficient_credit": "the organisation ran out of credit (402 INSUFFICIENT_CREDIT)",
    "fail_fast": "an earlier item failed and fail_fast is set",
    "cancelled": "the batch was cancelled",
}


class Engine:
    """Runs items under one batch's limits; the driver owns the task group."""

    def __init__(
        self,
        transport: Transport,
        *,
        pricing: PricingPolicy,
        poll: PollPolicy,
        stats: DurationStats,
        options: EngineOptions,
    ) -> None:
        self.transport = transport
        self.pricing = pricing
        self.poll = poll
        self.stats = stats
        self.options = options
        scale = transport.retry.time_scale
        self.window = AdaptiveWindow(
            options.max_concurrency, adaptive=options.adaptive, time_scale=scale
        )
        self.ledger = BudgetLedger(options.max_cost_usd)
        rate = options.submits_per_second
        self.pacer = Pacer(rate, time_scale=scale) if rate else None
        self.poller = (
            None
            if options.wait_strategy == "per_run"
            else ListPoller(transport, stats, poll, allow_fallback=options.wait_strategy == "auto")
        )
        rx = options.callbacks
        self.callbacks = CallbackWaiter(transport, rx, stats, poll) if rx is not None else None
        self.stop_reason: str | None = None
        self.on_stop: Callable[[str], None] | None = None
        self.on_abandon: Callable[[Outcome], None] | None = None
        # Write-ahead hooks (the dataset journal): told the client_ref before a
        # create is sent, and the run as soon as the create returns.
        self.on_submitting: Callable[[int, str], None] | None = None
        self.on_created: Callable[[int, Run], None] | None = None
        self.unfinished: dict[int, str] = {}
        self.uncertain: dict[int, str] = {}
        self.unsettled: dict[int, str] = {}
        self.billed_total = Decimal(0)
        self._scopes: set[anyio.CancelScope] = set()

    async def run_background(self) -> None:
        """Serve the shared pollers (run it in the driver's task group until cancelled)."""
        async with anyio.create_task_group() as tg:
            if self.poller is not None:
                tg.start_soon(self.poller.run)
            if self.callbacks is not None:
                tg.start_soon(self.callbacks.run)

    def _by_callback(self, request: RunRequest) -> bool:
        rx = self.callbacks.receiver if self.callbacks is not None else None
        return rx is not None and request.callback_url in (None, rx.url)

    # -- events and stopping -------------------------------------------------

    def emit(self, event: BatchEvent) -> None:
        """Pass an event to the observer, if any."""
        if self.options.observer is not None:
            self.options.observer(event)

    def stop(self, reason: str, *, cancel_in_flight: bool = False) -> None:
        """Stop submitting (first reason wins); optionally abandon runs being waited on."""
        if self.stop_reason is None:
            self.stop_reason = reason
            logger.info("Batch stopped submitting: %s.", _STOP_MESSAGES[reason])
            if self.on_stop is not None:
                self.on_stop(reason)
        if cancel_in_flight:
            for scope in self._scopes:
                scope.cancel()

    def not_submitted(
        self, index: int, request: RunRequest, estimate: Decimal, reason: str
    ) -> Outcome:
        """Build (and announce) the outcome of an item that was never created."""
        error = NotSubmittedError(
            f"Item {index} was not submitted: {_STOP_MESSAGES[reason]}.", reason=reason
        )
        self.emit(BatchEvent("not_submitted", index=index, error=error))
        return Outcome(index, request, error=error, estimated_usd=estimate)

    def estimate(self, request: RunRequest, index: int = 0) -> Decimal:
        """The USD estimate reserved for ``request``."""
        return estimate_request(request, policy=self.pricing, index=index).usd

    def _on_create_retry(self, index: int, event: RetryEvent) -> None:
        self.emit(BatchEvent("retried", index=index, error=event.error))

    def throttled(self, index: int, retry_after: float | None) -> None:
        """A create of item ``index`` got 429: adapt the whole batch."""
        self.window.on_throttle(retry_after)
        self.emit(
            BatchEvent(
                "throttled", index=index, retry_after=retry_after, window=self.window.capacity
            )
        )

    # -- one item ------------------------------------------------------------

    async def run_item(
        self, index: int, request: RunRequest, slot: Slot, estimate: Decimal | None = None
    ) -> Outcome:
        """Run one item to its outcome. The caller acquires ``slot`` and releases it after.

        On cancellation the item's outcome (abandoned, with its run id, or not
        submitted) goes to ``on_abandon`` before the cancellation propagates.
        """
        est = self.estimate(request, index) if estimate is None else estimate
        run_id: str | None = None
        try:
            if self.stop_reason is None:
                await self.window.wait_cooldown()
                if self.pacer is not None:
                    await self.pacer.wait_turn()
            if self.stop_reason is not None:
                return self.not_submitted(index, request, est, self.stop_reason)
            if not await self.ledger.reserve(est):
                return self.not_submitted(index, request, est, "budget")
            if self.stop_reason is not None:  # stopped while waiting for money
                self.ledger.release(est)
                return self.not_submitted(index, request, est, self.stop_reason)
            created = await self._create(index, request, est, slot)
            if isinstance(created, Outcome):
                return created
            run_id = created.id
            return await self._finish(
                index, request, est, created, by_callback=self._by_callback(request), slot=slot
            )
        except anyio.get_cancelled_exc_class():
            if self.on_abandon is not None:
                self.on_abandon(self._abandoned(index, request, est, run_id))
            raise

    async def attach(
        self, index: int, request: RunRequest, run_id: str, estimate: Decimal
    ) -> Outcome:
        """Collect a run created earlier (a resumed dataset): wait, settle, never create.

        The run exists and will be billed whatever the cap says, so its estimate
        is reserved unconditionally.
        """
        self.ledger.reserve_unchecked(estimate)
        self.unfinished[index] = run_id
        try:
            return await self._finish(index, request, estimate, Run(id=run_id))
        except anyio.get_cancelled_exc_class():
            if self.on_abandon is not None:
                self.on_abandon(self._abandoned(index, request, estimate, run_id))
            raise

    async def _create(
        self, index: int, request: RunRequest, est: Decimal, slot: Slot
    ) -> Run | Outcome:
        client_ref = request.client_ref or f"rfa-{uuid.uuid4().hex}"
        self.uncertain[index] = client_ref
        if self.on_submitting is not None:
            self.on_submitting(index, client_ref)
        gate = ItemGate(self, index, slot, est) if self.options.adaptive else None
        body = request.to_body(client_ref=client_ref)
        if self.callbacks is not None and request.callback_url is None:
            body["callback_url"] = self.callbacks.receiver.url
        try:
            run = await create_run(
                self.transport,
                request.model,
                body,
                idempotency_key=str(uuid.uuid4()),
                on_retry=lambda event: self._on_create_retry(index, event),
                gate=gate,
            )
        except GaveUp as exc:  # throttled, then stopped or priced out: never created
            del self.uncertain[index]
            return self.not_submitted(index, request, est, exc.reason)
        except InsufficientCreditError as exc:
            del self.uncertain[index]
            self.ledger.release(est)
            self.stop("insufficient_credit")
            outcome = self.not_submitted(index, request, est, "insufficient_credit")
            assert outcome.error is not None  # noqa: S101 - not_submitted sets it
            outcome.error.__cause__ = exc
            return outcome
        except APIError as exc:
            if isinstance(exc, CreateOutcomeUnknownError):
                # It may exist and be billed: keep its money aside for good.
                # (Left as a reservation, later items would wait for a
                # settlement that never comes.)
                self.ledger.hold(est)
            else:
                del self.uncertain[index]
                self.ledger.release(est)  # provably not created
            self.emit(BatchEvent("failed", index=index, error=exc))
            if self.options.fail_fast:
                self.stop("fail_fast", cancel_in_flight=True)
            return Outcome(index, request, error=exc, estimated_usd=est)
        del self.uncertain[index]
        if self.on_created is not None:
            self.on_created(index, run)
        self.unfinished[index] = run.id
        self.emit(BatchEvent("submitted", index=index, run_id=run.id))
        return run

    async def _finish(
        self,
        index: int,
        request: RunRequest,
        est: Decimal,
        run: Run,
        *,
        by_callback: bool = False,
        slot: Slot | None = None,
    ) -> Outcome:
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                final = await self._wait(run, by_callback, slot)
            except (RunTimeoutError, APIError) as exc:
                # Timed out, or the run could not be read for good (a 404, a
                # refused key): this item ends, never its siblings. The run
                # exists and may still be billed: it stays listed, its money held.
                del self.unfinished[index]
                self.unsettled[index] = run.id
                self.ledger.hold(est)  # it may still be billed
                self.emit(BatchEvent("failed", index=index, run_id=run.id, error=exc))
                return Outcome(index, request, error=exc, run_id=run.id, estimated_usd=est)
            finally:
                self._scopes.discard(scope)
        if scope.cancelled_caught:  # fail_fast abandoned it; the run goes on
            return self._abandoned(index, request, est, run.id)
        del self.unfinished[index]
        return self._settle(index, request, est, final)

    async def _wait(self, run: Run, by_callback: bool, slot: Slot | None) -> Run:
        if run.is_terminal:
            return run
        started = anyio.current_time()
        try:
            with anyio.fail_after(self.options.timeout):
                if by_callback and self.callbacks is not None:
                    # Noticed by callback: the slot is free while the cost is looked up.
                    on_noticed = slot.release if slot is not None else None
                    return await self.callbacks.wait(run.id, on_noticed)
                final = await self.poller.wait(run.id) if self.poller is not None else None
                if final is not None:
                    return final
                elapsed = (anyio.current_time() - started) / self.poll.time_scale
                return await poll_run(
                    self.transport, run.id, stats=self.stats, policy=self.poll, elapsed=elapsed
                )
        except TimeoutError as exc:
            raise RunTimeoutError(
                f"Run {run.id} did not finish within {self.options.timeout}s; it may still "
                "finish and be billed.",
                run=run,
            ) from exc

    def _settle(self, index: int, request: RunRequest, est: Decimal, final: Run) -> Outcome:
        if final.succeeded:
            billed: Decimal | None = self.ledger.settle(est, final.cost)
            self.window.on_success()
        else:
            self.ledger.release(est)
            billed = final.cost or None
            if billed:  # a canceled run may still bill what the provider charged
                self.ledger.add_spent(billed)
        self.billed_total += billed or 0
        self.emit(
            BatchEvent(
                "cost_settled", index=index, run_id=final.id, estimated_usd=est, billed_usd=billed
            )
        )
        try:
            checked = check_outcome(final)
        except RunError as exc:
            self.emit(BatchEvent("failed", index=index, run_id=final.id, error=exc))
            if self.options.fail_fast:
                self.stop("fail_fast", cancel_in_flight=True)
            return Outcome(
                index, request, error=exc, run_id=final.id, estimated_usd=est, billed_usd=billed
            )
        self.emit(BatchEvent("succeeded", index=index, run_id=final.id))
        partial = checked.status is RunStatus.PARTIAL_SUCCEEDED
        return Outcome(
            index,
            request,
            result=GenerationResult(checked, partial=partial),
            run_id=final.id,
            estimated_usd=est,
            billed_usd=billed,
        )

    def _abandoned(
        self, index: int, request: RunRequest, est: Decimal, run_id: str | None
    ) -> Outcome:
        if run_id is None:
            reason = self.stop_reason or "cancelled"
            return self.not_submitted(index, request, est, reason)
        # The run goes on (no public cancel): keep its reservation and its id.
        if self.unfinished.pop(index, None) is not None:
            self.ledger.hold(est)
        self.unsettled[index] = run_id
        error = RunAbandonedError(
            f"Run {run_id} was still running when the batch stopped; it may still be "
            "billed, so collect it later with wait().",
            run=Run(id=run_id),
        )
        return Outcome(index, request, error=error, run_id=run_id, estimated_usd=est)


class EngineView:
    """What ``Batch`` and ``map`` both expose about the runs their engine created."""

    _engine: Engine

    @property
    def billed_usd(self) -> Decimal:
        """What the API billed so far."""
        return self._engine.billed_total

    @property
    def unfinished_run_ids(self) -> list[str]:
        """Runs created but not seen to finish (abandoned or timed out): collect them later."""
        merged = {**self._engine.unsettled, **self._engine.unfinished}
        return [merged[i] for i in sorted(merged)]

    @property
    def uncertain_client_refs(self) -> list[str]:
        """``client_ref`` of creates whose outcome is unknown; look them up before resubmitting."""
        return list(self._engine.uncertain.values())

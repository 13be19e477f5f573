"""One item's life inside the engine: create (or collect), wait, settle.

An item holds a slot of the :class:`AdaptiveWindow` from before its create until
the client notices its run ended. Its admission and create are the other half,
:class:`~runflow_async._batch.creates.CreateLife`. The run is then waited for
with the batch's strategy, checked to be the item's own, and its cost settled
with what the API billed.

This is a part of :class:`Engine`, kept in its own module for size; nothing
else calls it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from decimal import Decimal

import anyio

from runflow_async._batch.budget import recalibrated
from runflow_async._batch.creates import STOP_MESSAGES, CreateLife, Creating
from runflow_async._batch.hooks import WorkItem
from runflow_async._batch.limits import Slot
from runflow_async._batch.observe import BatchEvent
from runflow_async._batch.outcomes import Outcome
from runflow_async._core.errors import (
    APIError,
    ClientClosedError,
    CreateOutcomeUnknownError,
    RunAbandonedError,
    RunError,
    RunTimeoutError,
)
from runflow_async._core.models import GenerationResult, Run, RunStatus
from runflow_async._core.requests import RunRequest
from runflow_async._http.create import find_sent_before
from runflow_async._http.runs import check_outcome, complete, growing, poll_run

__all__ = ["STOP_MESSAGES", "ItemLife"]


@functools.cache
def _scope_type() -> type[anyio.CancelScope]:
    """The running backend's cancel scope class: ``anyio.CancelScope()`` looks it up each time."""
    return type(anyio.CancelScope())


logger = logging.getLogger("runflow_async")


class ItemLife(CreateLife):
    """The per-item half of :class:`Engine` (state is the engine's own)."""

    # -- one item ------------------------------------------------------------

    async def _live(self, item: WorkItem, est: Decimal, slot: Slot) -> Outcome:
        """Run one admitted-or-not item to its outcome (the caller holds ``slot``)."""
        outcome = await self._life(item, est, slot)
        self._creating.pop(item.index, None)  # it ended: there is no create left to stop
        return outcome

    async def _life(self, item: WorkItem, est: Decimal, slot: Slot) -> Outcome:
        request = item.request
        if item.run_id is not None:
            return await self._attach(item.index, request, item.run_id, est)
        if item.maybe_created and request.client_ref is not None:
            # An earlier process may have made its run: stopped from now on, it is unknown.
            self._creating[item.index] = Creating(request.client_ref, maybe_created=True)
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

    async def _finish(
        self, index: int, request: RunRequest, est: Decimal, run: Run, *, slot: Slot | None = None
    ) -> Outcome:
        if not self._options.fail_fast:
            # Nothing but fail_fast abandons one wait alone (an abort cancels the
            # whole work group, which no inner scope could catch): no scope.
            return await self._finish_in(index, request, est, run, slot)
        with _scope_type()() as scope:
            self._wait_scopes.add(scope)
            try:
                outcome = await self._finish_in(index, request, est, run, slot)
            finally:
                self._wait_scopes.discard(scope)
        if scope.cancelled_caught:  # fail_fast abandoned it; the run goes on
            return self.abandoned(index, request, est)
        return outcome

    async def _finish_in(
        self, index: int, request: RunRequest, est: Decimal, run: Run, slot: Slot | None
    ) -> Outcome:
        try:
            final = await self._wait(run, request, slot)
            final = await self._own_run(index, request, final, slot)
        except (RunTimeoutError, APIError) as exc:
            # Timed out, or unreadable for good (a 404, a refused key), or its
            # own run not found: this item ends, never its siblings. It may
            # still bill: listed, held.
            run_id = self._unfinished.pop(index, None)
            if run_id is not None:
                self._unsettled[index] = run_id
            self._ledger.hold(est)
            self.emit(BatchEvent("failed", index=index, run_id=run_id, error=exc))
            return Outcome(index, request, error=exc, run_id=run_id, estimated_usd=est)
        del self._unfinished[index]
        return self._settle(index, request, est, final)

    def _by_callback(self, request: RunRequest) -> bool:
        rx = self._callbacks.receiver if self._callbacks is not None else None
        return rx is not None and request.callback_url in (None, rx.url)

    async def _wait(self, run: Run, request: RunRequest, slot: Slot | None) -> Run:
        timeout = self._options.timeout
        if timeout is None:  # no deadline that could fire: no scope to arm
            return await self._wait_in(run, request, slot)
        # As anyio.fail_after(timeout) (the caller's real seconds), without its
        # backend lookups and context-manager layers: asyncio is the only backend.
        deadline = asyncio.get_running_loop().time() + timeout
        with _scope_type()(deadline=deadline) as scope:
            return await self._wait_in(run, request, slot)
        assert scope.cancelled_caught  # noqa: S101 - only its deadline cancels it
        raise RunTimeoutError(
            f"Run {run.id} did not finish within {timeout}s; it may still finish and be billed.",
            run=run,
        )

    async def _wait_in(self, run: Run, request: RunRequest, slot: Slot | None) -> Run:
        final = run if run.is_terminal else await self._notice(run, request, slot)
        if complete(final):
            return final
        # Succeeded and billed, but this answer shows no images: read it again.
        return await poll_run(self._transport, run.id, schedule=growing(self._poll))

    async def _notice(self, run: Run, request: RunRequest, slot: Slot | None) -> Run:
        """The run once the batch's strategy notices it ended."""
        if self._callbacks is not None and self._by_callback(request):
            # Noticed by callback: the slot is free while the cost is looked up.
            on_noticed = slot.release if slot is not None else None
            return await self._callbacks.wait(run.id, on_noticed)
        clock = self._transport.clock
        started = clock.now()
        final = (
            await self._poller.wait(run.id, run.created_at) if self._poller is not None else None
        )
        if final is not None:
            return final
        schedule = self._stats.schedule(self._poll, elapsed=clock.now() - started)
        final = await poll_run(self._transport, run.id, schedule=schedule)
        self._stats.add(final)  # per-run polling learns the durations it times reads by
        return final

    def _settle(self, index: int, request: RunRequest, est: Decimal, final: Run) -> Outcome:
        status = final.status  # parsed once for every check below
        succeeded = status is RunStatus.SUCCEEDED or status is RunStatus.PARTIAL_SUCCEEDED
        if succeeded:
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
        observed = self._options.observer is not None  # events are built only to be seen
        if observed:
            self.emit(
                BatchEvent(
                    "cost_settled",
                    index=index,
                    run_id=final.id,
                    estimated_usd=est,
                    billed_usd=billed,
                )
            )
        if not succeeded:
            try:
                check_outcome(final)  # raises: the run failed or was canceled
            except RunError as exc:
                self.emit(BatchEvent("failed", index=index, run_id=final.id, error=exc))
                if self._options.fail_fast:
                    self.stop("fail_fast", cancel_in_flight=True)
                return Outcome(
                    index, request, error=exc, run_id=final.id, estimated_usd=est, billed_usd=billed
                )
        if observed:
            self.emit(BatchEvent("succeeded", index=index, run_id=final.id))
        result = GenerationResult(final, status is RunStatus.PARTIAL_SUCCEEDED)
        return Outcome(
            index, request, result=result, run_id=final.id, estimated_usd=est, billed_usd=billed
        )

    def abandoned(
        self, index: int, request: RunRequest, est: Decimal, error: BaseException | None = None
    ) -> Outcome:
        """The outcome of an item stopped midway; its run, if any, stays listed and held.

        Without a run, a create that may have made one ends outcome-unknown
        (:meth:`_stopped_create`); only one that provably made nothing ends
        "not submitted".
        """
        creating = self._creating.pop(index, None)
        run_id = self._unfinished.pop(index, None)
        if run_id is None:
            run_id = self._unsettled.get(index)
        else:
            self._ledger.hold(est)  # it goes on (no public cancel) and may bill
            self._unsettled[index] = run_id
        if run_id is None:
            unknown = self._stopped_create(index, request, est, creating, error)
            if unknown is not None:
                return unknown
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

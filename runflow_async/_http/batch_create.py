"""Creating up to 100 runs in one request, never paying for one of them twice.

``POST /v1/models/{model}/batches`` under the rules of single creates
(:mod:`._http.create`), applied to every item:

* One ``Idempotency-Key`` per batch, derived from its items' ``client_ref``
  values (:func:`batch_key`), sent on every attempt and every resend.
* Provably not created (429, 503 ``MODEL_UNAVAILABLE``, refused before
  sending): wait, then send again (:func:`._http.retry.decide`).
* Ambiguous (timeout, dropped connection, another 5xx, a 409 on a repeat):
  every item is looked up by its ``client_ref`` over the visibility window
  (:mod:`._http.visibility`); items found are adopted, and only once the
  window passed without a sighting are the rest sent again: all of them with
  the same key, or (some found, a batch the server split) the rest as a new
  batch with its own key. A lookup that cannot prove absence leaves its items
  :class:`CreateOutcomeUnknownError`, never resent.
* Answered 2xx: the runs are read from the answer, else the items endpoint,
  else looked up by ``client_ref`` (:mod:`._http.batch_answer`); never resent.
* A 422 made nothing: one naming items fails those items only (each its own
  :class:`UnprocessableEntityError`) and the rest are sent again as a new
  batch; one naming none is :class:`BatchRouteRefusedError` for them all.
* Anything else (400/401/402/403/404): every item gets that error.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import anyio

from runflow_async._core.clock import shielded
from runflow_async._core.errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    CreateOutcomeUnknownError,
    UnprocessableEntityError,
)
from runflow_async._core.models import Run
from runflow_async._http.batch_answer import (
    BatchBodyShape,
    BatchSend,
    batch_body,
    batch_path,
    read_runs,
    refused_items,
    route_refused,
)
from runflow_async._http.create import idempotency_key_for
from runflow_async._http.lookup import LookupRefused, find
from runflow_async._http.retry import CallKind, CreateGate, RetryHook, not_created, with_retries
from runflow_async._http.transport import Response, Transport, dump_json
from runflow_async._http.visibility import LookupFailed, search

__all__ = ["BatchResult", "batch_key", "batch_unknown", "create_batch"]

logger = logging.getLogger("runflow_async")

BatchResult = dict[str, Run | APIError]
"""Each item's run, or the error it ended with, by ``client_ref``."""

_LOOKUPS_AT_ONCE = 16  # client_ref lookups in flight per ambiguous batch


def batch_key(client_refs: Sequence[str]) -> str:
    """The ``Idempotency-Key`` of the batch of these items: the same on every attempt and resume."""
    return idempotency_key_for("batch:" + ",".join(client_refs))


class _Unread(Exception):
    """A 2xx answer (or one cut off) whose runs could not all be read: look them up."""


async def create_batch(
    transport: Transport,
    model: str,
    items: Sequence[BatchSend],
    *,
    shape: BatchBodyShape = "openapi",
    gate: CreateGate | None = None,
    on_retry: RetryHook | None = None,
) -> BatchResult:
    """Create ``items`` (1-100) by batch; rules in the module doc.

    Raises:
        BatchRouteRefusedError: A 422 that names no item (nothing was created).
    """
    results: BatchResult = {}
    pending = list(items)
    for _ in range(transport.retry.max_attempts):  # each round settles at least one item
        got = await _one_batch(transport, model, pending, shape, (gate, on_retry))
        results.update(got)
        pending = [i for i in pending if i.client_ref not in results]
        if not pending or not got:
            break
    for item in pending:  # proven absent, but out of rounds: never sent blindly
        results[item.client_ref] = batch_unknown(item.client_ref, model, "too many partial answers")
    return results


async def _one_batch(
    transport: Transport,
    model: str,
    pending: Sequence[BatchSend],
    shape: BatchBodyShape,
    hooks: tuple[CreateGate | None, RetryHook | None],
) -> BatchResult:
    """One batch create (with its retries); the items it settled."""
    gate, on_retry = hooks
    path = batch_path(model)
    refs = [i.client_ref for i in pending]
    key = batch_key(refs)
    payload = dump_json(batch_body(pending, shape))
    lookup = functools.partial(_look_for_all, transport, refs)

    async def attempt() -> BatchResult:
        sent_at = transport.clock.now()
        try:
            with shielded():  # a batch that was sent is read to the end: it is billed
                response = await _send(transport, path, payload, key, pending)
            return await _created(transport, response, pending, sent_at)
        except _Unread:
            found = await lookup(sent_at, transport.clock.now())
            return _settle_unread(found, refs, model)
        except UnprocessableEntityError as exc:
            return _refused(exc, pending, model, shape)

    try:
        result = await with_retries(
            attempt,
            kind=CallKind.CREATE,
            retrying=transport.retrying,
            method="POST",
            path=path,
            reconcile=lookup,
            gate=gate,
            on_retry=on_retry,
            unknown=lambda exc: batch_unknown(refs[0], model, f"it ended in {type(exc).__name__}"),
        )
    except CreateOutcomeUnknownError as exc:
        return {ref: batch_unknown(ref, model, exc.message, key) for ref in refs}
    except APIError as exc:
        if isinstance(exc, UnprocessableEntityError) and not refused_items(exc, len(pending)):
            raise route_refused(exc, model, shape) from exc
        return dict.fromkeys(refs, exc)  # provably not created: every item ends with it
    for ref, run in result.items():
        if isinstance(run, Run):
            transport.owners.own(run.id, ref)
    return result


async def _send(
    transport: Transport, path: str, payload: bytes, key: str, items: Sequence[BatchSend]
) -> Response:
    """Send one attempt; each item's progress learns whether it may have made a run."""
    try:
        response = await transport.send(
            "POST", path, body=payload, headers={"Idempotency-Key": key}
        )
    except APIResponseError as exc:  # a 2xx we cannot read (not JSON, too large): it exists
        for item in items:
            item.progress.maybe_created = True
        raise _Unread from exc
    except APIError as exc:
        if not (not_created(exc) or _refusal(exc)):
            for item in items:
                item.progress.maybe_created = True
        if isinstance(exc, APIConnectionError) and 200 <= (exc.status or 0) < 300:
            raise _Unread from exc  # a 2xx cut off: the batch exists
        raise
    for item in items:
        item.progress.maybe_created = True
    return response


def _refusal(exc: APIError) -> bool:
    """A 4xx other than a 409 (a repeat's conflict): the server made nothing of it."""
    status = exc.status or 0
    return isinstance(exc, APIStatusError) and 400 <= status < 500 and status != 409


async def _created(
    transport: Transport, response: Response, pending: Sequence[BatchSend], sent_at: float
) -> BatchResult:
    """The runs of a 2xx answer; those it does not show are looked up, never resent."""
    batch_id, runs = await read_runs(transport, response.data, pending)
    for ref, run in runs.items():
        transport.visibility.created(run.id, sent_at)
        # The journal's record of the item's batch: the answer's id wins.
        if batch_id is not None and run.batch_id is None:
            runs[ref] = run.model_copy(update={"batch_id": batch_id})
    missing = [i.client_ref for i in pending if i.client_ref not in runs]
    if not missing:
        return dict(runs)
    logger.info(
        "A batch create's answer did not show %d of its runs; looking them up.", len(missing)
    )
    found = await _look_for_all(transport, missing, sent_at, transport.clock.now())
    result: BatchResult = dict(runs)
    result.update(_settle_unread(found, missing, ""))
    return result


def _settle_unread(found: BatchResult | None, refs: Sequence[str], model: str) -> BatchResult:
    """A batch that exists (2xx): items not found end unknown, never sent again."""
    result: BatchResult = dict(found or {})
    for ref in refs:
        if ref not in result:
            result[ref] = batch_unknown(
                ref, model, "the API accepted it but its answer was unreadable"
            )
    return result


def _refused(
    exc: UnprocessableEntityError,
    pending: Sequence[BatchSend],
    model: str,
    shape: BatchBodyShape,
) -> BatchResult:
    """A 422 made nothing: the items it names fail, the others are sent again."""
    named = refused_items(exc, len(pending))
    if not named:
        raise route_refused(exc, model, shape) from exc
    result: BatchResult = {}
    for index, messages in named.items():
        item = pending[index]
        item_error = UnprocessableEntityError(
            f"The API refused batch item {index} ({'; '.join(messages)}); nothing was created.",
            method=exc.method,
            path=exc.path,
            status=exc.status,
            code=exc.code,
            errors=exc.errors,
            request_id=exc.request_id,
        )
        item.progress.maybe_created = False  # a 422 made nothing
        result[item.client_ref] = item_error
    for item in pending:
        if item.client_ref not in result:
            item.progress.maybe_created = False
    return result


async def _look_for_all(
    transport: Transport, refs: Sequence[str], sent_at: float, failed_at: float
) -> BatchResult | None:
    """Look every item up over the window: what was found, or ``None`` if none ever showed.

    Items not found once the window passed are proven absent (left out, to be
    sent again); where absence cannot be established (the lookups are refused,
    the last one failed) they end :class:`CreateOutcomeUnknownError`.
    """
    found: BatchResult = {}
    limiter = anyio.CapacityLimiter(_LOOKUPS_AT_ONCE)
    problems: list[Exception] = []

    async def one(ref: str) -> None:
        try:
            async with limiter:
                run = await find(transport, ref, sent_at)
        except (LookupFailed, LookupRefused) as exc:
            problems.append(exc)
            return
        if run is not None:
            found[ref] = run

    async def every() -> BatchResult | None:
        problems.clear()
        async with anyio.create_task_group() as tg:
            for ref in refs:
                if ref not in found:
                    tg.start_soon(one, ref)
        if problems:  # the first refusal wins: it ends the search at once
            raise next((p for p in problems if isinstance(p, LookupRefused)), problems[0])
        return found if len(found) == len(refs) else None

    try:
        await search(
            every,
            clock=transport.clock,
            visibility=transport.visibility,
            sent_at=sent_at,
            failed_at=failed_at,
            interval=transport.retry.lookup_interval,
        )
    except (LookupFailed, LookupRefused) as exc:
        reason = f"the lookup failed: {exc}" if isinstance(exc, LookupFailed) else str(exc)
        for ref in refs:
            found.setdefault(ref, batch_unknown(ref, "", reason))
        return found
    if found:
        logger.info(
            "Adopted %d of %d run(s) after an ambiguous batch create.", len(found), len(refs)
        )
    return found or None


def batch_unknown(client_ref: str, model: str, reason: str, key: str | None = None) -> APIError:
    """The end of a batch item that may have made a run that could not be found."""
    return CreateOutcomeUnknownError(
        f"A batch create with client_ref {client_ref} may have been billed ({reason}) and "
        "the run was not found; look it up before creating it again",
        client_ref=client_ref,
        idempotency_key=key or idempotency_key_for(client_ref),
        method="POST",
        path=batch_path(model) if model else "",
    )

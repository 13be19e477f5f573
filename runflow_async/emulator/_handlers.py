"""Route handlers of the emulated API; faults and bookkeeping live in the middlewares."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from decimal import Decimal

from aiohttp import web

from runflow_async.emulator._access import presigned_refusal, unauthorized
from runflow_async.emulator._filters import filter_kind, refusal
from runflow_async.emulator._images import PillowMissingError
from runflow_async.emulator._inputs import edit_input_sizes, unresolved_refs
from runflow_async.emulator._listing import parse_list_params, walk
from runflow_async.emulator._middleware import FORCED_FAILURE, LATE_COMMIT, REQUEST_ID
from runflow_async.emulator._query import QuerySyntaxError, named_values
from runflow_async.emulator._responses import error_response, json_body, json_response
from runflow_async.emulator._runs import RunRecord
from runflow_async.emulator._state import STATE, EmulatorState, fingerprint
from runflow_async.emulator._store import RunStore
from runflow_async.emulator._validation import field_error, validate_create

__all__ = [
    "admission",
    "base_url",
    "counters",
    "create_run",
    "credit",
    "get_file",
    "get_run",
    "health",
    "list_runs",
    "report",
]

_IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def base_url(request: web.Request) -> str:
    """Return the scheme and host the client reached us by, e.g. ``http://127.0.0.1:8787``."""
    return f"{request.scheme}://{request.host}"


def admission(state: EmulatorState, now: float) -> web.Response | None:
    """Refuse a valid create for lack of credit (402) or by rate limit (429), or admit it."""
    store = state.store
    in_flight = store.in_flight(now)  # settles, so the billed total is current
    credit = state.credit_usd
    if credit is not None and store.billed_usd >= credit:
        message = f"Billed ${store.billed_usd} of ${credit} credit; top up to run more."
        return error_response(402, "INSUFFICIENT_CREDIT", message)
    refusal = state.limiter.refusal(in_flight, now)
    if refusal is None:
        return None
    state.tally.rate_limited += 1
    return error_response(429, "RATE_LIMITED", refusal, headers=state.limiter.headers)


async def create_run(request: web.Request) -> web.Response:
    """``POST /v1/models/{model_id}/runs``: validate, admit and store a run (201)."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    model = request.match_info["model_id"]
    if model not in state.model_ids:
        return error_response(404, "MODEL_NOT_FOUND", f"Model {model!r} does not exist.")
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error_response(400, "BAD_REQUEST", "The request body is not valid JSON.")
    store = state.store
    store.settle(state.clock.now())  # late commits now due are stored before any key check
    mode = state.config.key_mode
    key = request.headers.get("Idempotency-Key") if mode != "ignored" else None
    digest = fingerprint(model, body) if key else b""
    if key and (replay := await _replay(request, key, digest, at_receipt=mode == "at_receipt")):
        return replay
    valid, errors = validate_create(body, model, state.input_rules)
    if valid is not None:
        errors = unresolved_refs(valid, state.assets)
    if valid is None or errors:
        count = len(errors)
        message = f"The request has {count} invalid field{'s' if count > 1 else ''}."
        return error_response(422, "VALIDATION_ERROR", message, errors)
    if (refused := admission(state, state.clock.now())) is not None:
        return refused
    delay, hold = LATE_COMMIT.get()
    run = state.create_run(
        valid,
        REQUEST_ID.get(),
        forced_failure=FORCED_FAILURE.get(),
        inputs=edit_input_sizes(
            valid,
            request.host,
            store.by_id.get,
            state.assets.image_size,
            state.config.data_uri_max_bytes,
        ),
        idempotency=(key, digest) if key else None,
        base=base_url(request),
        commit_after=delay,
    )
    if delay > 0:
        if not hold:  # the fault layer drops the connection
            return web.Response(status=202)
        await _stored(state, run)
    return json_response(state.render(run, base_url(request), run.created), 201)


async def _replay(
    request: web.Request, key: str, digest: bytes, *, at_receipt: bool
) -> web.Response | None:
    """The answer to a repeated ``Idempotency-Key`` (a replay or a 409), or ``None``.

    With ``at_receipt``, a repeat of a create received but not yet stored waits
    until it is, then replays it; otherwise only stored runs count.
    """
    state = request.app[STATE]
    store = state.store
    seen = store.idempotency.get(key)
    if seen is None and at_receipt and key in store.pending_keys:
        seen = store.pending_keys[key]
        if seen[0] == digest:
            await _stored(state, seen[1])
    if seen is None:
        return None
    digest_seen, run = seen
    if digest_seen != digest:
        message = "This Idempotency-Key was used with a different request body."
        return error_response(409, "CONFLICT", message)
    state.tally.idempotent_replays += 1
    replay = state.render(run, base_url(request), run.created)
    return json_response(replay, 201, {"Idempotent-Replayed": "true"})


async def _stored(state: EmulatorState, run: RunRecord) -> None:
    """Return once a late-committed ``run`` is stored (at its commit time)."""
    while not RunStore.committed(run):
        wait = state.clock.real_seconds(run.created - state.clock.now())
        await asyncio.sleep(min(max(wait, 0.001), 0.01))  # soon again: the clock may jump
        state.store.settle(state.clock.now())


async def get_run(request: web.Request) -> web.Response:
    """``GET /v1/runs/{run_id}``: the run as of now, with freshly signed URLs."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    now = state.clock.now()
    store = state.store
    store.settle(now)  # evicts what has to go before answering
    run_id = request.match_info["run_id"]
    run = store.by_id.get(run_id)
    if run is None:
        return error_response(404, "RUN_NOT_FOUND", f"Run {run_id!r} does not exist.")
    store.ledger.read(run.seq)
    if now >= run.end:
        store.ledger.notice(run.seq, now)
    return json_response(state.render(run, base_url(request), now))


async def list_runs(request: web.Request) -> web.Response:
    """``GET /v1/runs``: a page of runs, filtered, sorted and projected.

    The filters a server accepts are ``EmulatorConfig.list_filters`` (see ``_filters``).
    """
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    try:
        params, errors = parse_list_params(request.query)
    except QuerySyntaxError as exc:
        return error_response(400, "INVALID_QUERY", f"Invalid q: {exc}.")
    if params is None:
        return error_response(422, "VALIDATION_ERROR", "Invalid list parameters.", errors)
    config, tally = state.config, state.tally
    tally.list_by_filter[filter_kind(params.query)] += 1
    if config.list_ignores_filter:
        params = dataclasses.replace(params, query=None)
    if (refused := refusal(config.list_filters, params.query)) is not None:
        tally.list_refused += 1
        return refused
    now = state.clock.now()
    store = state.store
    store.settle(now)
    ledger = store.ledger
    # A run named by an ``id:`` term is read whether or not it comes back; once per request.
    for run_id in () if params.query is None else named_values(params.query, "id"):
        if (named := store.by_id.get(run_id)) is not None:
            ledger.read(named.seq)
    url_for = state.url_for(base_url(request), now)
    page = walk(store, params, now, url_for, lag=config.list_lag)
    items = [run.to_api(now, url_for, params.fields) for run in page.runs]
    if params.fields is None or "status_code" in params.fields:
        for run in page.runs:
            if now >= run.end:
                ledger.notice(run.seq, now)
    tally.list_pages += 1
    tally.list_pages_continued += params.cursor is not None
    tally.listed_runs += len(items)
    tally.listed_background += sum(run.background for run in page.runs)
    return json_response({"items": items, "next_pq": page.next_pq, "prev_pq": page.prev_pq})


async def health(request: web.Request) -> web.Response:
    """``GET /v1/health``: always healthy, no auth (both documented body shapes at once)."""
    return json_response({"ok": True, "status": "ok"})


async def counters(request: web.Request) -> web.Response:
    """``GET /_emulator/counters``: the counters snapshot as JSON, no auth."""
    return json_response(request.app[STATE].counters().to_json())


async def report(request: web.Request) -> web.Response:
    """``GET /_emulator/report[?since=N][&limit=M]``: the per-run timing report, no auth."""
    values: dict[str, int] = {}
    errors = []
    for name in ("since", "limit"):
        text = request.query.get(name)
        if text is None:
            continue
        if text.isascii() and text.isdigit():
            values[name] = int(text)
        else:
            errors.append(field_error(name, "must be a non-negative integer", "invalid_type"))
    if errors:
        return error_response(422, "VALIDATION_ERROR", "Invalid report parameters.", errors)
    return json_response(request.app[STATE].report(**values))


async def credit(request: web.Request) -> web.Response:
    """``POST /_emulator/credit`` with ``{"credit_usd": "12.5"}`` (or ``null``): top up, no auth.

    Answers the credit now and what has been billed so far.
    """
    state = request.app[STATE]
    body, refused = await json_body(request)
    if refused is not None:
        return refused
    value = body.get("credit_usd", "") if isinstance(body, dict) else ""
    try:
        state.set_credit(None if value is None else Decimal(str(value)))
    except (ArithmeticError, ValueError):
        error = field_error("credit_usd", "must be an amount of money, or null", "invalid_type")
        return error_response(422, "VALIDATION_ERROR", "Invalid credit.", [error])
    amount = state.credit_usd
    billed = state.store.billed_usd
    return json_response(
        {"credit_usd": None if amount is None else str(amount), "billed_usd": str(billed)}
    )


async def get_file(request: web.Request) -> web.Response:
    """``GET /files/{run_id}/{index}.{ext}``: a presigned output image, no auth header."""
    state = request.app[STATE]
    if (refused := presigned_refusal(request, state)) is not None:
        return refused
    now = state.clock.now()
    run = state.store.by_id.get(request.match_info["run_id"])
    index, _, extension = request.match_info["filename"].partition(".")
    if (
        run is None
        or run.status(now) != "succeeded"
        or not index.isdigit()
        or int(index) >= run.request.num_images
        or extension != run.extension
    ):
        return error_response(404, "FILE_NOT_FOUND", "No such output file.")
    output_format = run.request.output_format
    try:
        data = await state.images.render(run.id, int(index), output_format, run.size)
    except PillowMissingError as exc:
        return error_response(500, "PILLOW_MISSING", str(exc))
    return web.Response(body=data, content_type=_IMAGE_TYPES[output_format])

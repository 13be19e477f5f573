"""Route handlers of batches: create, detail, items (paginated), one item, callback history.

``POST /v1/models/{model_id}/batches`` makes one child run per item, each an
ordinary run (read, listed, filtered, billed and faulted like any other) that
carries its item's ``client_ref`` and the ``batch_id``; children never send a
callback of their own, the batch sends one when its last child ends (if it has a
``callback_url``). The create is handled like a run create: auth, the model,
``batch_models`` (422 ``BATCH_NOT_SUPPORTED``), JSON, an ``Idempotency-Key``
replay (or 409), validation of every item (422, nothing created), credit (402)
and rate limits (429: a batch spends one create token, and is refused while
``max_in_flight_runs`` runs are in flight), then the runs; the create faults
(lost answers, late commits, ``fail_run`` for every child, wrong ids) apply to it.

``GET /v1/batches/{batch_id}/items`` pages by ``sequence_index`` with the run
list's conventions: ``limit`` (default and maximum 100: one page holds a whole
batch), the opaque cursor ``pq`` (``cursor`` is taken too) from the previous
page's ``next_pq`` (also sent as ``next_cursor``), ``prev_pq`` to walk back.
"""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from runflow_async.emulator._access import unauthorized
from runflow_async.emulator._batch_input import BatchRequest, batch_capable, parse_batch
from runflow_async.emulator._batches import BatchRecord, render_items
from runflow_async.emulator._handlers import admission, base_url
from runflow_async.emulator._inputs import edit_input_sizes
from runflow_async.emulator._listing import Cursor
from runflow_async.emulator._middleware import FORCED_FAILURE, LATE_COMMIT, REQUEST_ID
from runflow_async.emulator._responses import error_response, invalid, json_body, json_response
from runflow_async.emulator._secrets import seeded_uuid
from runflow_async.emulator._state import STATE, EmulatorState, fingerprint
from runflow_async.emulator._validation import field_error

__all__ = [
    "ITEMS_LIMIT",
    "batch_callback_history",
    "create_batch",
    "get_batch",
    "get_batch_item",
    "list_batch_items",
]

ITEMS_LIMIT = 100
"""Default and largest ``limit`` of the items endpoint."""


def _answer(state: EmulatorState, batch: BatchRecord) -> dict[str, object]:
    """The body of a create's 201: the batch object, or the guide's lean one."""
    now = state.clock.now()
    return batch.to_guide(now) if state.config.batch_body == "guide" else batch.to_api(now)


async def _committed(state: EmulatorState, batch: BatchRecord) -> None:
    """Return once a late-committed ``batch`` is stored (at its runs' commit time)."""
    while True:
        state.store.settle(state.clock.now())
        state.batches.settle()
        if batch.committed:
            return
        wait = state.clock.real_seconds(batch.runs[-1].created - state.clock.now())
        await asyncio.sleep(min(max(wait, 0.001), 0.01))  # soon again: the clock may jump


async def _replay(
    state: EmulatorState, key: str, digest: bytes, *, at_receipt: bool
) -> web.Response | None:
    """The answer to a repeated ``Idempotency-Key`` (a replay or a 409), or ``None``."""
    batches = state.batches
    seen = batches.idempotency.get(key)
    if seen is None and at_receipt and key in batches.pending_keys:
        seen = batches.pending_keys[key]
        if seen.fingerprint == digest:
            await _committed(state, seen)
    if seen is None:
        return None
    if seen.fingerprint != digest:
        message = "This Idempotency-Key was used with a different request body."
        return error_response(409, "CONFLICT", message)
    state.tally.idempotent_replays += 1
    state.tally.batch_replays += 1
    return json_response(_answer(state, seen), 201, {"Idempotent-Replayed": "true"})


def _make(
    state: EmulatorState,
    request: web.Request,
    parsed: BatchRequest,
    idempotency: tuple[str | None, bytes],
    delay: float,
) -> BatchRecord:
    """Create the batch's runs (stored now, or ``delay`` emulated seconds from now)."""
    rng = state.batch_rng
    batch_id = seeded_uuid(rng)
    item_ids = [seeded_uuid(rng) for _ in parsed.items]
    request_id, base, forced = REQUEST_ID.get(), base_url(request), FORCED_FAILURE.get()
    find, image_size = state.store.by_id.get, state.assets.image_size
    limit = state.config.data_uri_max_bytes
    runs = []
    refs = state.config.batch_child_refs
    for item in parsed.items:
        sizes = edit_input_sizes(item, request.host, find, image_size, limit)
        child = item if refs else dataclasses.replace(item, client_ref=None)
        run = state.create_run(
            child, request_id, forced_failure=forced, inputs=sizes, base=base, commit_after=delay
        )
        run.batch_id = batch_id
        runs.append(run)
    key, digest = idempotency
    batch = BatchRecord(
        id=batch_id,
        model=parsed.items[0].model,
        org_id=runs[0].org_id,
        runs=runs,
        item_ids=item_ids,
        metadata=parsed.metadata,
        callback_url=parsed.callback_url,
        created=runs[0].created,
        request_id=request_id,
        idempotency_key=key,
        fingerprint=digest,
        item_refs=None if refs else [item.client_ref for item in parsed.items],
    )
    state.batches.add(batch)
    if batch.callback_url is not None:
        state.callbacks.schedule_batch(batch)
    return batch


def _not_supported(model: str) -> web.Response:
    message = (
        f"Model {model!r} does not support batches: only binding-capable (template-backed) "
        f"models do. Create its runs one at a time with POST /v1/models/{model}/runs."
    )
    return error_response(422, "BATCH_NOT_SUPPORTED", message)


async def create_batch(request: web.Request) -> web.Response:
    """``POST /v1/models/{model_id}/batches``: validate every item, admit, create (201)."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    model = request.match_info["model_id"]
    if model not in state.model_ids:
        return error_response(404, "MODEL_NOT_FOUND", f"Model {model!r} does not exist.")
    config = state.config
    if not batch_capable(config.batch_models, model):
        return _not_supported(model)
    body, bad = await json_body(request)
    if bad is not None:
        return bad
    state.store.settle(state.clock.now())  # late commits now due are stored before any key check
    state.batches.settle()
    mode = config.key_mode
    key = request.headers.get("Idempotency-Key") if mode != "ignored" else None
    digest = fingerprint(f"{model}/batches", body) if key else b""
    if key and (replay := await _replay(state, key, digest, at_receipt=mode == "at_receipt")):
        return replay
    parsed, errors = parse_batch(body, model, config.batch_body, state.input_rules, state.assets)
    if parsed is None:
        return invalid(errors)
    if (refused := admission(state, state.clock.now())) is not None:
        return refused
    delay, hold = LATE_COMMIT.get()
    batch = _make(state, request, parsed, (key, digest), delay)
    if delay > 0:
        if not hold:  # the fault layer drops the connection
            return web.Response(status=202)
        await _committed(state, batch)
    return json_response(_answer(state, batch), 201)


def _find(request: web.Request, state: EmulatorState) -> BatchRecord | web.Response:
    if (denied := unauthorized(request, state)) is not None:
        return denied
    state.store.settle(state.clock.now())
    state.batches.settle()
    batch_id = request.match_info["batch_id"]
    batch = state.batches.by_id.get(batch_id)
    if batch is None:
        return error_response(404, "BATCH_NOT_FOUND", f"Batch {batch_id!r} does not exist.")
    return batch


def _notice(state: EmulatorState, batch: BatchRecord, indexes: range, now: float) -> None:
    """Note the runs an answer shows terminal (see ``Emulator.report``)."""
    ledger = state.store.ledger
    for index in indexes:
        run = batch.runs[index]
        if now >= run.end:
            ledger.notice(run.seq, now)


async def get_batch(request: web.Request) -> web.Response:
    """``GET /v1/batches/{batch_id}``: the batch with live counters and lean ``items[]``."""
    state = request.app[STATE]
    batch = _find(request, state)
    if isinstance(batch, web.Response):
        return batch
    now = state.clock.now()
    _notice(state, batch, range(len(batch.runs)), now)
    return json_response(batch.to_api(now))


def _page(request: web.Request, total: int) -> range | web.Response:
    """The indexes of the page ``limit`` and ``pq`` (or ``cursor``) ask for, or a 422."""
    query = request.query
    errors = []
    text = query.get("limit", str(ITEMS_LIMIT)).strip()
    limit = int(text) if text.isascii() and text.isdigit() else -1
    if not 1 <= limit <= ITEMS_LIMIT:
        errors.append(
            field_error("limit", f"must be an integer in 1..{ITEMS_LIMIT}", "out_of_range")
        )
    token = query.get("pq") or query.get("cursor")
    cursor = None if token is None else Cursor.decode(token)
    if token is not None and cursor is None:
        errors.append(field_error("pq", "is not a valid cursor", "invalid_cursor"))
    if errors:
        return invalid(errors)
    if cursor is None:
        return range(min(limit, total))
    if cursor.forward:
        return range(cursor.seq + 1, min(cursor.seq + 1 + limit, total))
    return range(max(0, cursor.seq - limit), min(cursor.seq, total))


async def list_batch_items(request: web.Request) -> web.Response:
    """``GET /v1/batches/{batch_id}/items``: a page of items with their full runs."""
    state = request.app[STATE]
    batch = _find(request, state)
    if isinstance(batch, web.Response):
        return batch
    total = len(batch.runs)
    indexes = _page(request, total)
    if isinstance(indexes, web.Response):
        return indexes
    now = state.clock.now()
    items = render_items(batch, indexes, now, state.url_for(base_url(request), now))
    _notice(state, batch, indexes, now)
    more = bool(indexes) and indexes[-1] < total - 1
    next_pq = Cursor(indexes[-1], True).encode() if more else None
    prev_pq = Cursor(indexes[0], False).encode() if indexes and indexes[0] > 0 else None
    return json_response(
        {"items": items, "next_pq": next_pq, "prev_pq": prev_pq, "next_cursor": next_pq}
    )


async def get_batch_item(request: web.Request) -> web.Response:
    """``GET /v1/batches/{batch_id}/items/{item_id}``: one item with its full run."""
    state = request.app[STATE]
    batch = _find(request, state)
    if isinstance(batch, web.Response):
        return batch
    item_id = request.match_info["item_id"]
    found = state.batches.items.get(item_id)
    if found is None or found[0] is not batch:
        return error_response(404, "ITEM_NOT_FOUND", f"Item {item_id!r} does not exist.")
    index = found[1]
    now = state.clock.now()
    (item,) = render_items(
        batch, range(index, index + 1), now, state.url_for(base_url(request), now)
    )
    _notice(state, batch, range(index, index + 1), now)
    return json_response(item)


async def batch_callback_history(request: web.Request) -> web.Response:
    """``GET /v1/batches/{batch_id}/callback``: the batch's deliveries, oldest first."""
    state = request.app[STATE]
    batch = _find(request, state)
    if isinstance(batch, web.Response):
        return batch
    return json_response(state.batches.deliveries(batch))

"""Middlewares: request ids and counting (outer), the credential-leak check, fault injection.

Per-request facts reach the handlers through context variables, because aiohttp runs
every request in its own task (and string request keys warn in recent aiohttp).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from aiohttp import web

from runflow_async.emulator._config import FAULTABLE_ROUTES
from runflow_async.emulator._faults import Fault
from runflow_async.emulator._responses import error_response, html_error, html_page, json_response
from runflow_async.emulator._state import STATE

__all__ = [
    "FORCED_FAILURE",
    "LATE_COMMIT",
    "PRESIGNED_ROUTES",
    "REQUEST_ID",
    "inject_faults",
    "observe",
    "refuse_credentials",
    "route_name",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID: ContextVar[str] = ContextVar("runflow_emulator_request_id", default="")
"""``X-Request-Id`` of the request being handled."""

FORCED_FAILURE: ContextVar[tuple[str, str] | None] = ContextVar(
    "runflow_emulator_forced_failure", default=None
)
"""``(code, message)`` a ``fail_run`` fault imposes on the run being created."""

LATE_COMMIT: ContextVar[tuple[float, bool]] = ContextVar(
    "runflow_emulator_late_commit", default=(0.0, False)
)
"""``(seconds, answer)`` of a ``late_commit`` fault on the create being handled."""

PRESIGNED_ROUTES: frozenset[str] = frozenset({"file", "upload_put", "asset_file"})
"""Routes whose URLs carry their own credentials in the query string."""

_BODY_HEADERS = frozenset({"content-type", "content-length"})
_NO_RESPONSE = 444  # nginx's "closed without response"; never reaches the client


_MALFORMED = b"HTTP/1.1 2OO OK\r\nContent-Type: application/json\r\n\r\n{}"
"""What ``Fault.malformed`` writes: a status code that is not a number."""


class _Dropped(Exception):
    """Raised by the fault layer to make ``observe`` close the connection."""


def route_name(request: web.Request) -> str:
    """Return the name of the route ``request`` matched, or ``"other"``."""
    return request.match_info.route.name or "other"


def _fault_response(fault: Fault) -> web.Response:
    status = fault.http_status or 502
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    if fault.html:
        return html_error(status, headers)
    return error_response(status, fault.code, headers=headers)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request, tag the response with ``X-Request-Id`` and count its status.

    Also turns aiohttp's own errors (unknown path, wrong method, body too large) into
    the JSON envelope, and performs connection drops.
    """
    state = request.app[STATE]
    state.tally.request(route_name(request))
    request_id = state.next_request_id()
    token = REQUEST_ID.set(request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        allow = exc.headers.get("Allow")
        response = error_response(
            exc.status, message=exc.reason, headers={"Allow": allow} if allow else None
        )
    except _Dropped:
        transport = request.transport
        # None only when the client has already gone: there is nothing left to close.
        if transport is not None:  # pragma: no branch
            transport.close()
        # aiohttp fails to write this to the closed transport and treats that as a
        # premature client disconnection: no error is logged, nothing is sent.
        return web.Response(status=_NO_RESPONSE)
    finally:
        REQUEST_ID.reset(token)
    response.headers["X-Request-Id"] = request_id
    state.tally.response(response.status)
    return response


@web.middleware
async def refuse_credentials(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (400) and count any request to a presigned URL that carries ``Authorization``.

    A storage host has no use for the API key, and a client that sends it there leaks
    it (docs: guides/upload-large-files, "no Authorization header"). Checked before
    faults, so no injected fault can hide a leak.
    """
    if route_name(request) in PRESIGNED_ROUTES and "Authorization" in request.headers:
        request.app[STATE].tally.credentials_on_presigned += 1
        message = "Presigned URLs carry their own credentials; do not send the API key."
        return error_response(400, "CREDENTIALS_NOT_ALLOWED", message)
    return await handler(request)


async def _oversized(request: web.Request, fault: Fault) -> web.StreamResponse:
    """A 200 whose JSON body is ``fault.size_bytes`` long (chunked when ``fault.html``)."""
    pad = max(0, fault.size_bytes - len('{"pad":""}'))
    if not fault.html:
        return web.Response(body=b'{"pad":"' + b"x" * pad + b'"}', content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b'{"pad":"')
    for start in range(0, pad, 64 * 1024):
        await response.write(b"x" * min(64 * 1024, pad - start))
    await response.write(b'"}')
    await response.write_eof()
    return response


def _not_image(fault: Fault) -> web.Response:
    """A 200 whose body is a page (JSON, or HTML when ``fault.html``), labelled as an image."""
    page = html_page(200) if fault.html else error_response(500, "STORAGE_ERROR")
    assert isinstance(page.body, bytes)  # noqa: S101 - built from bytes above
    return web.Response(body=page.body, headers={"Content-Type": fault.content_type or ""})


async def _padded(
    request: web.Request, response: web.StreamResponse, fault: Fault
) -> web.StreamResponse:
    """``response`` (an image) padded with zeros to ``fault.size_bytes`` (chunked: streamed)."""
    if not (isinstance(response, web.Response) and isinstance(response.body, bytes)):
        return response  # pragma: no cover - file routes answer whole bodies
    if response.status != 200:
        return response  # an error stays itself
    body, kind = response.body, response.content_type
    pad = max(0, fault.size_bytes - len(body))
    if not fault.html:
        return web.Response(body=body + bytes(pad), content_type=kind)
    streamed = web.StreamResponse(headers={"Content-Type": kind})
    streamed.enable_chunked_encoding()
    await streamed.prepare(request)
    await streamed.write(body)
    for start in range(0, pad, 64 * 1024):
        await streamed.write(bytes(min(64 * 1024, pad - start)))
    await streamed.write_eof()
    return streamed


def _without_outputs(response: web.StreamResponse) -> web.StreamResponse:
    """``response`` with ``output`` null on every succeeded run it shows."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return response
    assert isinstance(response.body, bytes)  # noqa: S101 - json_response bodies are bytes
    data = json.loads(response.body)
    runs = data.get("items") if isinstance(data.get("items"), list) else [data]
    for run in runs:
        if isinstance(run, dict) and run.get("status_code") == "succeeded" and "output" in run:
            run["output"] = None
    keep = {k: v for k, v in response.headers.items() if k.lower() not in _BODY_HEADERS}
    return json_response(data, status=response.status, headers=keep)


def _with_run_id(response: web.StreamResponse, run_id: str | int | None) -> web.StreamResponse:
    """A 201 create ``response`` whose ``id`` says ``run_id`` (``None``: no ``id``)."""
    if not isinstance(response, web.Response) or response.status != 201:
        return response
    assert isinstance(response.body, bytes)  # noqa: S101 - json_response bodies are bytes
    data = json.loads(response.body)
    data.pop("id", None)
    if run_id is not None:
        data["id"] = run_id
    keep = {k: v for k, v in response.headers.items() if k.lower() not in _BODY_HEADERS}
    return json_response(data, status=response.status, headers=keep)


async def _on_create(request: web.Request, handler: Handler, fault: Fault) -> web.StreamResponse:
    """The create-only faults that wrap the handler: late commits and wrong ids."""
    if fault.kind == "late_commit":
        token = LATE_COMMIT.set((fault.seconds, fault.http_status is not None))
        try:
            response = await handler(request)
        finally:
            LATE_COMMIT.reset(token)
        if fault.http_status is None:
            raise _Dropped
        return response
    if fault.kind == "bad_run_id":
        return _with_run_id(await handler(request), fault.value)
    state = request.app[STATE]
    batch = route_name(request) == "batch_create"
    previous = state.batches.last_id if batch else state.last_run_id
    response = await handler(request)
    return response if previous is None else _with_run_id(response, previous)


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the scripted fault or the seeded random one, if any, to this request."""
    route = route_name(request)
    if route not in FAULTABLE_ROUTES:
        return await handler(request)
    state = request.app[STATE]
    scripted = state.script.take(route)
    rolled = state.dice.roll(route)
    fault = scripted or rolled
    if fault is None:
        return await handler(request)
    state.tally.fault(fault.counter_key)
    if fault.kind == "status":
        return _fault_response(fault)
    if fault.kind == "drop":
        raise _Dropped
    if fault.kind == "slow":
        await asyncio.sleep(state.clock.real_seconds(fault.seconds))
        return await handler(request)
    if fault.kind == "html_ok":
        return html_page(200)
    if fault.kind == "oversized":
        return await _oversized(request, fault)
    if fault.kind == "null_output":
        return _without_outputs(await handler(request))
    if fault.kind == "not_image":
        return _not_image(fault)
    if fault.kind == "oversized_image":
        return await _padded(request, await handler(request), fault)
    if fault.kind in ("late_commit", "bad_run_id", "reused_run_id"):
        return await _on_create(request, handler, fault)
    if fault.kind == "malformed":
        await handler(request)
        if request.transport is not None:  # pragma: no branch - gone: nothing to garble
            request.transport.write(_MALFORMED)
        raise _Dropped
    if fault.kind == "lost_response":
        await handler(request)
        if fault.http_status is None:
            raise _Dropped
        return _fault_response(fault)
    token = FORCED_FAILURE.set((fault.code or "PROVIDER_ERROR", fault.message or ""))
    try:
        return await handler(request)
    finally:
        FORCED_FAILURE.reset(token)

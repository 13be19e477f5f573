"""Route handlers of callbacks: signing secrets, delivery history, redelivery.

``POST /v1/callback-secrets`` (api-reference/webhooks/create-callback-signing-secret),
``GET /v1/runs/{run_id}/callback`` (.../runs/get-callback-delivery-history) and
``POST /v1/runs/{run_id}/callback-redeliveries`` (.../runs/redeliver-callback) are
documented; ``GET /v1/callback-secrets`` and ``DELETE /v1/callback-secrets/{id}``
are inferred from the rotation guide, which lists and deletes secrets.
"""

from __future__ import annotations

from aiohttp import web

from runflow_async.emulator._access import unauthorized
from runflow_async.emulator._handlers import base_url
from runflow_async.emulator._responses import error_response, invalid, json_body, json_response
from runflow_async.emulator._runs import RunRecord
from runflow_async.emulator._secrets import MAX_LABEL
from runflow_async.emulator._state import STATE, EmulatorState
from runflow_async.emulator._validation import field_error

__all__ = [
    "callback_history",
    "create_secret",
    "disable_secret",
    "list_secrets",
    "redeliver",
]


def _label_errors(body: object) -> list[dict[str, str]]:
    if not isinstance(body, dict):
        return [field_error("body", "must be a JSON object", "invalid_type")]
    label = body.get("label")
    if label is None:
        return [field_error("label", "is required", "required")]
    if not isinstance(label, str):
        return [field_error("label", "must be a string", "invalid_type")]
    if len(label) > MAX_LABEL:
        return [field_error("label", "must be at most 255 characters", "too_long")]
    return []


async def create_secret(request: web.Request) -> web.Response:
    """``POST /v1/callback-secrets``: a new current secret, its ``plain_secret`` shown once."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    body, bad = await json_body(request)
    if bad is not None:
        return bad
    if errors := _label_errors(body):
        return invalid(errors)
    record = state.secrets.create(body["label"], state.clock.now())
    return json_response({**state.secrets.render(record), "plain_secret": record.plain}, 201)


async def list_secrets(request: web.Request) -> web.Response:
    """``GET /v1/callback-secrets``: every secret, oldest first, without the plain secrets."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    return json_response({"items": state.secrets.listing()})


async def disable_secret(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/callback-secrets/{secret_id}``: stop signing with it (204, idempotent)."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    secret_id = request.match_info["secret_id"]
    if not state.secrets.disable(secret_id, state.clock.now()):
        return error_response(404, "SECRET_NOT_FOUND", f"Secret {secret_id!r} does not exist.")
    return web.Response(status=204)


def _find_run(request: web.Request, state: EmulatorState) -> RunRecord | web.Response:
    if (denied := unauthorized(request, state)) is not None:
        return denied
    state.store.settle(state.clock.now())  # evicts what has to go before answering
    run_id = request.match_info["run_id"]
    run = state.store.by_id.get(run_id)
    if run is None:
        return error_response(404, "RUN_NOT_FOUND", f"Run {run_id!r} does not exist.")
    return run


async def callback_history(request: web.Request) -> web.Response:
    """``GET /v1/runs/{run_id}/callback``: the run's deliveries, oldest first."""
    state = request.app[STATE]
    run = _find_run(request, state)
    if isinstance(run, web.Response):
        return run
    return json_response([delivery.to_api() for delivery in run.deliveries or ()])


async def redeliver(request: web.Request) -> web.Response:
    """``POST /v1/runs/{run_id}/callback-redeliveries``: a fresh payload, sent now (202)."""
    state = request.app[STATE]
    run = _find_run(request, state)
    if isinstance(run, web.Response):
        return run
    url = run.request.callback_url
    if url is None:
        return error_response(409, "NO_CALLBACK_URL", f"Run {run.id!r} has no callback_url.")
    if state.clock.now() < run.end:
        message = f"Run {run.id!r} has not reached a terminal state yet."
        return error_response(409, "RUN_NOT_TERMINAL", message)
    delivery = state.callbacks.redeliver(run, url, base_url(request))
    return json_response(delivery.to_api(), 202)

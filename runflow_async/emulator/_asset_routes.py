"""Route handlers of the asset upload flow: session, presigned PUT, confirmation, reads.

``POST /v1/asset-uploads`` -> ``PUT upload_url`` -> ``POST
/v1/asset-uploads/{id}/confirmations`` -> the asset, whose ``url`` serves the bytes.
The API routes want the bearer token; the presigned ones want ``exp`` and ``sig``
and refuse the token (see the ``refuse_credentials`` middleware).
"""

from __future__ import annotations

from aiohttp import web

from runflow_async.emulator._access import presigned_problem, presigned_refusal, unauthorized
from runflow_async.emulator._assets import TYPES_HINT, asset_types, is_uuid, validate_upload_session
from runflow_async.emulator._handlers import base_url
from runflow_async.emulator._responses import error_response, invalid, json_body, json_response
from runflow_async.emulator._state import STATE
from runflow_async.emulator._storage import storage_error
from runflow_async.emulator._validation import field_error

__all__ = [
    "confirm_upload",
    "create_upload",
    "get_asset",
    "get_asset_file",
    "get_asset_types",
    "put_upload",
]

_SIGNATURE = "The request signature we calculated does not match the signature you provided."


async def _read_at_most(request: web.Request, limit: int) -> bytes | None:
    """Return the whole body, or ``None`` as soon as it proves longer than ``limit``.

    Reads the stream itself: ``request.read()`` stops at aiohttp's 1 MiB
    ``client_max_size``, and uploads go up to 50 MiB.
    """
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def create_upload(request: web.Request) -> web.Response:
    """``POST /v1/asset-uploads``: open an upload session (201 ``{asset_id, upload_url}``)."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    body, bad = await json_body(request)
    if bad is not None:
        return bad
    session, errors = validate_upload_session(body)
    if session is None:
        if any(error["field"] == "mime_type" for error in errors):
            count = len(errors)
            message = f"The request has {count} invalid field{'s' if count > 1 else ''}; "
            return error_response(422, "VALIDATION_ERROR", message + TYPES_HINT + ".", errors)
        return invalid(errors)
    now = state.clock.now()
    record = state.assets.open(session, now)
    upload_url = state.url_for(base_url(request), now)(record.upload_path)
    return json_response({"asset_id": record.id, "upload_url": upload_url}, 201)


async def put_upload(request: web.Request) -> web.Response:
    """``PUT /uploads/{asset_id}?exp&sig``: store the bytes of a session (200, empty).

    Refusals are storage's, in S3-style XML (see ``_storage``), not the API's JSON.
    """
    state = request.app[STATE]
    problem = presigned_problem(request, state)
    if problem == "signature":
        return storage_error(403, "SignatureDoesNotMatch", _SIGNATURE)
    if problem == "expired":
        return storage_error(403, "AccessDenied", "Request has expired")
    record = state.assets.by_id.get(request.match_info["asset_id"])
    if record is None:
        return storage_error(404, "NoSuchUpload", "The specified upload does not exist.")
    if record.confirmed is not None:
        message = "This upload is already an asset; open a new upload session."
        return storage_error(409, "OperationAborted", message)
    declared = record.session
    if request.content_type != declared.mime_type:
        message = f"{_SIGNATURE} Content-Type must be the declared {declared.mime_type}."
        return storage_error(403, "SignatureDoesNotMatch", message)
    data = await _read_at_most(request, declared.size_bytes)
    if data is None:
        message = f"Your proposed upload exceeds the declared {declared.size_bytes} bytes."
        return storage_error(400, "EntityTooLarge", message)
    if len(data) != declared.size_bytes:
        message = (
            "You did not provide the number of bytes declared: "
            f"{len(data)} of {declared.size_bytes}."
        )
        return storage_error(400, "IncompleteBody", message)
    record.data = data
    return web.Response(status=200)


async def confirm_upload(request: web.Request) -> web.Response:
    """``POST /v1/asset-uploads/{asset_id}/confirmations``: the Asset (201, idempotent)."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    body, bad = await json_body(request)
    if bad is not None:
        return bad
    if body is not None and not isinstance(body, dict):
        return invalid([field_error("body", "must be a JSON object", "invalid_type")])
    folder_id = (body or {}).get("folder_id")
    if folder_id is not None and not isinstance(folder_id, str):
        return invalid([field_error("folder_id", "must be a UUID or null", "invalid_type")])
    if folder_id is not None and not is_uuid(folder_id):
        return invalid([field_error("folder_id", "must be a UUID or null", "invalid_uuid")])
    asset_id = request.match_info["asset_id"]
    record = state.assets.by_id.get(asset_id)
    if record is None:
        return error_response(404, "UPLOAD_NOT_FOUND", f"Upload {asset_id!r} does not exist.")
    if record.data is None:
        message = "Nothing has been uploaded to this session yet; PUT the bytes first."
        return error_response(409, "UPLOAD_INCOMPLETE", message)
    now = state.clock.now()
    record.confirm(now, folder_id)
    return json_response(state.render_asset(record, base_url(request), now), 201)


async def get_asset_types(request: web.Request) -> web.Response:
    """``GET /v1/assets/types``: the MIME types an upload session accepts (see ``asset_types``)."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    return json_response(asset_types())


async def get_asset(request: web.Request) -> web.Response:
    """``GET /v1/assets/{asset_id}``: a confirmed asset with a freshly signed ``url``."""
    state = request.app[STATE]
    if (denied := unauthorized(request, state)) is not None:
        return denied
    asset_id = request.match_info["asset_id"]
    record = state.assets.confirmed(asset_id)
    if record is None:
        return error_response(404, "ASSET_NOT_FOUND", f"Asset {asset_id!r} does not exist.")
    return json_response(state.render_asset(record, base_url(request), state.clock.now()))


async def get_asset_file(request: web.Request) -> web.Response:
    """``GET /assets/{asset_id}/content?exp&sig``: the asset's bytes, as declared."""
    state = request.app[STATE]
    if (refused := presigned_refusal(request, state)) is not None:
        return refused
    record = state.assets.confirmed(request.match_info["asset_id"])
    if record is None:
        return error_response(404, "ASSET_NOT_FOUND", "No such asset.")
    return web.Response(body=record.data, content_type=record.session.mime_type)

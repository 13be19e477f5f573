"""Uploading local images as Runflow assets, so that an edit can use them by URL.

The documented flow (docs: guides/upload-large-files; api-reference assets and media):
``POST /v1/asset-uploads`` opens a session and returns ``{asset_id, upload_url}``;
``PUT upload_url`` sends the bytes with the declared ``Content-Type`` and **no**
``Authorization`` (the URL carries its own credentials; a 403 means it expired, so
the flow starts over once); ``POST /v1/asset-uploads/{id}/confirmations`` returns
the Asset, whose signed ``url`` ``GET /v1/assets/{id}`` renews.

This module is part of the HTTP layer: its calls go through ``Transport.send`` and
are retried here, under the rule stated in :func:`_with_retries`.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import anyio

from runflow_async._core.assets import Asset
from runflow_async._core.errors import (
    APIError,
    APIResponseError,
    PermissionDeniedError,
    RequestValidationError,
)
from runflow_async._http.errors import CLIENT_ERRORS, client_error, status_error
from runflow_async._http.retry import CallKind, with_retries
from runflow_async._http.transport import Transport, is_plain_id, keyless_session, parse_response
from runflow_async._imagesize import image_size_from_bytes, image_type_from_bytes

__all__ = [
    "MAX_UPLOAD_BYTES",
    "Asset",
    "check_upload",
    "get_asset",
    "read_upload_source",
    "upload_asset",
]

logger = logging.getLogger("runflow_async")

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""The largest file an upload session accepts: 50 MiB (52,428,800 bytes)."""

_MAX_ATTEMPTS = 3  # the official JS SDK retries each step twice
_PUT_OK = frozenset({200, 201, 204})
_MIN_PUT_TIMEOUT = 120.0  # seconds; the JS SDK's floor, plus one second per 256 KiB
_PUT_BYTES_PER_SECOND = 256 * 1024
_MAX_FILENAME = 500

_T = TypeVar("_T")


def _upload_timeout(size: int) -> float:
    """Return the PUT's time limit: 120 s, or one second per 256 KiB if that is longer."""
    return max(_MIN_PUT_TIMEOUT, float(math.ceil(size / _PUT_BYTES_PER_SECOND)))


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError(message, errors=[{"field": field, "message": message}])


def _size_error(name: str, size: int) -> RequestValidationError:
    limit = f"the upload limit is 1 to {MAX_UPLOAD_BYTES} bytes (50 MiB)"
    return _invalid("size_bytes", f"{name} is {size} bytes; {limit}.")


async def read_upload_source(
    source: bytes | str | os.PathLike[str], filename: str | None
) -> tuple[bytes, str]:
    """Return the bytes to upload and their file name.

    A path's size is checked against :data:`MAX_UPLOAD_BYTES` before it is read.

    Raises:
        RequestValidationError: Bytes without ``filename``; a file that cannot be
            read (the message names the path and the reason); one over the limit.
    """
    if isinstance(source, bytes):
        if filename is None:
            raise _invalid("filename", "filename is required when uploading bytes.")
        return source, filename
    path = anyio.Path(source)
    try:
        if (size := (await path.stat()).st_size) > MAX_UPLOAD_BYTES:
            raise _size_error(str(path), size)
        data = await path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _invalid("source", f"Cannot read {str(path)!r}: {reason}.") from exc
    return data, path.name if filename is None else filename


def check_upload(data: bytes, filename: str, mime_type: str | None) -> str:
    """Validate an upload before anything is sent; return its MIME type."""
    if not 1 <= len(data) <= MAX_UPLOAD_BYTES:
        raise _size_error(filename, len(data))
    if not 1 <= len(filename) <= _MAX_FILENAME:
        raise _invalid("filename", f"filename must be 1 to {_MAX_FILENAME} characters.")
    mime_type = mime_type or image_type_from_bytes(data)
    if mime_type is None:
        message = f"{filename} is not a PNG, JPEG, WebP or GIF image; pass mime_type= to send it."
        raise _invalid("mime_type", message)
    return mime_type


async def _with_retries(
    transport: Transport, method: str, path: str, attempt: Callable[[], Awaitable[_T]]
) -> _T:
    """Call ``attempt`` through the retry engine, at most three times.

    Asset calls are unbilled (the ``unbilled`` row of the retry table), so
    retrying them cannot double-bill: a repeated session create at worst leaves
    an orphan session (never charged), a repeated confirmation returns the same
    asset, a repeated PUT overwrites the same object.
    """
    return await with_retries(
        attempt,
        kind=CallKind.UNBILLED,
        retrying=transport.retrying,
        method=method,
        path=path,
        max_attempts=_MAX_ATTEMPTS,
    )


async def _post(transport: Transport, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await _with_retries(
        transport, "POST", path, lambda: transport.send("POST", path, json_body=body)
    )
    return response.data if isinstance(response.data, dict) else {}


def _redact(url: str) -> str:
    """Return ``url`` without its query string or fragment (presigned credentials)."""
    return url.split("?", 1)[0].split("#", 1)[0]


def _check_upload_url(url: str) -> str:
    """Return the path of ``url``; refuse a URL the file must not travel over."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not ((parts.scheme == "https" and host) or (parts.scheme == "http" and loopback)):
        raise APIResponseError(
            f"Refusing the insecure upload URL {_redact(url)!r}: only https:// "
            "(or http:// to a loopback host) may carry the file.",
            code="insecure_upload_url",
            method="POST",
            path="/v1/asset-uploads",
        )
    return parts.path or "/"


async def _open_session(
    transport: Transport, size: int, filename: str, mime_type: str
) -> tuple[str, str]:
    """Step 1: return ``(asset_id, upload_url)`` of a new upload session."""
    body = {"filename": filename, "mime_type": mime_type, "size_bytes": size}
    data = await _post(transport, "/v1/asset-uploads", body)
    asset_id, upload_url = (data.get(key) for key in ("asset_id", "upload_url"))
    if not (isinstance(asset_id, str) and isinstance(upload_url, str)) or not is_plain_id(asset_id):
        message = "Malformed upload session: expected a string asset_id and upload_url"
        raise APIResponseError(message, method="POST", path="/v1/asset-uploads")
    return asset_id, upload_url


async def _put(transport: Transport, url: str, data: bytes, mime_type: str) -> None:
    """Step 2: PUT the bytes to the presigned ``url``, without any credential of ours."""
    path = _check_upload_url(url)
    safe_url = _redact(url)
    timeout = aiohttp.ClientTimeout(
        total=_upload_timeout(len(data)), sock_connect=transport.timeout.sock_connect
    )

    async def once() -> None:
        # A pool-sharing session without the caller's default headers, auth or
        # cookies: a lent session may carry them, and none may reach a storage host.
        async with keyless_session(transport.session()) as bare:
            try:
                async with bare.put(
                    url,
                    data=io.BytesIO(data),  # not bytes: aiohttp warns of large bytes bodies
                    headers={"Content-Type": mime_type},
                    timeout=timeout,
                    allow_redirects=False,
                ) as resp:
                    status, headers, body = resp.status, resp.headers, await resp.read()
            except CLIENT_ERRORS as exc:
                error: APIError | None = client_error(exc, "PUT", path, target=safe_url)
            else:
                error = None
        if error is not None:
            raise error  # outside the except: aiohttp's message may quote the presigned URL
        if status not in _PUT_OK:
            raise status_error(status, body, headers, method="PUT", path=path, target=safe_url)

    await _with_retries(transport, "PUT", path, once)


async def _stage(transport: Transport, data: bytes, filename: str, mime_type: str) -> str:
    """Steps 1 and 2, starting over once if storage refuses the PUT with 403."""
    asset_id, url = await _open_session(transport, len(data), filename, mime_type)
    try:
        await _put(transport, url, data, mime_type)
    except PermissionDeniedError:
        # A presigned URL that expired before the PUT arrived (docs: 403 -> restart).
        logger.info("Upload URL of %s refused (403); opening a new upload session.", filename)
        asset_id, url = await _open_session(transport, len(data), filename, mime_type)
        await _put(transport, url, data, mime_type)
    return asset_id


def _parse_asset(data: Any, method: str, path: str, extra: dict[str, int]) -> Asset:
    if isinstance(data, dict):
        # Measured sizes fill in what the API leaves out (it does not document them).
        data = {**data, **{key: v for key, v in extra.items() if data.get(key) is None}}
    return parse_response(Asset, data, method=method, path=path)


async def upload_asset(
    transport: Transport, data: bytes, *, filename: str, mime_type: str | None = None
) -> Asset:
    """Upload ``data`` as an asset and return it (steps 1-3 of the module docstring).

    Args:
        transport: The client's transport.
        data: The file's bytes, 1 byte to :data:`MAX_UPLOAD_BYTES`.
        filename: The asset's name (1-500 characters).
        mime_type: The file's type; read from its magic bytes when omitted
            (PNG, JPEG, WebP, GIF).

    Raises:
        RequestValidationError: Empty or too large ``data``, or an unknown type;
            nothing was sent.
        APIResponseError: A malformed session or asset, or an upload URL that is
            neither ``https://`` nor loopback (refused before any PUT).
        APIError: A step failed after its retries (``PermissionDeniedError``: the
            PUT was refused even after starting over).
    """
    mime_type = check_upload(data, filename, mime_type)
    asset_id = await _stage(transport, data, filename, mime_type)
    path = f"/v1/asset-uploads/{asset_id}/confirmations"
    confirmed = await _post(transport, path, {})
    size = image_size_from_bytes(data)
    extra = {} if size is None else {"width": size[0], "height": size[1]}
    return _parse_asset(confirmed, "POST", path, extra)


async def get_asset(transport: Transport, asset_id: str) -> Asset:
    """Fetch an asset with a freshly signed ``url`` (``GET /v1/assets/{id}``, retried).

    Raises:
        RequestValidationError: An empty id or one containing ``/``; nothing was sent.
        NotFoundError: No such asset.
    """
    if not is_plain_id(asset_id):
        raise _invalid("asset_id", f"Invalid asset id {asset_id!r}.")
    path = f"/v1/assets/{asset_id}"
    response = await transport.request("GET", path)
    return _parse_asset(response.data, "GET", path, {})

"""Response builders (JSON bodies, the error envelope, gateway HTML pages) and body parsing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

__all__ = ["default_code", "error_response", "html_error", "invalid", "json_body", "json_response"]

_CODES: Mapping[int, str] = {
    # Codes from https://docs.runflow.io/concepts/errors where documented.
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_CREDIT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "CONFLICT",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def default_code(status: int) -> str:
    """Return the error ``code`` the API would most likely send with ``status``."""
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).name
    except ValueError:
        return f"HTTP_{status}"


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return ``data`` as a compact JSON response."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def error_response(
    status: int,
    code: str | None = None,
    message: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Return the documented error envelope ``{code, message, errors}``."""
    envelope = {
        "code": code or default_code(status),
        "message": message or _phrase(status),
        "errors": errors,
    }
    return json_response(envelope, status, headers)


def html_error(status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    """Return an nginx-style HTML error page, as a gateway in front of the API would."""
    return html_page(status, headers)


def html_page(status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    """Return an nginx-style HTML page with ``status`` (a 200 one is a proxy's splash page)."""
    title = f"{status} {_phrase(status)}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return web.Response(text=page, status=status, content_type="text/html", headers=headers)


def invalid(errors: list[dict[str, str]]) -> web.Response:
    """Return ``422 VALIDATION_ERROR`` listing ``errors``."""
    count = len(errors)
    message = f"The request has {count} invalid field{'s' if count > 1 else ''}."
    return error_response(422, "VALIDATION_ERROR", message, errors)


async def json_body(request: web.Request) -> tuple[Any, web.Response | None]:
    """Return the decoded body (``None`` when empty), or a 400 for one that is not JSON."""
    raw = await request.read()
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw), None
    except ValueError:
        return None, error_response(400, "BAD_REQUEST", "The request body is not valid JSON.")

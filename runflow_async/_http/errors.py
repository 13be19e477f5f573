"""The one mapping from aiohttp failures and error statuses onto the error tree.

Used for the API (:class:`Transport`) and for other hosts (presigned uploads,
signed downloads). For other hosts the URL's query string is a credential, so
messages name ``target`` (the URL without it) and aiohttp's own exception is
not chained (its message may quote the full URL).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from xml.sax.saxutils import unescape

import aiohttp

from runflow_async._core.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InsufficientCreditError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TLSVerificationError,
    UnprocessableEntityError,
)
from runflow_async._core.models import parse_error_body
from runflow_async._http.retry import parse_retry_after

__all__ = [
    "CLIENT_ERRORS",
    "client_error",
    "error_for_status",
    "status_error",
    "storage_xml_error",
]


_XML_ENTITIES = {"&quot;": '"', "&apos;": "'"}
_XML_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_XML_MESSAGE = re.compile(rb"<Message>([^<]{1,500})</Message>")


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_for_status(status: int) -> type[APIStatusError]:
    """Return the error class for an HTTP error ``status``."""
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    if status >= 500:
        return ServerError
    return APIStatusError


def _xml_text(pattern: re.Pattern[bytes], head: bytes) -> str | None:
    match = pattern.search(head)
    if match is None:
        return None
    return unescape(match[1].decode("utf-8", "replace"), _XML_ENTITIES).strip()[:200] or None


def storage_xml_error(body: bytes) -> tuple[str | None, str | None]:
    """Return ``(Code, Message)`` of an S3-style XML error document, or ``(None, None)``.

    Only those two elements are read (by pattern, never by an XML parser): S3's
    ``SignatureDoesNotMatch`` also carries ``<SignatureProvided>`` and
    ``<StringToSign>``, parts of the presigned credential that no message may quote.
    """
    head = body[:8192].lstrip()
    if not head.startswith((b"<?xml", b"<Error")):
        return None, None
    return _xml_text(_XML_CODE, head), _xml_text(_XML_MESSAGE, head)


CLIENT_ERRORS = (aiohttp.ClientError, TimeoutError)
"""What aiohttp (and its timeouts) raise; :func:`client_error` maps each onto the tree."""


def client_error(
    exc: BaseException, method: str, path: str, *, target: str | None = None
) -> APIError:
    """Our error for an aiohttp failure. Raise it *outside* the ``except`` block.

    aiohttp's exception is never chained: a ``ClientResponseError`` (a malformed
    status line or header) holds the request's headers, ``Authorization``
    included, and aiohttp's own frames hold them as locals. Its class and a
    safe reason go into the message instead.

    Args:
        exc: The aiohttp or timeout exception.
        method: The request's method.
        path: The request's path (no query string).
        target: The host's URL without its query, for a host other than the API.
    """
    where = "the API" if target is None else target
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(
            f"Timed out connecting to {where}", sent=False, method=method, path=path
        )
    if isinstance(exc, TimeoutError):
        return APITimeoutError(f"Timed out waiting for {where}", method=method, path=path)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # Verification failed before anything was sent; trying again cannot help.
        reason = getattr(exc.certificate_error, "verify_message", None) or name
        return TLSVerificationError(
            f"The TLS certificate of {where} did not verify ({reason}); to trust a private "
            "CA, pass RunflowClient(ssl_context=ssl.create_default_context(cafile=...)) "
            "(the CLI: --ca-file PATH)",
            sent=False,
            retryable=False,
            method=method,
            path=path,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Refused, unreachable or DNS failure: nothing was sent.
        reason = exc.os_error.strerror or name
        return APIConnectionError(
            f"Could not connect to {where}: {reason}", sent=False, method=method, path=path
        )
    detail = exc.message if isinstance(exc, aiohttp.ClientResponseError) else ""
    detail = f": {str(detail)[:200]}" if detail and target is None else ""
    return APIConnectionError(
        f"The connection to {where} failed mid-request ({name}{detail})",
        method=method,
        path=path,
    )


def status_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    method: str,
    path: str,
    request_id: str | None = None,
    target: str | None = None,
) -> APIStatusError:
    """The error for an error status: the subclass for it, code and message from the body.

    An S3-style XML error (storage's answer to a presigned PUT or GET) gives its
    ``Code`` and ``Message``. Another body that is not JSON (an HTML page from a
    proxy) adds its first 200 characters to the message, for the API only.
    """
    try:
        data = json.loads(body) if body.strip() else None
    except (ValueError, RecursionError):
        data = None  # an HTML error page, XML from storage, absurdly deep nesting
    code, message, errors = parse_error_body(data)
    if data is None:
        code, message = storage_xml_error(body)
    if not message and data is None and target is None:
        message = body[:200].decode("utf-8", "replace").strip() or None
    summary = f"HTTP {status}" + (f" {code}" if code else "")
    if target is not None:
        summary += f" {'uploading to' if method == 'PUT' else 'downloading'} {target}"
    summary += f": {message}" if message else ""
    return error_for_status(status)(
        summary,
        status=status,
        code=code,
        errors=errors,
        request_id=request_id,
        retry_after=parse_retry_after(headers.get("Retry-After")),
        method=method,
        path=path,
    )

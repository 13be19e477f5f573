"""The one mapping from aiohttp failures and error statuses onto the error tree.

Used for the API (:class:`Transport`) and for other hosts (presigned uploads,
signed downloads). For other hosts the URL's query string is a credential, so
messages name ``target`` (the URL without it) and aiohttp's own exception is
not chained (its message may quote the full URL).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import aiohttp

from runflow_async._core.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    error_for_status,
)
from runflow_async._core.models import parse_error_body
from runflow_async._http.retry import parse_retry_after

__all__ = ["mapped_errors", "status_error"]


@contextmanager
def mapped_errors(method: str, path: str, *, target: str | None = None) -> Iterator[None]:
    """Raise aiohttp and timeout failures inside the block as our errors.

    Args:
        method: The request's method.
        path: The request's path (no query string).
        target: The host's URL without its query, for a host other than the API.

    Raises:
        APITimeoutError: Timed out (``sent=False`` when connecting timed out).
        APIConnectionError: No response (``sent=False`` when nothing was sent).
    """
    where = "the API" if target is None else target
    cause: BaseException | None = None
    try:
        yield
    except APIError:
        raise  # ours already (APITimeoutError is also a TimeoutError)
    except aiohttp.ConnectionTimeoutError as exc:
        cause = exc
        error: Exception = APITimeoutError(
            f"Timed out connecting to {where}", sent=False, method=method, path=path
        )
    except TimeoutError as exc:
        cause = exc
        error = APITimeoutError(f"Timed out waiting for {where}", method=method, path=path)
    except aiohttp.ClientConnectorError as exc:
        # Refused, unreachable or DNS failure: nothing was sent.
        cause = exc
        reason = exc.os_error.strerror or type(exc).__name__
        error = APIConnectionError(
            f"Could not connect to {where}: {reason}", sent=False, method=method, path=path
        )
    except aiohttp.ClientError as exc:
        cause = exc
        error = APIConnectionError(
            f"The connection to {where} failed mid-request ({type(exc).__name__})",
            method=method,
            path=path,
        )
    else:
        return
    if target is None:
        raise error from cause
    raise error from None


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

    A body that is not JSON (an HTML page from a proxy, XML from storage) adds
    its first 200 characters to the message, for the API only.
    """
    try:
        data = json.loads(body) if body.strip() else None
    except (ValueError, RecursionError):
        data = None  # an HTML error page, XML from storage, absurdly deep nesting
    code, message, errors = parse_error_body(data)
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

"""The HTTP layer: the one place that talks to aiohttp and the one place that retries.

:class:`Transport` owns (or borrows) the ``aiohttp.ClientSession``, sends single
attempts with :meth:`Transport.send` and maps every failure onto the error tree,
and retries idempotent calls with :meth:`Transport.request` through the one retry
engine (:mod:`._http.retry`); creates and asset calls use the same engine under
their own rows of its table.
"""

from __future__ import annotations

import logging
import platform
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pydantic
from multidict import CIMultiDict

from runflow_async._core.clock import Clock
from runflow_async._core.config import DEFAULT_MAX_RESPONSE_BYTES, RetryPolicy, Timeouts
from runflow_async._core.errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    ClientClosedError,
    ConfigurationError,
)
from runflow_async._http.errors import CLIENT_ERRORS, client_error, status_error
from runflow_async._http.jsonio import dump_json, parse_json
from runflow_async._http.owners import RunOwners
from runflow_async._http.retry import CallKind, RetryHook, Retrying, with_retries
from runflow_async._http.visibility import Visibility
from runflow_async._version import __version__

__all__ = [
    "Response",
    "Transport",
    "dump_json",
    "is_plain_id",
    "keyless_session",
    "parse_response",
]

logger = logging.getLogger("runflow_async")

_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "runflow-request-id", "x-runflow-request-id")
USER_AGENT = (
    f"runflow-async/{__version__} python/{platform.python_version()} aiohttp/{aiohttp.__version__}"
)


@dataclass(frozen=True, slots=True)
class Response:
    """A successful (2xx) response with its JSON body."""

    status: int
    data: Any
    request_id: str | None


@asynccontextmanager
async def keyless_session(session: aiohttp.ClientSession) -> AsyncIterator[aiohttp.ClientSession]:
    """A session sharing ``session``'s connection pool and nothing else.

    For requests to hosts other than the API (signed output URLs, presigned
    uploads, image probes): none of ``session``'s default headers, ``auth`` or
    cookies (a session lent by the caller may carry credentials), no proxy or
    netrc from the environment, and cookies set by those hosts are dropped.

    Raises:
        ClientClosedError: ``session`` is closed.
    """
    if session.closed or session.connector is None:
        raise ClientClosedError("The HTTP session is closed; create a new RunflowClient.")
    async with aiohttp.ClientSession(
        connector=session.connector,
        connector_owner=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as bare:
        yield bare


class _Secret:
    """Holds the API key so that no repr, str or traceback local shows it.

    It also holds the request headers that carry it, built once per client
    (they do not vary between requests): :meth:`headers` hands them out
    without any frame of ours keeping them as a local.
    """

    __slots__ = ("_headers", "_json_headers", "_value")

    def __init__(self, value: str, base: Mapping[str, str]) -> None:
        self._value = value
        self._headers = CIMultiDict({**base, "Authorization": f"Bearer {value}"})
        self._json_headers = CIMultiDict(self._headers)
        self._json_headers["Content-Type"] = "application/json"

    def reveal(self) -> str:
        return self._value

    def headers(self, extra: Mapping[str, str] | None, *, json: bool) -> CIMultiDict[str]:
        """The API headers (with ``Content-Type`` for a JSON body), plus ``extra``.

        The shared objects are handed out as they are when there is nothing
        to add; aiohttp copies request headers before it changes them.
        """
        headers = self._json_headers if json else self._headers
        if not extra:
            return headers
        merged = headers.copy()
        merged.update(extra)
        return merged

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


class Transport:
    """Sends requests to the Runflow API.

    Args:
        base_url: API root, e.g. ``https://api.runflow.io``.
        api_key: Sent as a bearer token to ``base_url`` only.
        organization_id: Sent as ``X-Organization-Id`` when set.
        timeouts: Per-request limits.
        retry: Retry policy for idempotent calls and creates.
        max_connections: Size of the connection pool we create.
        max_response_bytes: The largest response body read.
        session: A session to borrow instead of creating one (never closed by us).
        ssl_context: TLS settings for the session we create (default: aiohttp's, verifying).
        on_retry: Called before each retry.
        clock: Scales the waits the client chooses (backoff, polls) to the server's time.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        organization_id: str | None,
        timeouts: Timeouts,
        retry: RetryPolicy,
        max_connections: int,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
        on_retry: RetryHook | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.base_url = base_url
        self.clock = clock or Clock(retry.time_scale)
        self.retry = retry
        self.on_retry = on_retry
        self._max_connections = max_connections
        self._max_body = max_response_bytes
        if session is not None and ssl_context is not None:
            raise ConfigurationError(
                "Pass ssl_context or session, not both: give your session's connector the context."
            )
        self._session = session
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._owns_session = session is None
        self._closed = False
        self.timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        base = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if organization_id:
            base["X-Organization-Id"] = organization_id
        self._api_key = _Secret(api_key, base)
        self.retrying = Retrying(retry, self.clock, on_retry)
        self.visibility = Visibility(retry)
        self.owners = RunOwners()

    def redact(self, text: str) -> str:
        """``text`` (say, an excerpt of a response) with the API key blanked out."""
        return text.replace(self._api_key.reveal(), "<redacted>")

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    def session(self) -> aiohttp.ClientSession:
        """Return the session, creating it on first use (inside the running loop).

        Raises:
            ClientClosedError: After :meth:`aclose`.
        """
        if self._closed:
            raise ClientClosedError("The client is closed; create a new RunflowClient.")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def aclose(self) -> None:
        """Close the session if we created it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> Response:
        """Send an idempotent request, retrying retryable failures.

        Retries 429, 5xx (HTML error pages included) and network errors with
        backoff; never 400/401/403/404/409/422. Do not use for creates.
        """
        try:  # the common case costs one call, no retry machinery
            return await self.send(method, path, params=params, json_body=json_body)
        except APIError as exc:
            if not exc.retryable or self.retry.max_attempts < 2:
                raise
            first: APIError = exc
        return await with_retries(
            lambda: self.send(method, path, params=params, json_body=json_body),
            kind=CallKind.READ,
            retrying=self.retrying,
            method=method,
            path=path,
            first_error=first,
        )

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        data: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        async with session.request(
            method,
            self.base_url + path,
            params=params,
            data=data,
            # Passed where it is built: no frame of ours holds the key as a local.
            headers=self._api_key.headers(headers, json=data is not None),
            timeout=self.timeout,
            allow_redirects=False,
        ) as resp:
            try:
                return resp.status, resp.headers, await self._body(resp, method, path)
            except CLIENT_ERRORS as exc:
                # The status arrived, the body did not: keep the status, so a
                # create answered 2xx is known to exist (never resent).
                msg = f"The HTTP {resp.status} response was cut off ({type(exc).__name__})"
                cut = APIConnectionError(msg, status=resp.status, method=method, path=path)
        raise cut

    async def _body(self, resp: aiohttp.ClientResponse, method: str, path: str) -> bytes:
        """The body, refused past ``max_response_bytes`` before it fills memory."""
        limit = self._max_body
        length = resp.content_length
        if length is not None:
            if length > limit:
                raise _too_big(resp.status, limit, method, path)
            return await resp.read()
        chunks, size = [], 0  # no Content-Length: count as it comes
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise _too_big(resp.status, limit, method, path)
            chunks.append(chunk)
        return b"".join(chunks)

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one attempt and map any failure onto the error tree.

        The JSON body is ``json_body`` serialised here, or ``body`` when the
        caller serialised it already (a create sends the same bytes on every
        attempt).

        Raises:
            APIConnectionError: No response (``sent`` says whether it may have arrived).
            APITimeoutError: The request timed out.
            APIStatusError: An error status (the subclass for it).
            APIResponseError: A 2xx whose body is not JSON.
        """
        session = self.session()
        if json_body is not None:
            body = dump_json(json_body)
        try:
            status, resp_headers, answer = await self._exchange(
                session, method, path, params=params, data=body, headers=headers
            )
        except APIError:
            raise  # ours already (a cut-off body; APITimeoutError is also a TimeoutError)
        except CLIENT_ERRORS as exc:
            error: APIError | None = client_error(exc, method, path)
        else:
            error = None
        if error is not None:
            raise error  # outside the except: no __context__ that holds the key
        request_id = _request_id(resp_headers)
        if 200 <= status < 300:
            data = parse_json(answer, status, request_id, method, path)
            return Response(status, data, request_id)
        raise status_error(
            status, answer, resp_headers, method=method, path=path, request_id=request_id
        )


def _request_id(headers: Mapping[str, str]) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value is not None:
            return value
    return None


def _too_big(status: int, limit: int, method: str, path: str) -> APIResponseError:
    return APIResponseError(
        f"HTTP {status} response body is over {limit} bytes (max_response_bytes); not read",
        status=status,
        retryable=False,
        method=method,
        path=path,
    )


# Ids (runs, assets) are UUIDs. Anything outside URL-unreserved characters could
# turn a read of one into a request for another resource (``?``, ``#``,
# ``%2e%2e``, a ``/``); a leading dot is refused too (``.``, ``..``).
_PLAIN_ID = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,254}")


def is_plain_id(value: object) -> bool:
    """Whether ``value`` is safe as one path segment, as it is."""
    return isinstance(value, str) and _PLAIN_ID.fullmatch(value) is not None


_M = TypeVar("_M", bound=pydantic.BaseModel)


def parse_response(model: type[_M], data: Any, *, method: str, path: str) -> _M:
    """Validate a 2xx body as ``model``.

    Raises:
        APIResponseError: It does not fit; the message names the fields at fault
            (never their values, which may be credentials).
    """
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        fields = sorted({".".join(map(str, e["loc"])) or "(body)" for e in exc.errors()})
        raise APIResponseError(
            f"Unexpected response shape from {path}: {exc.error_count()} problem(s) "
            f"({', '.join(fields[:5])})",
            method=method,
            path=path,
        ) from exc

"""``CallbackReceiver``: an aiohttp endpoint that turns signed callbacks into awaitables.

A delivery is size-checked and read within a deadline (a sender that stalls or
trickles its body gets 408 instead of holding a handler), verified on its raw
bytes, parsed, and then resolves the watch for its run exactly once; retries are
answered 200 and ignored. One that comes before anyone watches its run (a run
can finish before its create response is read) waits in a bounded buffer. With
a ``dedupe_path`` the deliveries are also kept in SQLite, so a retry after a
restart is still recognised.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import anyio
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from runflow_async._callbacks.store import DeliveryStore
from runflow_async._callbacks.watch import CallbackWatch
from runflow_async._core.errors import (
    ClientClosedError,
    ConfigurationError,
    WebhookVerificationError,
)
from runflow_async._core.models import CallbackPayload
from runflow_async._webhooks import REQUEST_ID_HEADER, SIGNATURE_HEADER, SignatureVerifier

__all__ = ["CallbackReceiver", "CallbackWatch", "ReceiverCounters"]

logger = logging.getLogger("runflow_async")

_CHUNK = 64 * 1024
_CLOSED = "This CallbackReceiver was closed; create a new one."


@dataclass(frozen=True, slots=True)
class ReceiverCounters:
    """A snapshot of what a :class:`CallbackReceiver` has seen.

    Every request counts in ``received`` and, unless it came after the receiver
    closed, in exactly one of ``accepted``, ``duplicates`` or ``rejected_*``.

    Attributes:
        received: Requests that reached the handler.
        accepted: Signed, well-formed deliveries seen for the first time
            (including ones without a ``run_id``, such as batch callbacks).
        duplicates: Further deliveries for a run id already delivered.
        rejected_signature: Answered 401: missing, malformed or wrong signature.
        rejected_oversized: Answered 413: body over ``max_body_bytes``.
        rejected_timeout: Answered 408: the body did not arrive within
            ``body_timeout`` (a stalled or trickling sender).
        rejected_invalid: Answered 400: a body cut short, or signed but not a
            callback payload.
        unknown_run: Accepted deliveries that nobody was watching yet (buffered).
        watching: Watches currently waiting.
        buffered: Deliveries currently waiting for a watch.
    """

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected_signature: int = 0
    rejected_oversized: int = 0
    rejected_timeout: int = 0
    rejected_invalid: int = 0
    unknown_run: int = 0
    watching: int = 0
    buffered: int = 0


def _put(
    lru: OrderedDict[str, CallbackPayload], key: str, value: CallbackPayload, size: int
) -> str | None:
    """Store ``value`` as the newest entry; return the key evicted to keep ``size``, if any."""
    lru[key] = value
    lru.move_to_end(key)
    return lru.popitem(last=False)[0] if len(lru) > size else None


class CallbackReceiver:
    """Receives Runflow callbacks and hands each run's payload to whoever watches it.

    Serve it yourself (or mount it into your aiohttp app with :meth:`add_routes`)::

        async with CallbackReceiver([secret], public_url=PUBLIC_URL) as rx:
            run = await client.submit(GenerateRequest(prompt=p, callback_url=rx.url))
            payload = await rx.watch(run.id).wait()

    Watch a run as soon as its id is known; a delivery that came first waits in
    a buffer and settles the watch at once.

    Args:
        secrets: The accepted signing secrets (``whsec_...``); during a rotation
            pass the old and the new one. A single ``str`` is one secret.
        host: The interface to listen on when serving.
        port: The port to listen on; ``0`` picks a free one.
        path: The URL path callbacks are POSTed to.
        public_url: The URL Runflow should call, if not the local address
            (behind a proxy or tunnel).
        max_body_bytes: Larger bodies are refused with 413, unread.
        body_timeout: Seconds a request may take to send its body, counted
            from its headers; a slower one is answered 408 and its connection
            closed, so a stalled sender cannot hold a handler.
        buffer_size: How many runs' deliveries are remembered in memory, both
            the unwatched and the handed-out (to recognise retries); oldest go
            first.
        dedupe_path: An SQLite file that also keeps every delivery (the newest
            million), so a receiver started again on the same file recognises
            retries of deliveries taken before, and settles a watch of such a
            run at once. Default: memory only.

    Raises:
        ConfigurationError: No non-empty secret, a path without a leading
            ``/``, a limit below 1, a ``body_timeout`` that is not a positive
            number, or a ``dedupe_path`` that cannot be opened (raised when
            serving starts).
    """

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/runflow/callbacks",
        public_url: str | None = None,
        max_body_bytes: int = 1 << 20,
        body_timeout: float = 10.0,
        buffer_size: int = 10_000,
        dedupe_path: str | os.PathLike[str] | None = None,
    ) -> None:
        keys = (secrets,) if isinstance(secrets, str) else tuple(secrets)
        if not keys or not all(keys):
            raise ConfigurationError("CallbackReceiver needs at least one non-empty secret.")
        if not path.startswith("/"):
            raise ConfigurationError(f"The callback path must start with '/': {path!r}.")
        if max_body_bytes < 1 or buffer_size < 1:
            raise ConfigurationError("max_body_bytes and buffer_size must be at least 1.")
        if not (body_timeout > 0 and math.isfinite(body_timeout)):
            raise ConfigurationError(f"body_timeout must be a positive number: {body_timeout!r}.")
        self._verifier = SignatureVerifier(keys)  # the HMAC keys prepared once
        self._host = host
        self._port = port
        self._path = path
        self._public_url = public_url
        self._max_body_bytes = max_body_bytes
        self._body_timeout = body_timeout
        self._buffer_size = buffer_size
        self._dedupe_path = dedupe_path
        self._store: DeliveryStore | None = None
        self._watches: dict[str, list[CallbackWatch]] = {}
        # run id -> first delivery: not yet watched / already handed to a watch.
        self._buffer: OrderedDict[str, CallbackPayload] = OrderedDict()
        self._delivered: OrderedDict[str, CallbackPayload] = OrderedDict()
        self._counts: Counter[str] = Counter()  # ReceiverCounters field -> count
        self._runner: web.AppRunner | None = None
        self._bound_url: str | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._closed:
            raise ClientClosedError(_CLOSED)
        if self._runner is not None:
            raise RuntimeError("This CallbackReceiver is already serving.")
        app = web.Application()
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        self._bound_url = str(URL.build(scheme="http", host=self._host, port=port, path=self._path))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving and settle pending watches with ``ClientClosedError``; idempotent."""
        self._closed = True
        for watches in self._watches.values():
            for watch in watches:
                message = f"The callback receiver closed before run {watch.run_id}'s callback came."
                watch._settle(ClientClosedError(message))
        self._watches.clear()
        self._buffer.clear()
        self._delivered.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        store, self._store = self._store, None
        if store is not None:
            store.close()  # after the handlers: none is left writing to it

    @property
    def url(self) -> str:
        """``public_url``, else the bound address (``RuntimeError`` before it is bound)."""
        if self._public_url is not None:
            return self._public_url
        if self._bound_url is None:
            raise RuntimeError("CallbackReceiver.url is known once the server has started.")
        return self._bound_url

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def counters(self) -> ReceiverCounters:
        """A snapshot of the receiver's counters."""
        watching = sum(len(w) for w in self._watches.values())
        return ReceiverCounters(**self._counts, watching=watching, buffered=len(self._buffer))

    def add_routes(self, app: web.Application) -> None:
        """Serve callbacks (``POST path``) from ``app``, before it starts, instead of our own.

        Raises:
            ConfigurationError: The ``dedupe_path`` cannot be opened.
        """
        self._open_store()
        app.router.add_post(self._path, self._handle)

    def _open_store(self) -> DeliveryStore | None:
        if self._store is None and self._dedupe_path is not None and not self._closed:
            self._store = DeliveryStore(self._dedupe_path)
        return self._store

    def watch(self, run_id: str) -> CallbackWatch:
        """Start watching ``run_id``; settled at once if its callback already came.

        Args:
            run_id: The run's id, as the create response gave it.

        Raises:
            ClientClosedError: The receiver was closed.
        """
        if self._closed:
            raise ClientClosedError(_CLOSED)
        watch = CallbackWatch(run_id, self)
        payload = self._buffer.pop(run_id, None)
        if payload is None:
            payload = self._delivered.get(run_id)
        store = self._open_store()
        if payload is None and store is not None:
            raw = store.get(run_id)  # delivered before a restart, or evicted from memory
            payload = None if raw is None else CallbackPayload.model_validate_json(raw)
        if payload is not None:
            _put(self._delivered, run_id, payload, self._buffer_size)
            watch._settle(payload)
        else:
            self._watches.setdefault(run_id, []).append(watch)
        return watch

    def _forget(self, watch: CallbackWatch) -> None:
        # Only pending watches are cancelled, and every pending watch is listed here.
        watches = self._watches[watch.run_id]
        watches.remove(watch)
        if not watches:
            del self._watches[watch.run_id]

    async def _read_body(self, request: web.Request) -> bytes | None:
        # None when over the limit, which is found out without reading past it.
        limit = self._max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        content = request.content
        if content.is_eof():
            # The whole body came with the headers (a callback is small): it is
            # in memory already, so there is nothing to wait for and no deadline
            # to arm. aiohttp stops reading past its buffer's high-water mark,
            # so an unfinished large body never gets here.
            raw = content.read_nowait(-1)
            return raw if len(raw) <= limit else None
        with anyio.fail_after(self._body_timeout):
            body = bytearray()
            while len(body) <= limit:
                chunk = await content.read(min(_CHUNK, limit + 1 - len(body)))
                if not chunk:
                    return bytes(body)
                body += chunk
            return None

    async def _handle(self, request: web.Request) -> web.Response:
        self._counts["received"] += 1
        request_id = request.headers.get(REQUEST_ID_HEADER, "-")[:64]
        if self._closed:
            return web.Response(status=503, text="receiver closed")
        try:
            raw = await self._read_body(request)
        except TimeoutError:
            return await self._cut_off(request, request_id)
        except (ConnectionError, HttpProcessingError):  # dropped mid-body, or bad chunking
            return self._reject("rejected_invalid", 400, "unreadable body", request_id)
        if raw is None:
            return self._refuse_unread("rejected_oversized", 413, "body too large", request_id)
        try:
            self._verifier.verify(raw, request.headers.get(SIGNATURE_HEADER))
        except WebhookVerificationError as exc:
            why = f"invalid signature ({exc.reason})"
            return self._reject("rejected_signature", 401, why, request_id)
        try:
            payload = CallbackPayload.model_validate_json(raw)
        except ValueError:
            return self._reject("rejected_invalid", 400, "invalid payload", request_id)
        return web.Response(text=await self._take(payload, raw))

    async def _take(self, payload: CallbackPayload, raw: bytes) -> str:
        run_id = payload.run_id
        store = self._open_store()
        fresh = run_id not in self._buffer and run_id not in self._delivered
        if run_id and store is not None and fresh:
            if store.get(run_id) is not None:  # taken before a restart
                self._counts["duplicates"] += 1
                return "duplicate"
            # Stored before it is dispatched and answered: once Runflow has its
            # 200 it will not retry, and a restart must still know it.
            await store.add(run_id, raw)
        return self._dispatch(payload)

    async def _cut_off(self, request: web.Request, request_id: str) -> web.Response:
        response = self._refuse_unread("rejected_timeout", 408, "body too slow", request_id)
        await response.prepare(request)
        await response.write_eof()
        # Closed now (the answer is flushed first): aiohttp would otherwise linger,
        # reading the rest of a body that is not coming for another 10 s.
        request.protocol.force_close()
        return response

    def _refuse_unread(self, counter: str, status: int, why: str, request_id: str) -> web.Response:
        response = self._reject(counter, status, why, request_id)
        response.force_close()  # the unread rest of the body must not be parsed as a request
        return response

    def _reject(self, counter: str, status: int, why: str, request_id: str) -> web.Response:
        self._counts[counter] += 1
        logger.info("Rejected callback %s with %d: %s", request_id, status, why)
        return web.Response(status=status, text=why)

    def _dispatch(self, payload: CallbackPayload) -> str:
        run_id = payload.run_id
        if run_id in self._buffer or run_id in self._delivered:
            self._counts["duplicates"] += 1
            return "duplicate"
        self._counts["accepted"] += 1
        if not run_id:
            return "ignored"  # a batch callback, or one for no run: nothing to resolve
        watches = self._watches.pop(run_id, None)
        if watches is None:
            self._counts["unknown_run"] += 1
            dropped = _put(self._buffer, run_id, payload, self._buffer_size)
            if dropped is not None:
                logger.info("Dropped the unwatched callback for run %s: buffer full", dropped)
            return "buffered"
        _put(self._delivered, run_id, payload, self._buffer_size)
        for watch in watches:
            watch._settle(payload)
        return "accepted"

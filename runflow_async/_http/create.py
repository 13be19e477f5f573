"""Creating a run without ever paying for it twice.

Part of the HTTP layer (with :mod:`runflow_async._http.transport`). Each logical create
carries one ``Idempotency-Key`` and one ``client_ref`` on every attempt.

* Provably not created (429, 503 ``MODEL_UNAVAILABLE``, connection refused
  before sending): wait, then send again.
* Ambiguous (timeout, connection dropped after sending, any other 5xx, a 409
  on a repeat): look the run up by ``client_ref``, again and again over the
  visibility window (:mod:`._http.visibility`: an empty answer is no proof
  while lists lag or a server stores late), and adopt it; send again (same
  key) only once the whole window passed without a sighting.
* Created but unreadable (a 2xx we cannot parse, or whose run id is missing,
  empty, not a string or absurd): look it up; never resend.
* Created but not trusted (a 2xx naming another ``client_ref``, or a run id
  this client already gave to another create: :mod:`._http.owners`): look it
  up by its own ``client_ref`` over the window, like an ambiguous create;
  never resend. A run read later that names another ``client_ref`` is
  reclaimed the same way (:func:`._http.owners.reclaim`).
* Anything else (400/401/402/403/404/422): raise.

Runflow documents ``Idempotency-Key`` only on batches and never says that the
list filter matches ``client_ref``, so neither is trusted alone: a lookup whose
answer contains runs with another ``client_ref`` (the filter was ignored) or is
refused (a 4xx) falls back to documented listing (:mod:`._http.lookup`); one
that no form of listing can make, or whose last try fails, ends in
:class:`CreateOutcomeUnknownError` rather than a blind resend.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import pydantic

from runflow_async._core.clock import Clock, shielded
from runflow_async._core.errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    CreateOutcomeUnknownError,
)
from runflow_async._core.filters import term
from runflow_async._core.models import Run, run_id_problem
from runflow_async._http.lookup import LookupRefused, find
from runflow_async._http.retry import CallKind, CreateGate, RetryHook, not_created, with_retries
from runflow_async._http.transport import Response, Transport, dump_json
from runflow_async._http.visibility import LookupFailed, search

__all__ = [
    "CreateGate",
    "CreateProgress",
    "client_ref_query",
    "create_run",
    "find_by_client_ref",
    "find_sent_before",
    "idempotency_key_for",
    "look_for",
    "new_client_ref",
    "parse_created",
]

logger = logging.getLogger("runflow_async")


_EXCERPT = 400  # characters of a body quoted in an error
_RAW_ID = 1000  # characters of an absurd run id kept in the error

_KEY_NAMESPACE = uuid.UUID("6c1f0a52-8f1e-4c0e-9a43-2d7b5e0f9a11")
_KEY_SEED = hashlib.sha1(_KEY_NAMESPACE.bytes, usedforsecurity=False)  # copied per key
# The create body keys that never hold a float (the input fields are ints,
# strings, booleans and lists of them): such a body may take dump_json's fast path.
_FLOATLESS_KEYS = frozenset({"input", "client_ref", "callback_url"})


def idempotency_key_for(client_ref: str) -> str:
    """The ``Idempotency-Key`` of the create named ``client_ref``, the same every time.

    Derived rather than drawn, so that every attempt *and every resume* of one
    logical create (a dataset keeps its ``client_ref`` in the journal) sends
    the same key: a server that honours it replays the run instead of billing
    a second one, even when its list lags and a lookup misses.

    It is ``str(uuid.uuid5(namespace, client_ref))``, computed without
    building two ``UUID`` objects (the same bytes: RFC 4122 section 4.3).
    """
    sha = _KEY_SEED.copy()
    sha.update(client_ref.encode())
    digest = bytearray(sha.digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_client_ref() -> str:
    """A fresh ``client_ref``: ``rfa-`` and the hex of a random (version 4) UUID.

    ``f"rfa-{uuid.uuid4().hex}"``, without building a ``UUID`` object.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return "rfa-" + raw.hex()


def client_ref_query(client_ref: str) -> str:
    """Return the list-filter ``q`` that matches one ``client_ref`` exactly."""
    return term("client_ref", client_ref)


@functools.lru_cache(maxsize=64)
def _model_path(model: str) -> str:
    return "/v1/models/" + "/".join(quote(part, safe="") for part in model.split("/")) + "/runs"


class CreateProgress:
    """What the caller of :func:`create_run` may know of it while it is under way.

    Attributes:
        maybe_created: An attempt may have made a run (it was answered 2xx, or
            it is ambiguous, or it failed in a way that proves nothing). Once
            set it stays set: stopped at any later point (cancelled, the client
            closed), the create's outcome is unknown, not "never created".
        untrusted: The run id an answer named that was not this create's own
            (its run was then looked up by ``client_ref``), if any.
    """

    __slots__ = ("maybe_created", "untrusted")

    def __init__(self, *, maybe_created: bool = False) -> None:
        self.maybe_created = maybe_created
        self.untrusted: str | None = None


class _CutOff2xx(Exception):
    """A create was answered 2xx but its body was cut off: the run exists."""


async def find_by_client_ref(
    transport: Transport, client_ref: str, *, idempotency_key: str
) -> Run | None:
    """Return the run created with ``client_ref``, or ``None`` if this one lookup misses.

    One lookup only: a miss is no proof that no run exists (lists lag).

    Raises:
        CreateOutcomeUnknownError: The lookup failed or the server ignored the filter.
    """
    try:
        return await find(transport, client_ref, None)
    except (LookupFailed, LookupRefused) as exc:
        raise _unknown(_why(exc), client_ref, idempotency_key, "/v1/runs") from _origin(exc)


async def find_sent_before(transport: Transport, client_ref: str, *, since: float) -> Run | None:
    """Look up a create sent (if at all) before ``since`` (clock seconds), over the window.

    For a create an earlier process (or an earlier batch) may have sent: its
    send time is unknown, but no later than ``since`` (the start of the batch
    that resumes it). The visibility window counts from ``since``, so every
    item resumed by one batch shares one window: once it has passed, each
    item takes a single lookup. Nothing is learned from a sighting (``since``
    is only a bound, and would understate the delay). Returns ``None`` only
    once the window has passed without a sighting: then, and only then, may
    the create be sent again (with the same ``Idempotency-Key``,
    :func:`idempotency_key_for` ``client_ref``).

    Raises:
        CreateOutcomeUnknownError: As for :func:`look_for`: absence cannot be
            established (the filter is ignored or refused, the last lookup failed).
    """
    key = idempotency_key_for(client_ref)
    return await look_for(transport, client_ref, key, since, since, learn=False)


async def look_for(
    transport: Transport,
    client_ref: str,
    idempotency_key: str,
    sent_at: float,
    failed_at: float,
    *,
    learn: bool = True,
) -> Run | None:
    """Look up a create over the whole visibility window.

    ``sent_at`` and ``failed_at`` are when it was sent and when the attempt
    was given up (clock seconds). Returns the run once a lookup shows it, or ``None`` once the
    window (see :mod:`._http.visibility`) has passed without a sighting. ``learn``:
    whether a sighting teaches the window (``sent_at`` is the true send time).

    Raises:
        CreateOutcomeUnknownError: The filter is ignored or refused, or the last
            lookup failed: absence cannot be established.
    """
    try:
        found = await search(
            lambda: find(transport, client_ref, sent_at if learn else None),
            clock=transport.clock,
            visibility=transport.visibility,
            sent_at=sent_at,
            failed_at=failed_at,
            interval=transport.retry.lookup_interval,
            learn=learn,
        )
    except (LookupFailed, LookupRefused) as exc:
        raise _unknown(_why(exc), client_ref, idempotency_key, "/v1/runs") from _origin(exc)
    if found is not None:
        logger.info("Adopted run %s after an ambiguous create.", found.id)
    return found


def parse_created(transport: Transport, response: Response, *, path: str) -> Run:
    """The run a create's 2xx answer describes, its id checked once, here.

    Raises:
        APIResponseError: The body is not a run, or its id is missing, empty, not
            a string or absurd (``raw_id`` and ``body_excerpt`` say what came).
    """
    data = response.data
    raw = data.get("id", data.get("run_id")) if isinstance(data, dict) else None
    problem = run_id_problem(raw)
    if problem is None:
        try:
            return Run.model_validate(data)
        except pydantic.ValidationError as exc:
            problem = f"the body is not a run ({exc.error_count()} problem(s))"
    excerpt = transport.redact(json.dumps(data, default=str)[:_EXCERPT])
    shown: object = raw
    if not (raw is None or isinstance(raw, int | float)):  # a string, or a list or an object
        shown = transport.redact(raw if isinstance(raw, str) else json.dumps(raw, default=str))
        shown = shown[:_RAW_ID]
    raise APIResponseError(
        f"The create was answered {response.status} with an unusable run id: {problem}",
        raw_id=shown,
        body_excerpt=excerpt,
        status=response.status,
        request_id=response.request_id,
        method="POST",
        path=path,
    )


async def create_run(
    transport: Transport,
    model: str,
    body: dict[str, Any],
    *,
    idempotency_key: str,
    on_retry: RetryHook | None = None,
    gate: CreateGate | None = None,
    progress: CreateProgress | None = None,
) -> Run:
    """Create one run (``body`` carries its ``client_ref``); rules in the module doc.

    ``progress``, when given, is kept up to date as the create goes on.

    Raises:
        APIError: Not created, or (``CreateOutcomeUnknownError``) unknown.
    """
    path = _model_path(model)
    client_ref: str = body["client_ref"]
    headers = {"Idempotency-Key": idempotency_key}
    state = progress if progress is not None else CreateProgress()
    lookup = functools.partial(look_for, transport, client_ref, idempotency_key)

    def unknown(reason: str) -> APIError:
        return _unknown(reason, client_ref, idempotency_key, path)

    # Serialised once: every attempt sends the same bytes.
    payload = dump_json(body, floatless=body.keys() <= _FLOATLESS_KEYS)
    attempt = functools.partial(
        _attempt, transport, path, client_ref, (payload, headers), state, lookup, unknown
    )
    run = await with_retries(
        attempt,
        kind=CallKind.CREATE,
        retrying=transport.retrying,
        method="POST",
        path=path,
        reconcile=lookup,
        gate=gate,
        on_retry=on_retry,
        unknown=lambda exc: unknown(
            f"an attempt went unanswered, then it ended in {type(exc).__name__}"
        ),
    )
    transport.owners.own(run.id, client_ref)
    return run


async def _attempt(
    transport: Transport,
    path: str,
    client_ref: str,
    request: tuple[bytes, dict[str, str]],
    state: CreateProgress,
    lookup: Callable[[float, float], Awaitable[Run | None]],
    unknown: Callable[[str], APIError],
) -> Run:
    """One attempt of :func:`create_run`: its run, found again if its answer cannot be trusted.

    ``request`` is the serialised body and the headers, the same on every attempt.
    """
    sent_at = transport.clock.now()
    try:
        # A create that was sent is always read to the end, even if the caller
        # is cancelled meanwhile: its run id must never be lost (it is billed).
        with shielded():
            response = await _send(transport, path, request, state)
        run = parse_created(transport, response, path=path)
    except (APIResponseError, _CutOff2xx) as exc:
        # A 2xx means the run exists: recover it, never send again.
        found = await lookup(sent_at, transport.clock.now())
        if found is None:
            raise unknown("the API accepted it but its answer was unreadable") from exc
        return found
    doubt = transport.owners.doubt(run, client_ref)
    if doubt is None:
        transport.visibility.created(run.id, sent_at)
        return run
    # Created (2xx), but the run it names is not this create's own: the
    # server made one for this create too. Find it; never send again.
    state.untrusted = run.id
    found = await _look_for_own(lookup, client_ref, run, doubt, sent_at, transport.clock)
    if found is None:
        raise unknown(f"its answer named run {run.id}, but {doubt}")
    return found


async def _look_for_own(
    lookup: Callable[[float, float], Awaitable[Run | None]],
    client_ref: str,
    answered: Run,
    doubt: str,
    sent_at: float,
    clock: Clock,
) -> Run | None:
    """Look up the create ``client_ref`` whose answer named ``answered``, not its own run."""
    logger.warning(
        "The create with client_ref %s was answered with run %s, which is not this "
        "create's own (%s); looking it up by its client_ref.",
        client_ref,
        answered.id,
        doubt,
    )
    return await lookup(sent_at, clock.now())


async def _send(
    transport: Transport,
    path: str,
    request: tuple[bytes, dict[str, str]],
    progress: CreateProgress,
) -> Response:
    """Send one attempt; ``progress`` learns whether it may have made a run."""
    body, headers = request
    try:
        response = await transport.send("POST", path, body=body, headers=headers)
    except APIError as exc:
        if not not_created(exc):
            progress.maybe_created = True
        if isinstance(exc, APIConnectionError) and 200 <= (exc.status or 0) < 300:
            raise _CutOff2xx from exc  # a 2xx cut off: the run exists
        raise
    progress.maybe_created = True
    return response


def _origin(exc: Exception) -> BaseException:
    """The API's own error behind a failed lookup, when there is one."""
    return exc.__cause__ if isinstance(exc.__cause__, APIError) else exc


def _why(exc: Exception) -> str:
    return f"the lookup failed: {exc}" if isinstance(exc, LookupFailed) else str(exc)


def _unknown(reason: str, client_ref: str, idempotency_key: str, path: str) -> APIError:
    """The end of a create that may have made a run that could not be found."""
    return CreateOutcomeUnknownError(
        f"A create with client_ref {client_ref} may have been billed ({reason}) and the "
        "run was not found; look it up before creating it again",
        client_ref=client_ref,
        idempotency_key=idempotency_key,
        method="POST",
        path=path,
    )

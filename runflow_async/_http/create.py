"""Creating a run without ever paying for it twice.

Part of the HTTP layer (with :mod:`runflow_async._http.transport`). Each logical create
carries one ``Idempotency-Key`` and one ``client_ref`` on every attempt.

* Provably not created (429, 503 ``MODEL_UNAVAILABLE``, connection refused
  before sending): wait, then send again.
* Ambiguous (timeout, connection dropped after sending, any other 5xx, a 409
  on a repeat): wait, look the run up by ``client_ref`` and adopt it; send again
  (same key) only when the lookup proves it absent.
* Created but unreadable (a 2xx we cannot parse): look it up; never resend.
* Anything else (400/401/402/403/404/422): raise.

Runflow documents ``Idempotency-Key`` only on batches and never says that the
list filter matches ``client_ref``, so neither is trusted alone: a lookup whose
answer contains runs with another ``client_ref`` (the filter was ignored), or
that fails, ends in :class:`CreateOutcomeUnknownError` rather than a blind resend.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import quote

import anyio
import pydantic

from runflow_async._core.errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    CreateOutcomeUnknownError,
)
from runflow_async._core.filters import term
from runflow_async._core.models import Run, RunPage
from runflow_async._http.retry import CallKind, CreateGate, RetryHook, with_retries
from runflow_async._http.transport import Transport

__all__ = [
    "CreateGate",
    "client_ref_query",
    "create_run",
    "find_by_client_ref",
    "idempotency_key_for",
]

logger = logging.getLogger("runflow_async")


_KEY_NAMESPACE = uuid.UUID("6c1f0a52-8f1e-4c0e-9a43-2d7b5e0f9a11")


def idempotency_key_for(client_ref: str) -> str:
    """The ``Idempotency-Key`` of the create named ``client_ref``, the same every time.

    Derived rather than drawn, so that every attempt *and every resume* of one
    logical create (a dataset keeps its ``client_ref`` in the journal) sends
    the same key: a server that honours it replays the run instead of billing
    a second one, even when its list lags and a lookup misses.
    """
    return str(uuid.uuid5(_KEY_NAMESPACE, client_ref))


def client_ref_query(client_ref: str) -> str:
    """Return the list-filter ``q`` that matches one ``client_ref`` exactly."""
    return term("client_ref", client_ref)


def _model_path(model: str) -> str:
    return "/v1/models/" + "/".join(quote(part, safe="") for part in model.split("/")) + "/runs"


class _CutOff2xx(Exception):
    """A create was answered 2xx but its body was cut off: the run exists."""


async def find_by_client_ref(
    transport: Transport, client_ref: str, *, idempotency_key: str
) -> Run | None:
    """Return the run created with ``client_ref``, or ``None`` if provably absent.

    Raises:
        CreateOutcomeUnknownError: The lookup failed or the server ignored the filter.
    """
    params = {"q": client_ref_query(client_ref), "limit": "20", "sort_by": "created_at:desc"}
    unknown = {
        "client_ref": client_ref,
        "idempotency_key": idempotency_key,
        "method": "POST",
        "path": "/v1/runs",
    }
    try:
        response = await transport.request("GET", "/v1/runs", params=params)
        page = RunPage.model_validate(response.data)
    except (APIError, pydantic.ValidationError) as exc:
        raise CreateOutcomeUnknownError(
            f"A create with client_ref {client_ref} may have been billed and the lookup "
            "failed; look it up before creating it again",
            **unknown,
        ) from exc
    if any(run.client_ref != client_ref for run in page.items):
        raise CreateOutcomeUnknownError(
            f"A create with client_ref {client_ref} may have been billed and the API "
            "ignored the client_ref filter; look it up before creating it again",
            **unknown,
        )
    # client_refs we generate are unique per logical create; if a caller reused
    # one, the newest run with it is the best candidate (and no second bill).
    return page.items[0] if page.items else None


async def create_run(
    transport: Transport,
    model: str,
    body: dict[str, Any],
    *,
    idempotency_key: str,
    on_retry: RetryHook | None = None,
    gate: CreateGate | None = None,
) -> Run:
    """Create one run (``body`` carries its ``client_ref``); rules in the module doc.

    Raises:
        APIError: Not created, or (``CreateOutcomeUnknownError``) unknown.
    """
    path = _model_path(model)
    client_ref: str = body["client_ref"]
    headers = {"Idempotency-Key": idempotency_key}

    async def lookup() -> Run | None:
        found = await find_by_client_ref(transport, client_ref, idempotency_key=idempotency_key)
        if found is not None:
            logger.info("Adopted run %s after an ambiguous create.", found.id)
        return found

    async def attempt() -> Run:
        try:
            # A create that was sent is always read to the end, even if the caller
            # is cancelled meanwhile: its run id must never be lost (it is billed).
            with anyio.CancelScope(shield=True):
                try:
                    response = await transport.send("POST", path, json_body=body, headers=headers)
                except APIConnectionError as exc:
                    if exc.status is not None and 200 <= exc.status < 300:
                        raise _CutOff2xx from exc
                    raise
            return Run.model_validate(response.data)
        except (APIResponseError, pydantic.ValidationError, _CutOff2xx) as exc:
            # A 2xx means the run exists: recover it, never send again.
            found = await lookup()
            if found is None:
                reason = "the API accepted it but its answer was unreadable"
                raise _unknown(reason, client_ref, idempotency_key, path) from exc
            return found

    return await with_retries(
        attempt,
        kind=CallKind.CREATE,
        retrying=transport.retrying,
        method="POST",
        path=path,
        reconcile=lookup,
        gate=gate,
        on_retry=on_retry,
        unknown=lambda exc: _unknown(
            f"an attempt went unanswered, then it ended in {type(exc).__name__}",
            client_ref,
            idempotency_key,
            path,
        ),
    )


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

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
from typing import Any, Protocol
from urllib.parse import quote

import anyio
import pydantic

from runflow_async._core.errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    ConflictError,
    CreateOutcomeUnknownError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from runflow_async._core.filters import term
from runflow_async._core.models import Run, RunPage
from runflow_async._http.retry import RetryEvent, RetryHook, nominal_wait, report_retry
from runflow_async._http.transport import Transport

__all__ = ["CreateGate", "client_ref_query", "create_run", "find_by_client_ref"]

# A safety bound on 429s retried through a gate (each waits a shared cool-down).
MAX_GATED_THROTTLES = 100


class CreateGate(Protocol):
    """Lets a batch coordinate the rate-limit retries of its creates.

    With a gate, a 429 is reported to ``throttled`` and the retry waits in
    ``wait_to_retry`` (the batch's shared cool-down and concurrency window)
    instead of this create's own backoff; such retries do not use up
    ``max_attempts`` (a 429 proves nothing was created).
    """

    def throttled(self, retry_after: float | None) -> None:
        """A create was answered 429."""

    async def wait_to_retry(self) -> None:
        """Return when this create may try again; raise to give it up (nothing was created)."""


logger = logging.getLogger("runflow_async")


def client_ref_query(client_ref: str) -> str:
    """Return the list-filter ``q`` that matches one ``client_ref`` exactly."""
    return term("client_ref", client_ref)


def _model_path(model: str) -> str:
    return "/v1/models/" + "/".join(quote(part, safe="") for part in model.split("/")) + "/runs"


class _CutOff2xx(Exception):
    """A create was answered 2xx but its body was cut off: the run exists."""


def _not_created(exc: APIError) -> bool:
    if isinstance(exc, RateLimitError):
        return True
    if isinstance(exc, ServiceUnavailableError) and exc.code == "MODEL_UNAVAILABLE":
        return True
    return isinstance(exc, APIConnectionError) and not exc.sent


def _ambiguous(exc: APIError, attempt: int) -> bool:
    if _not_created(exc):
        return False
    if isinstance(exc, APIConnectionError | ServerError):
        return True
    # A 409 on a repeat means our own earlier attempt (same key) got there.
    return isinstance(exc, ConflictError) and attempt > 1


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
    """Create one run; see the module docstring for the retry rules.

    ``body`` must already carry its ``client_ref``. ``on_retry`` is told about
    each retry of this create; ``gate`` coordinates 429 retries across a batch.

    Raises:
        APIError: The create failed and was not billed, or (``CreateOutcomeUnknownError``)
            whether it was billed could not be established.
    """
    policy = transport.retry
    path = _model_path(model)
    client_ref: str = body["client_ref"]
    headers = {"Idempotency-Key": idempotency_key}
    started = anyio.current_time()
    check_first = False
    attempt = 0
    throttles = 0
    while True:
        attempt += 1
        if check_first:
            found = await find_by_client_ref(transport, client_ref, idempotency_key=idempotency_key)
            if found is not None:
                logger.info("Adopted run %s after an ambiguous create.", found.id)
                return found
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
            found = await find_by_client_ref(transport, client_ref, idempotency_key=idempotency_key)
            if found is None:
                raise CreateOutcomeUnknownError(
                    f"The API accepted a create with client_ref {client_ref} but its answer "
                    "was unreadable and the run could not be found",
                    client_ref=client_ref,
                    idempotency_key=idempotency_key,
                    method="POST",
                    path=path,
                ) from exc
            return found
        except APIError as exc:
            if isinstance(exc, RateLimitError) and gate and throttles < MAX_GATED_THROTTLES:
                throttles += 1
                attempt -= 1  # a 429 proves nothing was created: not an attempt used up
                gate.throttled(exc.retry_after)
                if on_retry is not None:
                    on_retry(RetryEvent("POST", path, attempt + 1, exc.retry_after or 0.0, exc))
                await gate.wait_to_retry()
                continue
            ambiguous = _ambiguous(exc, attempt)
            if not (ambiguous or _not_created(exc)):
                raise
            elapsed = anyio.current_time() - started
            if attempt >= policy.max_attempts or elapsed >= policy.max_time:
                if not ambiguous:
                    raise
                # Last chance to find it; if it is provably absent, the error stands.
                found = await find_by_client_ref(
                    transport, client_ref, idempotency_key=idempotency_key
                )
                if found is not None:
                    return found
                raise
            check_first = check_first or ambiguous
            nominal = nominal_wait(policy, attempt, exc)
            report_retry(
                transport.on_retry, policy, "POST", path, attempt, nominal * policy.time_scale, exc
            )
            if on_retry is not None:
                on_retry(RetryEvent("POST", path, attempt, nominal, exc))
            await anyio.sleep(nominal * policy.time_scale)

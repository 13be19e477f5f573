"""Callback deliveries: the signed payload and the record ``GET /v1/runs/{id}/callback`` shows.

The payload follows the model pages' "Callback payload" table and concepts/callbacks:
``{event, run_id, status, output, duration_ms, created_at, completed_at, metadata}``,
serialized once, compactly, and signed over exactly those bytes (with the SDK's own
:func:`runflow_async._webhooks.sign`, so the emulator and a receiver agree). The record follows
https://docs.runflow.io/api-reference/runs/get-callback-delivery-history. Every time
in it is emulated time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from runflow_async._webhooks import REQUEST_ID_HEADER, SIGNATURE_HEADER
from runflow_async.emulator._clock import EmulatedClock

__all__ = [
    "MAX_ATTEMPTS",
    "PAYLOAD_FIELDS",
    "RETRY_WAITS",
    "Attempt",
    "Delivery",
    "DeliveryStatus",
    "payload",
]

MAX_ATTEMPTS = 3
RETRY_WAITS = (1.0, 2.0)
"""Emulated seconds before the second and the third attempt (model pages: "1s, 2s")."""

DeliveryStatus = Literal["pending", "delivered", "failed"]

_EVENTS: Mapping[str, str] = {
    "succeeded": "run.completed",
    "failed": "run.failed",
    "canceled": "run.cancelled",  # the run says "canceled", the event "cancelled"
}
_PAYLOAD_FIELDS = ("status_code", "output", "duration_ms", "created_at", "completed_at")
PAYLOAD_FIELDS: frozenset[str] = frozenset(_PAYLOAD_FIELDS)
"""The run fields a payload is built from (a projection renders only those)."""
_KEPT_BODY = 256  # characters of a receiver's answer kept in the history


def payload(
    run_id: str, view: Mapping[str, Any], metadata: Any, *, with_output: bool = True
) -> tuple[str, bytes]:
    """Return the event name and the serialized body of a terminal run's callback.

    Args:
        run_id: The run id.
        view: The run as the API shows it now (at least ``PAYLOAD_FIELDS``).
        metadata: The run's ``metadata``, verbatim.
        with_output: ``False`` sends ``"output": null`` (the docs: "may be null").
    """
    status, output, duration_ms, created_at, completed_at = (view[k] for k in _PAYLOAD_FIELDS)
    event = _EVENTS[status]
    body = {
        "event": event,
        "run_id": run_id,
        "status": status,
        "output": output if with_output else None,
        "duration_ms": duration_ms,
        "created_at": created_at,
        "completed_at": completed_at,
        "metadata": metadata,
    }
    return event, json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP POST of a delivery.

    Attributes:
        number: 1-based attempt number.
        request_id: The ``Runflow-Request-Id`` it carried.
        started: Emulated time it was sent.
        elapsed: Emulated seconds until the answer (or the error).
        status: HTTP status answered, ``None`` for a timeout or connection error.
        body: Start of the answer's body, if any.
        error: What went wrong without an answer.
        reason: ``TIMEOUT`` or ``CONNECTION_ERROR`` when there was no answer.
    """

    number: int
    request_id: str
    started: float
    elapsed: float
    status: int | None
    body: str | None
    error: str | None
    reason: str | None = None

    def to_api(self) -> dict[str, Any]:
        """Return the attempt as the delivery history shows it."""
        return {
            "attempt_number": self.number,
            "status_code": self.status,
            "response_body": self.body,
            "response_time_ms": round(self.elapsed * 1000),
            "error_message": self.error,
            "request_id": self.request_id,
            "created_at": EmulatedClock.iso(self.started),
        }


@dataclass(slots=True, eq=False)
class Delivery:
    """One callback of one run: a frozen signed body and what its attempts got.

    Attributes:
        id: Its UUID.
        run_id: The run it reports on.
        run_seq: That run's creation index.
        url: Where it goes.
        event: ``run.completed``, ``run.failed`` or ``run.cancelled``.
        body: The exact bytes sent on every attempt.
        signature: ``Runflow-Signature`` value, ``None`` when no secret exists.
        secret_id: Id of the secret that signed it.
        automatic: Sent because the run ended (not asked for through the API).
        created: Emulated creation time.
        status: ``pending`` until delivered or given up.
        next_at: Emulated time of the next attempt, if one is due.
        held: Held back by a ``reorder`` fault.
        failure: ``(failure_reason_code, failure_detail)`` once given up.
        attempts: Attempts made so far.
        subject: The key its subject's id is shown under: ``run_id``, or
            ``batch_id`` for a batch's callback (whose ``run_seq`` is -1).
        also_notices: Creation indexes of the runs a delivered callback also
            shows terminal (a batch's children).
    """

    id: str
    run_id: str
    run_seq: int
    url: str
    event: str
    body: bytes
    signature: str | None
    secret_id: str | None
    automatic: bool
    created: float
    status: DeliveryStatus = "pending"
    next_at: float | None = None
    held: bool = False
    failure: tuple[str, str] | None = None
    attempts: list[Attempt] = field(default_factory=list)
    subject: str = "run_id"
    also_notices: tuple[int, ...] = ()

    def headers(self, request_id: str) -> dict[str, str]:
        """Return the headers of one attempt."""
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id}
        if self.signature is not None:
            headers[SIGNATURE_HEADER] = self.signature
        return headers

    def record(self, attempt: Attempt, next_at: float | None) -> None:
        """Add an attempt; schedule the next at ``next_at``, or settle the delivery."""
        self.attempts.append(attempt)
        self.next_at = next_at
        if next_at is not None:
            return
        if attempt.status is not None and 200 <= attempt.status < 300:
            self.status = "delivered"
            return
        self.status = "failed"
        if attempt.status is None:
            self.failure = (attempt.reason or "CONNECTION_ERROR", attempt.error or "")
        else:
            self.failure = ("HTTP_ERROR", f"The receiver answered HTTP {attempt.status}.")

    def to_api(self) -> dict[str, Any]:
        """Return the delivery as ``GET /v1/runs/{id}/callback`` shows it."""
        reason, detail = self.failure or (None, None)
        return {
            "id": self.id,
            self.subject: self.run_id,
            "event": self.event,
            "status_code": self.status,
            "attempt_count": len(self.attempts),
            "max_attempts": MAX_ATTEMPTS,
            "next_attempt_at": None if self.next_at is None else EmulatedClock.iso(self.next_at),
            "signing_secret_id": self.secret_id,
            "is_automatic": self.automatic,
            "failure_reason_code": reason,
            "failure_detail": detail,
            "created_at": EmulatedClock.iso(self.created),
            "attempts": [attempt.to_api() for attempt in self.attempts],
        }

    @staticmethod
    def kept_body(text: str) -> str | None:
        """Return what the history keeps of a receiver's answer (``None`` if empty)."""
        return text[:_KEPT_BODY] or None

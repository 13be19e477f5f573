"""The exception tree.

::

    RunflowError
    ├── ConfigurationError (ValueError, TypeError) bad settings, an unknown option
    ├── ClientClosedError (RuntimeError)         the client was used after aclose()
    ├── RequestValidationError (ValueError, TypeError) bad request, caught before sending
    ├── APIError                                 the API call failed
    │   ├── APIConnectionError                   no usable response
    │   │   ├── APITimeoutError (TimeoutError)
    │   │   └── TLSVerificationError             the server's certificate did not verify
    │   ├── APIResponseError                     a response we cannot read
    │   │   └── DownloadError                    a download that is not the image
    │   ├── CreateOutcomeUnknownError            a create may or may not have happened
    │   └── APIStatusError                       an HTTP error status
    │       ├── BadRequestError                  400
    │       ├── AuthenticationError              401
    │       ├── InsufficientCreditError          402
    │       ├── PermissionDeniedError            403
    │       ├── NotFoundError                    404
    │       ├── ConflictError                    409
    │       ├── UnprocessableEntityError         422
    │       │   ├── AssetRefRefusedError         a runflow://assets ref refused (_core/assets.py)
    │       │   └── BatchRouteRefusedError       the batch route made nothing
    │       ├── RateLimitError                   429
    │       └── ServerError                      5xx
    │           └── ServiceUnavailableError      503
    ├── RunError                                 the run itself did not succeed
    │   ├── RunFailedError
    │   ├── RunCanceledError
    │   ├── RunTimeoutError (TimeoutError)       the wait ended; the run may still finish
    │   └── RunAbandonedError                    the batch stopped watching a created run
    ├── BudgetExceededError                      over max_cost_usd; nothing was submitted
    ├── NotSubmittedError                        a batch item that was never created
    └── WebhookVerificationError                 a callback whose signature does not verify

Every ``APIError`` carries ``request_id``, ``retryable`` and ``retry_after``;
every ``RunError`` carries the :class:`~runflow_async.Run`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from decimal import Decimal

    from runflow_async._core.estimate import Estimate
    from runflow_async._core.models import Run

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchRouteRefusedError",
    "BudgetExceededError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "CreateOutcomeUnknownError",
    "DownloadError",
    "InsufficientCreditError",
    "NotFoundError",
    "NotSubmittedError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestValidationError",
    "RunAbandonedError",
    "RunCanceledError",
    "RunError",
    "RunFailedError",
    "RunTimeoutError",
    "RunflowError",
    "ServerError",
    "ServiceUnavailableError",
    "TLSVerificationError",
    "UnprocessableEntityError",
    "WebhookVerificationError",
]


class RunflowError(Exception):
    """The root of every error this package raises."""


class ConfigurationError(RunflowError, ValueError, TypeError):
    """The client was configured wrongly (missing key, bad URL, bad policy, unknown option).

    Also a ``TypeError``: an unknown or misspelled keyword (``unknown option
    'max_concurency'; did you mean 'max_concurrency'?``) or a value of the wrong
    type is what Python itself reports as a ``TypeError``, and catching either
    class catches it. It stays a ``ValueError`` for nonsensical values.
    """


class ClientClosedError(RunflowError, RuntimeError):
    """The client was used after it was closed; create a new one."""


class RequestValidationError(RunflowError, ValueError, TypeError):
    """A request was invalid; nothing was sent.

    Also a ``TypeError``, like :class:`ConfigurationError`: an unknown field
    (``unknown option 'sede'; did you mean 'seed'?``) is what Python reports so.

    Attributes:
        errors: One ``{"field", "message"}`` mapping per problem.
    """

    def __init__(self, message: str, *, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


class APIError(RunflowError):
    """An API call failed.

    Attributes:
        message: A one-sentence description.
        method: The HTTP method of the failed call.
        path: The URL path of the failed call (no query string, no host).
        status: The HTTP status, when one was received.
        code: The API's stable error code, when it sent one.
        errors: Field-level details (422), as sent.
        request_id: The server's request id, for support.
        retryable: Whether retrying the same call may succeed.
        retry_after: Seconds the server asked us to wait, if it said.
    """

    retryable_by_default = False

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        path: str = "",
        status: int | None = None,
        code: str | None = None,
        errors: Sequence[Any] | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.errors = list(errors or [])
        self.request_id = request_id
        self.retryable = self.retryable_by_default if retryable is None else retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" ({self.method} {self.path})" if self.method else ""
        rid = f" [request_id={self.request_id}]" if self.request_id else ""
        return f"{self.message}{where}{rid}"


class APIConnectionError(APIError):
    """No usable response arrived (refused, reset, dropped).

    Attributes:
        sent: Whether the request may have reached the server (``False``: nothing was sent).
    """

    retryable_by_default = True

    def __init__(self, message: str, *, sent: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.sent = sent


class APITimeoutError(APIConnectionError, TimeoutError):
    """The request took longer than its timeout."""


class TLSVerificationError(APIConnectionError):
    """The server's TLS certificate did not verify: nothing was sent, and nothing will be."""

    retryable_by_default = False


class APIResponseError(APIError):
    """A response arrived but could not be read (not JSON, wrong shape, an absurd id).

    Attributes:
        raw_id: The id the response carried, as sent, when it was the problem.
        body_excerpt: The start of the body, when it helps (never the API key).
    """

    def __init__(
        self, message: str, *, raw_id: object = None, body_excerpt: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.raw_id = raw_id
        self.body_excerpt = body_excerpt


class DownloadError(APIResponseError):
    """A download answered, but not with the image: nothing was left on disk.

    ``code`` says why: ``"not_an_image"`` (the body's magic bytes are not PNG,
    JPEG or WebP, e.g. a JSON or HTML page served with 200), or
    ``"too_large"`` (the body is over the download's ``max_bytes``). Reading
    the run again gives fresh URLs; the run itself is not created again.
    """


class CreateOutcomeUnknownError(APIError):
    """A create may have been billed, and the client could not find out.

    Look the run up later by ``client_ref`` before creating it again.

    Attributes:
        client_ref: The ``client_ref`` the create carried.
        idempotency_key: The ``Idempotency-Key`` the create carried.
    """

    def __init__(
        self, message: str, *, client_ref: str, idempotency_key: str, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.client_ref = client_ref
        self.idempotency_key = idempotency_key


class APIStatusError(APIError):
    """The API answered with an HTTP error status."""


class BadRequestError(APIStatusError):
    """400: the request was malformed."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid."""


class InsufficientCreditError(APIStatusError):
    """402 ``INSUFFICIENT_CREDIT``: the organisation is out of credit."""


class PermissionDeniedError(APIStatusError):
    """403: the key lacks a scope, or the account may not do this."""


class NotFoundError(APIStatusError):
    """404: no such model or run (another organisation's runs also 404)."""


class ConflictError(APIStatusError):
    """409: a conflicting request, such as an ``Idempotency-Key`` reused with another body."""


class UnprocessableEntityError(APIStatusError):
    """422: the API rejected the input; ``errors`` names the fields."""


class BatchRouteRefusedError(UnprocessableEntityError):
    """422 on the batch route naming no item (not batch-capable, body shape): nothing was made."""


class RateLimitError(APIStatusError):
    """429 ``RATE_LIMITED``: slow down."""

    retryable_by_default = True


class ServerError(APIStatusError):
    """5xx: the API failed."""

    retryable_by_default = True


class ServiceUnavailableError(ServerError):
    """503: the service or the model's provider (``MODEL_UNAVAILABLE``) is down."""


class RunError(RunflowError):
    """A run ended without succeeding, or the wait for it ended.

    Attributes:
        run: The run as last seen.
        run_id: The run's id.
    """

    def __init__(self, message: str, *, run: Run) -> None:
        super().__init__(message)
        self.run = run
        self.run_id = run.id


class RunFailedError(RunError):
    """The run ended ``failed`` (or ``errored``).

    Attributes:
        failure_code: The API's failure code, if any.
        failure_message: The API's failure message, if any.
        failure_stage: The stage that failed, if known.
        error_code: ``error.code`` of the older failure shape, when sent.
        error_message: ``error.message`` of the older failure shape, when sent.
    """

    def __init__(self, message: str, *, run: Run) -> None:
        super().__init__(message, run=run)
        self.failure_code = run.failure_code
        self.failure_message = run.failure_message
        self.failure_stage = run.failure_stage
        self.error_code = run.error_code
        self.error_message = run.error_message


class RunCanceledError(RunError):
    """The run ended ``canceled``."""


class RunTimeoutError(RunError, TimeoutError):
    """The wait deadline passed; the run may still finish and be billed.

    Fetch it later with :meth:`RunflowClient.get_run` using ``run_id``.
    """


class RunAbandonedError(RunError):
    """A batch stopped (cancelled or ``fail_fast``) while this run was in flight.

    The run keeps going on Runflow and may be billed (there is no public cancel);
    collect it later with :meth:`RunflowClient.wait` using ``run_id``.
    """


class BudgetExceededError(RunflowError):
    """Submitting would exceed ``max_cost_usd``; nothing of it was submitted.

    Attributes:
        estimate: The estimate of what was refused.
        max_cost_usd: The cap.
        committed_usd: Already spent or reserved by the batch.
    """

    def __init__(
        self, message: str, *, estimate: Estimate, max_cost_usd: Decimal, committed_usd: Decimal
    ) -> None:
        super().__init__(message)
        self.estimate = estimate
        self.max_cost_usd = max_cost_usd
        self.committed_usd = committed_usd


class NotSubmittedError(RunflowError):
    """A batch item was never created, so nothing was billed for it.

    Attributes:
        reason: ``"budget"``, ``"insufficient_credit"``, ``"fail_fast"``,
            ``"cancelled"``, or ``"upload"`` (an edit's local image did not upload).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class WebhookVerificationError(RunflowError):
    """A callback's ``Runflow-Signature`` did not verify; treat the body as forged.

    Attributes:
        reason: ``"missing"`` (no header), ``"malformed"`` (not 64 hex digits),
            ``"no_secrets"`` (nothing to verify with) or ``"mismatch"`` (no
            secret signs this body).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

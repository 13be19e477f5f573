"""The one retry engine: which failures are retried (one table), how long to wait, the loop.

Every retried call in the package goes through :func:`with_retries`: reads
(:meth:`Transport.request`), creates (:mod:`._http.create`) and the unbilled
asset calls (:mod:`._http.assets`). What happens after a failure is decided
by :func:`decide`, from the kind of call and the error:

============  ==========================================  ==========
call          error                                       action
============  ==========================================  ==========
read          ``retryable`` (429, 5xx, network, timeout)  retry
unbilled      ``retryable`` (asset steps: never charged)  retry
create        provably not created: 429, 503              retry
              ``MODEL_UNAVAILABLE``, refused before sent
create        ambiguous: sent and unanswered, other 5xx,  reconcile
              a 409 on a repeat (our own earlier try)
any           anything else (400/401/402/403/404/422...)  raise
============  ==========================================  ==========

*Reconcile* means: look the run up, again and again over the visibility
window (:mod:`._http.visibility`), adopt it if found, and send again (same
key) only once the whole window passed without a sighting; once more when the
call ends, and then a miss ends in ``CreateOutcomeUnknownError``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Generic, Protocol, TypeVar

import backoff

from runflow_async._core.clock import Clock
from runflow_async._core.config import RetryPolicy
from runflow_async._core.errors import (
    APIConnectionError,
    APIError,
    ConflictError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TLSVerificationError,
)

__all__ = [
    "Action",
    "CallKind",
    "CreateGate",
    "RetryEvent",
    "RetryHook",
    "decide",
    "nominal_wait",
    "parse_retry_after",
    "with_retries",
]

logger = logging.getLogger("runflow_async")

# A safety bound on 429s retried through a gate (each waits a shared cool-down).
MAX_GATED_THROTTLES = 100

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One retry about to happen, as reported to a ``on_retry`` hook.

    Attributes:
        method: The HTTP method retried.
        path: The URL path retried (no host, no query string).
        attempt: The attempt that just failed (1 for the first).
        wait: Seconds the policy chose before the next attempt, in the
            server's (emulated) seconds.
        error: The error that caused the retry.
    """

    method: str
    path: str
    attempt: int
    wait: float
    error: APIError


RetryHook = Callable[[RetryEvent], None]
"""A synchronous, observe-only callback for retries."""


class CreateGate(Protocol):
    """Lets a batch coordinate the rate-limit retries of its creates.

    With a gate, a 429 is reported to ``throttled`` and the retry waits in
    ``wait_to_retry`` (the batch's shared cool-down and concurrency window)
    instead of this call's own backoff; such retries do not use up
    ``max_attempts`` (a 429 proves nothing was created).
    """

    def throttled(self, retry_after: float | None) -> None:
        """A create was answered 429."""

    async def wait_to_retry(self) -> None:
        """Return when this create may try again; raise to give it up (nothing was created)."""


class CallKind(enum.Enum):
    """What a retried call costs if it is repeated."""

    READ = "read"
    UNBILLED = "unbilled"
    CREATE = "create"


class Action(enum.Enum):
    """What to do after a failed attempt."""

    RETRY = "retry"
    RECONCILE = "reconcile"
    RAISE = "raise"


def not_created(exc: APIError) -> bool:
    """Whether ``exc`` proves that a create did not create anything."""
    if isinstance(exc, RateLimitError):
        return True
    if isinstance(exc, ServiceUnavailableError) and exc.code == "MODEL_UNAVAILABLE":
        return True
    return isinstance(exc, APIConnectionError) and not exc.sent


def decide(kind: CallKind, exc: APIError, attempt: int) -> Action:
    """The table in the module docstring."""
    if kind is not CallKind.CREATE:
        return Action.RETRY if exc.retryable else Action.RAISE
    if isinstance(exc, TLSVerificationError):
        return Action.RAISE  # nothing was sent, and a retry would be refused the same way
    if not_created(exc):
        return Action.RETRY
    if isinstance(exc, APIConnectionError | ServerError):
        return Action.RECONCILE
    # A 409 on a repeat means our own earlier attempt (same key) got there.
    if isinstance(exc, ConflictError) and attempt > 1:
        return Action.RECONCILE
    return Action.RAISE


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delay-seconds or an HTTP date.

    Returns:
        Seconds to wait (never negative), or ``None`` if absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN/inf
        return None
    return max(0.0, seconds)


def nominal_wait(policy: RetryPolicy, attempt: int, error: BaseException | None) -> float:
    """Return the wait (emulated seconds) after failed attempt number ``attempt`` (1-based).

    A server's ``Retry-After`` wins, capped at ``max_retry_after``. Otherwise the
    ceiling doubles from ``initial_wait`` up to ``max_wait`` (``backoff.expo``)
    and the wait is drawn from ``[0, ceiling]`` (full jitter). A 429 without
    ``Retry-After`` draws from ``[ceiling/2, ceiling]`` so that it always
    backs off noticeably.
    """
    retry_after: float | None = getattr(error, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, policy.max_retry_after)
    ceilings = backoff.expo(base=2, factor=policy.initial_wait, max_value=policy.max_wait)
    next(ceilings)  # backoff's generators are primed with one value
    ceiling = float(next(c for n, c in enumerate(ceilings, 1) if n >= attempt))
    if not policy.jitter:
        return ceiling
    low = ceiling / 2 if isinstance(error, RateLimitError) else 0.0
    return random.uniform(low, ceiling)


def _report(
    hooks: Sequence[RetryHook | None],
    policy: RetryPolicy,
    event: RetryEvent,
    *,
    log: bool,
    lookup: bool = False,
) -> None:
    if log and lookup:
        logger.info(
            "Looking up %s %s after %s (attempt %d of %d) before sending it again.",
            event.method,
            event.path,
            type(event.error).__name__,
            event.attempt,
            policy.max_attempts,
        )
    elif log:
        logger.info(
            "Retrying %s %s in %.3fs after %s (attempt %d of %d).",
            event.method,
            event.path,
            event.wait,
            type(event.error).__name__,
            event.attempt,
            policy.max_attempts,
        )
    for hook in hooks:
        if hook is not None:
            hook(event)


@dataclass(frozen=True, slots=True)
class Retrying:
    """Where a retried call reports and how long it may keep trying."""

    policy: RetryPolicy
    clock: Clock
    hook: RetryHook | None = None


async def with_retries(
    attempt: Callable[[], Awaitable[_T]],
    *,
    kind: CallKind,
    retrying: Retrying,
    method: str,
    path: str,
    max_attempts: int | None = None,
    reconcile: Callable[[float, float], Awaitable[_T | None]] | None = None,
    gate: CreateGate | None = None,
    on_retry: RetryHook | None = None,
    first_error: APIError | None = None,
    unknown: Callable[[APIError], APIError] | None = None,
) -> _T:
    """Call ``attempt`` until it succeeds or :func:`decide` says to stop; see the module doc.

    ``reconcile(sent_at, failed_at)`` looks for what an ambiguous attempt made until
    it proves it absent (``None``); only then is the next one sent. No later answer
    proves nothing was made: unless a last ``reconcile`` finds it, the call ends in
    ``unknown(error)``. ``gate`` takes over 429 waits.
    """
    policy, clock = retrying.policy, retrying.clock
    limit = min(policy.max_attempts, max_attempts or policy.max_attempts)
    loop = asyncio.get_running_loop()  # loop.time() is anyio.current_time(), minus the lookup
    started, tries, throttles = loop.time(), 0, 0
    ambiguous: tuple[float, float] | None = None  # the latest ambiguous attempt's times
    failed, sent_at = first_error, clock.now() if first_error is not None else 0.0
    while True:
        tries += 1
        if failed is None:
            sent_at = clock.now()
            try:
                return await attempt()
            except APIError as error:
                failed = error
        times, exc, failed = (sent_at, clock.now()), failed, None  # the latest failure
        action = decide(kind, exc, tries)
        ambiguous = times if action is Action.RECONCILE else ambiguous
        finish = _Finish(exc, ambiguous, reconcile, unknown)  # how it ends if not sent again
        if gate is not None and isinstance(exc, RateLimitError) and throttles < MAX_GATED_THROTTLES:
            throttles += 1
            tries -= 1  # a 429 proves nothing was created: no attempt used up
            event = RetryEvent(method, path, tries + 1, exc.retry_after or 0.0, exc)
            if (gave_up := await _gated(gate, exc, event, on_retry)) is not None:
                return await finish.end(gave_up)  # still unknown if it was ambiguous
            continue
        ended = tries >= limit or loop.time() - started >= policy.max_time
        if action is Action.RAISE or ended:
            return await finish.end(exc)
        if action is Action.RECONCILE and reconcile is not None:
            event = RetryEvent(method, path, tries, 0.0, exc)
            _report((retrying.hook, on_retry), policy, event, log=True, lookup=True)
            if (found := await reconcile(*times)) is not None:
                return found
            if loop.time() - started >= policy.max_time:
                return await finish.end(exc)  # proven absent, but no time left to send again
            continue  # proven absent: send again, with the same key
        event = RetryEvent(method, path, tries, nominal_wait(policy, tries, exc), exc)
        _report((retrying.hook, on_retry), policy, event, log=True)
        await clock.sleep(event.wait)


@dataclass(frozen=True, slots=True)
class _Finish(Generic[_T]):
    """How a call that will not be sent again ends, given its last error."""

    error: APIError
    ambiguous: tuple[float, float] | None
    reconcile: Callable[[float, float], Awaitable[_T | None]] | None
    unknown: Callable[[APIError], APIError] | None

    async def end(self, cause: BaseException) -> _T:
        """Raise ``cause``, unless an earlier attempt was ambiguous: then adopt or end unknown."""
        if self.ambiguous is not None and self.reconcile is not None:
            # Only a lookup that finds it ends well; a miss proves nothing more
            # than it did (lists lag), so the outcome stays unknown.
            if (found := await self.reconcile(*self.ambiguous)) is not None:
                return found
            if self.unknown is not None:
                raise self.unknown(self.error) from cause
        raise cause


async def _gated(
    gate: CreateGate, exc: RateLimitError, event: RetryEvent, hook: RetryHook | None
) -> Exception | None:
    """A 429 through a gate: report it, then wait where the gate says; what gave it up, if so."""
    gate.throttled(exc.retry_after)
    if hook is not None:
        hook(event)
    try:
        await gate.wait_to_retry()
    except Exception as gave_up:  # the gate gives the call up: it is not sent again
        return gave_up
    return None

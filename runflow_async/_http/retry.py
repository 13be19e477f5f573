"""Retry timing for the HTTP layer: backoff waits, ``Retry-After`` and retry events.

Used by :mod:`runflow_async._http.transport` (reads) and :mod:`runflow_async._http.create`
(creates); nothing else in the package retries.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from runflow_async._core.config import RetryPolicy
from runflow_async._core.errors import APIError, RateLimitError

__all__ = ["RetryEvent", "RetryHook", "parse_retry_after", "wait_generator"]

logger = logging.getLogger("runflow_async")


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One retry about to happen, as reported to a ``on_retry`` hook.

    Attributes:
        method: The HTTP method retried.
        path: The URL path retried (no host, no query string).
        attempt: The attempt that just failed (1 for the first).
        wait: Seconds the policy chose before the next attempt, before
            ``time_scale`` is applied.
        error: The error that caused the retry.
    """

    method: str
    path: str
    attempt: int
    wait: float
    error: APIError


RetryHook = Callable[[RetryEvent], None]
"""A synchronous, observe-only callback for retries."""


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
    """Return the unscaled wait after failed attempt number ``attempt`` (1-based).

    A server's ``Retry-After`` wins, capped at ``max_retry_after``. Otherwise the
    ceiling doubles from ``initial_wait`` up to ``max_wait`` and the wait is drawn
    from ``[0, ceiling]`` (full jitter). A 429 without ``Retry-After`` draws from
    ``[ceiling/2, ceiling]`` so that it always backs off noticeably.
    """
    retry_after: float | None = getattr(error, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, policy.max_retry_after)
    ceiling = min(policy.max_wait, policy.initial_wait * 2.0 ** (attempt - 1))
    if not policy.jitter:
        return ceiling
    low = ceiling / 2 if isinstance(error, RateLimitError) else 0.0
    return random.uniform(low, ceiling)


def wait_generator(policy: RetryPolicy) -> Generator[float, Any, None]:
    """A ``backoff`` wait generator that sees each exception (``backoff`` sends it in).

    Yields scaled seconds. ``backoff`` primes it with ``None`` first.
    """
    error = yield 0.0
    attempt = 1
    while True:
        error = yield nominal_wait(policy, attempt, error) * policy.time_scale
        attempt += 1


def report_retry(
    hook: RetryHook | None,
    policy: RetryPolicy,
    method: str,
    path: str,
    attempt: int,
    scaled_wait: float,
    error: APIError,
) -> None:
    """Log a retry and pass it to the user's hook."""
    wait = scaled_wait / policy.time_scale if policy.time_scale else 0.0
    logger.info(
        "Retrying %s %s in %.3fs after %s (attempt %d of %d).",
        method,
        path,
        wait,
        type(error).__name__,
        attempt,
        policy.max_attempts,
    )
    if hook is not None:
        hook(RetryEvent(method=method, path=path, attempt=attempt, wait=wait, error=error))

"""Per-organization rate limits on creates: a concurrency cap and a token bucket.

One emulator is one organization. Both limits are checked after a create has been
validated and credit-checked, just before the run would be stored, so a refused
create stores nothing and an invalid one spends no token. The cap is checked
first, so a create it refuses spends no token either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from runflow_async.emulator._config import EmulatorConfig

__all__ = ["RateLimiter", "TokenBucket"]


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per emulated second; it starts full."""

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = 0.0

    def take(self, now: float) -> bool:
        """Spend one token at emulated time ``now``; ``False`` if none is left."""
        elapsed = max(0.0, now - self._updated)
        tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._updated = max(now, self._updated)
        allowed = tokens >= 1.0
        self._tokens = tokens - 1.0 if allowed else tokens
        return allowed


class RateLimiter:
    """Decides whether a create may go ahead, from the configured limits.

    Attributes:
        headers: Headers of every rate-limit answer (``Retry-After`` if configured).
    """

    __slots__ = ("_bucket", "_bucket_refusal", "_max_in_flight", "headers")

    def __init__(self, config: EmulatorConfig) -> None:
        self._max_in_flight = config.max_in_flight_runs
        rate, burst = config.create_rate_per_second, config.create_burst
        self._bucket = None if rate is None else TokenBucket(rate, burst)
        self._bucket_refusal = (
            f"Rate limit exceeded: at most {rate} creates per second, {burst} at once."
        )
        after = config.rate_limit_retry_after
        self.headers: Mapping[str, str] | None = (
            None if after is None else {"Retry-After": str(math.ceil(after))}
        )

    def refusal(self, in_flight: int, now: float) -> str | None:
        """Return why a create is refused now, or ``None`` (spending a token) if it is not.

        Args:
            in_flight: Runs not yet terminal at ``now``.
            now: Emulated time.
        """
        cap = self._max_in_flight
        if cap is not None and in_flight >= cap:
            return f"Rate limit exceeded: {in_flight} runs in flight, at most {cap} allowed."
        bucket = self._bucket
        if bucket is not None and not bucket.take(now):
            return self._bucket_refusal
        return None

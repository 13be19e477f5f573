"""Configuration of the emulator: one frozen dataclass for the server, one for random faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from runflow_async._pricing import PricingPolicy

__all__ = ["FAULTABLE_ROUTES", "EmulatorConfig", "FaultRates"]

FAULTABLE_ROUTES: frozenset[str] = frozenset({"create", "get_run", "list_runs", "file", "health"})
"""Routes a fault can target; ``counters`` is the control plane and is never faulted."""


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Seeded random faults; every rate is a probability per request of an applicable route.

    The primary rates (``rate_429``, ``rate_5xx``, ``rate_drop``, ``rate_lost_create``,
    ``rate_slow``) are mutually exclusive outcomes of one draw, so their sum must not
    exceed 1.

    Attributes:
        rate_429: Fraction of requests answered ``429 RATE_LIMITED``.
        rate_429_without_retry_after: Fraction of those 429s sent without ``Retry-After``.
        retry_after_seconds: Value of the ``Retry-After`` header when one is sent. It is
            what the server says, not scaled by ``time_scale``.
        rate_5xx: Fraction of requests answered with a server error (502 HTML or 503 JSON).
        rate_5xx_html: Fraction of those server errors that are an HTML 502 page.
        rate_drop: Fraction of requests whose connection is closed without a response.
        rate_lost_create: Fraction of creates that store the run and then lose the
            response (a 502 page), the ambiguous case.
        rate_slow: Fraction of requests delayed by ``slow_seconds`` before answering.
        slow_seconds: Delay of a slow request, in emulated seconds.
        applies_to: Routes that draw (see ``FAULTABLE_ROUTES``).
    """

    rate_429: float = 0.0
    rate_429_without_retry_after: float = 0.5
    retry_after_seconds: float = 1.0
    rate_5xx: float = 0.0
    rate_5xx_html: float = 0.5
    rate_drop: float = 0.0
    rate_lost_create: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 1.0
    applies_to: frozenset[str] = frozenset({"create", "get_run", "list_runs"})

    def __post_init__(self) -> None:
        for name in (
            "rate_429",
            "rate_429_without_retry_after",
            "rate_5xx",
            "rate_5xx_html",
            "rate_drop",
            "rate_lost_create",
            "rate_slow",
        ):
            _check_fraction(name, getattr(self, name))
        if self.total > 1.0:
            raise ValueError(f"the primary fault rates add up to {self.total}, more than 1")
        if self.retry_after_seconds < 0 or self.slow_seconds < 0:
            raise ValueError("retry_after_seconds and slow_seconds must not be negative")
        unknown = self.applies_to - FAULTABLE_ROUTES
        if unknown:
            raise ValueError(f"unknown routes in applies_to: {sorted(unknown)}")

    @property
    def total(self) -> float:
        """Return the probability that a request draws any fault at all."""
        return (
            self.rate_429 + self.rate_5xx + self.rate_drop + self.rate_lost_create + self.rate_slow
        )


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything that shapes an emulator's behaviour; every field has a working default.

    Attributes:
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        api_keys: Bearer tokens accepted; ``None`` accepts any non-empty token.
        seed: Seed of every random draw (durations, failures, ids, faults).
        time_scale: Real seconds per emulated second; 0.001 makes a 10 s run take 10 ms.
        median_duration: Median run duration in emulated seconds (log-normal).
        duration_sigma: Sigma of the log-normal run duration.
        failure_rate: Fraction of runs that end ``failed``.
        honour_idempotency_key: Replay creates that repeat an ``Idempotency-Key``.
        url_ttl: Emulated seconds an output URL stays valid after a read signs it.
        pricing: The shared pricing policy that computes each run's cost.
        cost_multiplier: The emulator bills this times the policy price.
        credit_usd: Once the billed total reaches this, creates answer 402.
        faults: Seeded random fault rates.
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: frozenset[str] | None = None
    seed: int = 0
    time_scale: float = 1.0
    median_duration: float = 2.0
    duration_sigma: float = 0.5
    failure_rate: float = 0.0
    honour_idempotency_key: bool = True
    url_ttl: float = 3600.0
    pricing: PricingPolicy = field(default_factory=PricingPolicy)
    cost_multiplier: Decimal = Decimal(1)
    credit_usd: Decimal | None = None
    faults: FaultRates = field(default_factory=FaultRates)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale!r}")
        if self.median_duration <= 0 or self.duration_sigma < 0:
            raise ValueError("median_duration must be positive and duration_sigma not negative")
        _check_fraction("failure_rate", self.failure_rate)
        if self.url_ttl < 0:
            raise ValueError(f"url_ttl must not be negative, got {self.url_ttl!r}")
        if self.cost_multiplier < 0:
            raise ValueError(f"cost_multiplier must not be negative, got {self.cost_multiplier}")

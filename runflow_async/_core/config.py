"""Client settings: frozen policies, ``DEFAULT_*`` constants and environment lookup.

Environment variables are read by :func:`resolve_api_key` and
:func:`resolve_base_url`, which the client calls in its constructor, never at
import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from runflow_async._core.errors import ConfigurationError
from runflow_async._keywords import checked_fields

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_WAIT_TIMEOUT",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "PollPolicy",
    "RetryPolicy",
    "Timeouts",
    "resolve_api_key",
    "resolve_base_url",
]

DEFAULT_BASE_URL = "https://api.runflow.io"
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
"""The largest output image downloaded (64 MiB); a larger one is a ``DownloadError``.

A 2048x2048 PNG of noise is about 12 MiB, so this is generous for real outputs.
"""
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""The largest API response body read (16 MiB); a larger one is an ``APIResponseError``."""
# Runs "almost always complete in under 60 seconds" (docs: guides/cancel-a-run);
# the official JS SDK waits 180 s. We wait a little longer before giving up.
DEFAULT_WAIT_TIMEOUT = 300.0
ENV_API_KEY = "RUNFLOW_API_KEY"
ENV_BASE_URL = "RUNFLOW_BASE_URL"


@checked_fields(error=ConfigurationError)
@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request time limits, in seconds (``None`` disables one).

    Attributes:
        connect: Establishing a connection (including the pool wait).
        read: Waiting for each chunk of the response.
        total: One whole request, all of it.
    """

    connect: float | None = 10.0
    read: float | None = 30.0
    total: float | None = 60.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "total"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # "not >" refuses NaN too
                raise ConfigurationError(f"Timeouts.{name} must be positive or None.")


@checked_fields(error=ConfigurationError)
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the HTTP layer retries: exponential backoff with full jitter.

    Runflow's docs ask for exponential backoff with jitter, at most 5 attempts,
    starting at 1 s and capped at 32 s (docs: concepts/errors, concepts/rate-limits).

    Attributes:
        max_attempts: Attempts per request, the first included.
        max_time: Give up retrying once this many seconds have passed.
        initial_wait: The first backoff ceiling, in seconds.
        max_wait: The largest backoff ceiling, in seconds.
        max_retry_after: A server's ``Retry-After`` is honoured up to this many seconds.
        jitter: Draw each wait uniformly from ``[0, ceiling]`` (full jitter).
        time_scale: Multiplies every wait; tests set it near zero so retries do
            not sleep (like ``stamina``'s test mode), matching a scaled emulator.
        visibility_floor: The shortest *visibility window*, in seconds: after a
            create that may have reached the server, the client looks its run up
            by ``client_ref`` until this long after that attempt was given up (or
            longer, see below) before it may send it again. Lists lag and servers may store
            a run after they stopped answering, so an empty lookup is no proof.
        visibility_cap: The longest visibility window, in seconds. The window is
            ``clamp(2 x the longest time this client's runs took to appear in the
            run list, visibility_floor, visibility_cap)``, learned as the client goes.
        lookup_interval: Seconds before the second lookup of that window; each
            later gap doubles.
    """

    max_attempts: int = 5
    max_time: float = 120.0
    initial_wait: float = 1.0
    max_wait: float = 32.0
    max_retry_after: float = 60.0
    jitter: bool = True
    time_scale: float = 1.0
    visibility_floor: float = 10.0
    visibility_cap: float = 120.0
    lookup_interval: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.visibility_floor <= self.visibility_cap < float("inf"):
            raise ConfigurationError(
                "RetryPolicy needs 0 <= visibility_floor <= visibility_cap, both finite."
            )
        if not self.lookup_interval > 0:
            raise ConfigurationError("RetryPolicy.lookup_interval must be positive.")
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1.")
        times = (self.max_time, self.initial_wait, self.max_wait, self.max_retry_after)
        if not all(t >= 0 for t in times):  # "not >=" refuses NaN too
            raise ConfigurationError("RetryPolicy times must not be negative.")
        if not self.time_scale >= 0:
            raise ConfigurationError("RetryPolicy.time_scale must not be negative.")


@checked_fields(error=ConfigurationError)
@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How :meth:`RunflowClient.wait` spaces its status reads.

    The first read comes after ``initial_interval``; each later gap grows by
    ``multiplier`` up to ``max_interval``. Docs give no number; official clients
    poll every 2-3 s, so we start faster and settle there.

    Attributes:
        initial_interval: Seconds before the first read.
        max_interval: The longest gap between reads.
        multiplier: Growth of the gap after each read.
        time_scale: Multiplies every interval (tests against a scaled emulator).
        callback_fallback_after: When waiting by callback, seconds after the
            create before the first status read (the callback should have come:
            Runflow's delivery retries span about 3 s after the run ends).
        callback_fallback_interval: When waiting by callback, seconds between
            later status reads of a run whose callback has not come.
    """

    initial_interval: float = 0.5
    max_interval: float = 3.0
    multiplier: float = 1.5
    time_scale: float = 1.0
    callback_fallback_after: float = 60.0
    callback_fallback_interval: float = 30.0

    def __post_init__(self) -> None:
        # Written as "not (...)" so that NaN is refused too.
        if not 0 < self.initial_interval <= self.max_interval:
            raise ConfigurationError("PollPolicy needs 0 < initial_interval <= max_interval.")
        if not (self.multiplier >= 1 and self.time_scale > 0):
            raise ConfigurationError("PollPolicy needs multiplier >= 1 and time_scale > 0.")
        if not (self.callback_fallback_after >= 0 and self.callback_fallback_interval > 0):
            raise ConfigurationError(
                "PollPolicy needs callback_fallback_after >= 0 and callback_fallback_interval > 0."
            )


def resolve_api_key(api_key: str | None) -> str:
    """Return the API key given, or ``RUNFLOW_API_KEY``.

    Raises:
        ConfigurationError: If neither is set, or the key is malformed.
    """
    key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    if not key:
        raise ConfigurationError(f"No API key: pass api_key= or set {ENV_API_KEY}.")
    key = key.strip()
    # Prefixes differ between sources (rf_live_, rf_svc_, rfk_), so only the
    # character set is checked, as the official JS SDK does.
    if not key or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigurationError("The API key contains whitespace or control characters.")
    return key


def resolve_base_url(base_url: str | None) -> str:
    """Return the base URL given, or ``RUNFLOW_BASE_URL``, or the public API.

    Raises:
        ConfigurationError: If the URL is not http(s).
    """
    url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    url = url.rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise ConfigurationError(f"base_url must start with http:// or https://, got {url!r}.")
    return url

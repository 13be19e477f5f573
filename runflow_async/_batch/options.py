"""Options of a batch: what users pass (``BatchOptions``) and what the engine runs on."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TypedDict

from runflow_async._batch.observe import BatchObserver
from runflow_async._callbacks.receiver import CallbackReceiver
from runflow_async._core.errors import ConfigurationError
from runflow_async._waiting.list_poller import WaitStrategy

__all__ = ["BatchOptions", "EngineOptions", "check_serving"]


class BatchOptions(TypedDict, total=False):
    """Keyword options of :meth:`RunflowClient.batch` and :meth:`RunflowClient.map`.

    Attributes:
        max_concurrency: Runs in flight at most, from create until the client
            notices the end (default 16).
        max_cost_usd: Budget. ``submit_many`` refuses a list over it before
            sending anything, and no run starts that could push spending past it:
            the API's total bill stays within it provided the probe runs' bills
            fit in it and no later run bills more than ``billing_margin`` times
            the largest billed/estimated ratio seen before it started.
        probe_runs: With a cap, runs in flight at most until one has settled
            and measured how the API bills against the estimate (default 1).
        billing_margin: With a cap, reservations are the estimate times the
            largest billed/estimated ratio seen (at least 1) times this (1.25).
        submits_per_second: Pace creates evenly (no burst at start-up).
        adaptive: Shrink the window on 429s and grow it back (AIMD; default on).
        fail_fast: Stop everything at the first failure (default: failures never
            affect their siblings).
        timeout: Seconds to wait for each run before ``RunTimeoutError`` (600).
        observer: Called with each :class:`BatchEvent`.
        callbacks: A started :class:`CallbackReceiver`: runs are created with its
            ``url`` as ``callback_url`` and noticed by callback, with slow
            polling as the safety net (``PollPolicy.callback_fallback_*``).
            Defaults to the client's ``callbacks``; ``None`` turns it off.
    """

    max_concurrency: int
    max_cost_usd: Decimal | float | str | None
    probe_runs: int
    billing_margin: Decimal | float | str
    submits_per_second: float | None
    adaptive: bool
    fail_fast: bool
    timeout: float | None
    observer: BatchObserver | None
    callbacks: CallbackReceiver | None


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Settings of one batch, validated (see :class:`BatchOptions`)."""

    max_concurrency: int = 16
    max_cost_usd: Decimal | None = None
    probe_runs: int = 1
    billing_margin: Decimal = Decimal("1.25")
    submits_per_second: float | None = None
    adaptive: bool = True
    fail_fast: bool = False
    timeout: float | None = 600.0
    wait_strategy: WaitStrategy = "auto"
    observer: BatchObserver | None = None
    callbacks: CallbackReceiver | None = None

    @classmethod
    def build(
        cls,
        options: BatchOptions,
        *,
        wait_strategy: WaitStrategy,
        callbacks: CallbackReceiver | None = None,
    ) -> EngineOptions:
        """Validate user options (``callbacks`` is the client's default).

        Raises:
            ConfigurationError: A nonsensical value, or a receiver not serving yet.
        """
        cap = options.get("max_cost_usd")
        built = cls(
            max_concurrency=options.get("max_concurrency", 16),
            max_cost_usd=None if cap is None else _decimal("max_cost_usd", cap),
            probe_runs=options.get("probe_runs", 1),
            billing_margin=_decimal("billing_margin", options.get("billing_margin", "1.25")),
            submits_per_second=options.get("submits_per_second"),
            adaptive=options.get("adaptive", True),
            fail_fast=options.get("fail_fast", False),
            timeout=options.get("timeout", 600.0),
            wait_strategy=wait_strategy,
            observer=options.get("observer"),
            callbacks=options.get("callbacks", callbacks),
        )
        if built.callbacks is not None:
            check_serving(built.callbacks)
        if built.max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1.")
        cap_usd = built.max_cost_usd
        if cap_usd is not None and not (cap_usd.is_finite() and cap_usd >= 0):
            raise ConfigurationError("max_cost_usd must be a finite amount, not negative.")
        if built.probe_runs < 1:
            raise ConfigurationError("probe_runs must be at least 1.")
        if not (built.billing_margin.is_finite() and built.billing_margin >= 1):
            raise ConfigurationError("billing_margin must be a finite number, at least 1.")
        if built.submits_per_second is not None and built.submits_per_second <= 0:
            raise ConfigurationError("submits_per_second must be positive.")
        return built


def _decimal(name: str, value: Decimal | float | str) -> Decimal:
    try:
        return Decimal(str(value))
    except ArithmeticError:  # decimal.InvalidOperation
        raise ConfigurationError(f"{name} must be a number, got {value!r}.") from None


def check_serving(receiver: CallbackReceiver) -> str:
    """Return the receiver's URL, the ``callback_url`` runs will carry.

    Raises:
        ConfigurationError: The receiver is not started (``async with``) and has
            no ``public_url``, or it was closed.
    """
    if receiver.closed:
        raise ConfigurationError("The CallbackReceiver was closed; create and start a new one.")
    try:
        return receiver.url
    except RuntimeError:
        raise ConfigurationError(
            "Start the CallbackReceiver (async with receiver), or give it a public_url, "
            "before waiting by callback."
        ) from None

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
            sending anything, and no run starts that could push spending past it.
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
            max_cost_usd=None if cap is None else Decimal(str(cap)),
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
        if built.max_cost_usd is not None and built.max_cost_usd < 0:
            raise ConfigurationError("max_cost_usd must not be negative.")
        if built.submits_per_second is not None and built.submits_per_second <= 0:
            raise ConfigurationError("submits_per_second must be positive.")
        return built


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

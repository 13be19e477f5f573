"""Options of a batch: what users pass (``BatchOptions``) and what the engine runs on."""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypedDict

from runflow_async._batch.grouping import CreateVia
from runflow_async._batch.observe import BatchObserver
from runflow_async._callbacks.receiver import CallbackReceiver
from runflow_async._core.errors import ConfigurationError
from runflow_async._http.batch_answer import BatchBodyShape
from runflow_async._keywords import check_names, check_types
from runflow_async._waiting.list_poller import WaitStrategy

__all__ = ["BATCH_OPTION_NAMES", "BatchOptions", "EngineOptions", "check_serving"]


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
        create_via: ``"runs"`` (a create per run), ``"batches"`` (batch creates
            of up to 100 runs, each run still one slot and one reservation) or
            ``"auto"`` (batches when at least 10 items are ready together, else
            per run; per run for good once the route refuses it). Items with a
            ``callback_url`` or ``metadata`` (or waited for by callback) are
            created per run. Defaults to the client's ``create_via``.
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
    create_via: CreateVia


BATCH_OPTION_NAMES: frozenset[str] = BatchOptions.__required_keys__ | BatchOptions.__optional_keys__
"""The names :class:`BatchOptions` declares: the only ones accepted at run time."""


@functools.cache
def _hints() -> dict[str, Any]:
    # This module's names: BatchOptions.__module__ is rewritten to the public one.
    return typing.get_type_hints(BatchOptions, globalns=globals())


def _budget(cap: Decimal | float | str | None, where: str) -> Decimal | None:
    if cap is None:
        return None
    try:
        amount = Decimal(str(cap))  # a float through its repr: 0.1 is $0.1
    except InvalidOperation:
        raise ConfigurationError(f"{where}: max_cost_usd {cap!r} is not an amount.") from None
    if not (amount.is_finite() and amount > 0):
        raise ConfigurationError(
            f"{where}: max_cost_usd must be a positive, finite amount, got {cap!r}; "
            "None means no budget."
        )
    return amount


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
    create_via: CreateVia = "runs"
    batch_body_shape: BatchBodyShape = "openapi"

    @classmethod
    def build(
        cls,
        options: BatchOptions,
        *,
        wait_strategy: WaitStrategy,
        callbacks: CallbackReceiver | None = None,
        create_via: CreateVia = "runs",
        batch_body_shape: BatchBodyShape = "openapi",
        where: str = "client.batch()",
        also: Collection[str] = (),
    ) -> EngineOptions:
        """Validate user options (``callbacks`` is the client's default).

        Args:
            options: What the user passed.
            wait_strategy: The client's.
            callbacks: The client's default receiver.
            create_via: The client's default.
            batch_body_shape: The client's.
            where: The entry point, as error messages start.
            also: The entry point's other keywords, suggested for a misspelling too.

        Raises:
            ConfigurationError: An unknown option (naming the closest valid one), a
                value of the wrong type, a nonsensical value, or a receiver not
                serving yet. Also a ``TypeError``.
        """
        check_names(options, BATCH_OPTION_NAMES, where=where, error=ConfigurationError, also=also)
        check_types(options, _hints(), where=where, error=ConfigurationError)
        built = cls(
            max_concurrency=options.get("max_concurrency", 16),
            max_cost_usd=_budget(options.get("max_cost_usd"), where),
            probe_runs=options.get("probe_runs", 1),
            billing_margin=_decimal(where, "billing_margin", options.get("billing_margin", "1.25")),
            submits_per_second=options.get("submits_per_second"),
            adaptive=options.get("adaptive", True),
            fail_fast=options.get("fail_fast", False),
            timeout=options.get("timeout", 600.0),
            wait_strategy=wait_strategy,
            observer=options.get("observer"),
            callbacks=options.get("callbacks", callbacks),
            create_via=options.get("create_via", create_via),
            batch_body_shape=batch_body_shape,
        )
        built._check(where)
        return built

    def _check(self, where: str) -> None:
        if self.callbacks is not None:
            check_serving(self.callbacks)
        if self.max_concurrency < 1:
            raise ConfigurationError(f"{where}: max_concurrency must be at least 1.")
        rate = self.submits_per_second
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ConfigurationError(f"{where}: submits_per_second must be positive and finite.")
        if self.timeout is not None and not self.timeout > 0:  # "not >" refuses NaN too
            raise ConfigurationError(f"{where}: timeout must be positive seconds, or None.")
        if self.probe_runs < 1:
            raise ConfigurationError(f"{where}: probe_runs must be at least 1.")
        if not (self.billing_margin.is_finite() and self.billing_margin >= 1):
            raise ConfigurationError(
                f"{where}: billing_margin must be a finite number, at least 1."
            )


def _decimal(where: str, name: str, value: Decimal | float | str) -> Decimal:
    try:
        return Decimal(str(value))
    except ArithmeticError:  # decimal.InvalidOperation
        raise ConfigurationError(f"{where}: {name} must be a number, got {value!r}.") from None


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

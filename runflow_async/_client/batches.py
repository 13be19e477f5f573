"""The client's batch methods: ``batch``, ``map`` and the ``engine`` under both."""

from __future__ import annotations

import functools
import math
import typing
from decimal import Decimal
from typing import Any, Unpack

from runflow_async._batch.batch import Batch
from runflow_async._batch.engine import Engine
from runflow_async._batch.grouping import BatchRoutes, CreateVia
from runflow_async._batch.hooks import EngineHooks
from runflow_async._batch.map import MapRun, RequestSource
from runflow_async._batch.options import BatchOptions, EngineOptions
from runflow_async._callbacks.receiver import CallbackReceiver
from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import ConfigurationError
from runflow_async._http.batch_answer import BatchBodyShape
from runflow_async._http.transport import Transport
from runflow_async._keywords import check_types
from runflow_async._pricing import PricingPolicy
from runflow_async._waiting.durations import DurationStats
from runflow_async._waiting.list_poller import WaitStrategy

__all__ = ["ENGINE_KEYWORDS", "BatchesMixin"]

ENGINE_KEYWORDS = ("hooks", "outcome_buffer", "spent_usd")
"""The keywords :meth:`~BatchesMixin.engine` takes besides the batch options."""


class BatchesMixin:
    """Methods of :class:`RunflowClient` that run many requests under one window and budget."""

    _transport: Transport
    _durations: DurationStats
    pricing: PricingPolicy
    poll_policy: PollPolicy
    wait_strategy: WaitStrategy
    callbacks: CallbackReceiver | None
    create_via: CreateVia
    batch_body_shape: BatchBodyShape
    _batch_routes: BatchRoutes

    def batch(self, **options: Unpack[BatchOptions]) -> Batch:
        """Open a batch: futures for many runs under one window, rate and budget.

        Use it as ``async with client.batch(max_concurrency=50) as batch``.
        Options (all keyword, see :class:`BatchOptions`): ``max_concurrency``,
        ``max_cost_usd``, ``probe_runs``, ``billing_margin``,
        ``submits_per_second``, ``adaptive``, ``fail_fast``, ``timeout``,
        ``observer``, ``callbacks``, ``create_via``.

        Raises:
            ConfigurationError: An unknown option (naming the closest valid one),
                a value of the wrong type or a nonsensical one; nothing is sent.
        """
        return Batch(lambda hooks: self._engine("client.batch()", options, hooks=hooks))

    def map(self, requests: RequestSource, **options: Unpack[BatchOptions]) -> MapRun:
        """Run a lazy (even endless) stream of requests; outcomes arrive as they finish.

        Use it as ``async with client.map(requests) as outcomes: async for o in outcomes``.
        Memory stays bounded by ``max_concurrency``. Options as for :meth:`batch`.

        Raises:
            ConfigurationError: As for :meth:`batch`.
        """
        make = functools.partial(self._engine, "client.map()", options)
        return MapRun(lambda buffer: make(outcome_buffer=buffer), requests)

    def engine(
        self,
        *,
        hooks: EngineHooks | None = None,
        outcome_buffer: float = math.inf,
        spent_usd: Decimal = Decimal(0),
        **options: Unpack[BatchOptions],
    ) -> Engine:
        """The engine under :meth:`batch` and :meth:`map`, for pipelines that need its hooks.

        ``async with client.engine(hooks=...) as engine``: ``engine.submit`` /
        ``await engine.put`` items, read ``engine.outcomes``. ``hooks`` are told
        each ``client_ref`` before its create is sent and each run as soon as it
        exists (a write-ahead journal); ``spent_usd`` counts earlier spending
        against ``max_cost_usd``. Options as for :meth:`batch`.

        Raises:
            ConfigurationError: As for :meth:`batch`.
        """
        where = "client.engine()"
        own = {"hooks": hooks, "outcome_buffer": outcome_buffer, "spent_usd": spent_usd}
        check_types(own, _engine_hints(), where=where, error=ConfigurationError)
        if not outcome_buffer >= 0:  # "not >=" refuses NaN too
            raise ConfigurationError(f"{where}: outcome_buffer must not be negative.")
        spent = Decimal(spent_usd)  # an int is exact too
        if not (spent.is_finite() and spent >= 0):
            raise ConfigurationError(f"{where}: spent_usd must be finite, not negative.")
        return self._engine(
            where,
            options,
            hooks=hooks,
            outcome_buffer=outcome_buffer,
            spent_usd=spent,
            also=ENGINE_KEYWORDS,
        )

    def _engine(
        self,
        where: str,
        options: BatchOptions,
        *,
        hooks: EngineHooks | None = None,
        outcome_buffer: float = math.inf,
        spent_usd: Decimal = Decimal(0),
        also: tuple[str, ...] = (),
    ) -> Engine:
        built = EngineOptions.build(
            options,
            wait_strategy=self.wait_strategy,
            callbacks=self.callbacks,
            create_via=self.create_via,
            batch_body_shape=self.batch_body_shape,
            where=where,
            also=also,
        )
        return Engine(
            self._transport,
            pricing=self.pricing,
            poll=self.poll_policy,
            stats=self._durations,
            options=built,
            hooks=hooks,
            outcome_buffer=outcome_buffer,
            spent_usd=spent_usd,
            batch_routes=self._batch_routes,
        )


@functools.cache
def _engine_hints() -> dict[str, Any]:
    return typing.get_type_hints(BatchesMixin.engine)

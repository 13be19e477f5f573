"""Gathering items' creates into batch creates (``create_via="batches"`` or ``"auto"``).

Each item keeps its own life in the engine: it holds its slot of the window
and its budget reservation from admission on, so a batch of N items takes N
slots and reserves all N estimates before its create is sent; its outcome is
its own. Only the create is shared: an item about to be created joins its
model's group (:meth:`CreateGroups.create`) and waits for its run.

A group is sent when it holds :data:`BATCH_MAX` items, or once items stopped
joining it (a few passes of the event loop went by without one; never a
timer): items whose slots freed together (the list poller reports finished
runs a tick at a time) go out together.

``auto`` sends a group of fewer than :data:`AUTO_THRESHOLD` items as per-run
creates (a batch pays off from there; a small one is no cheaper and its
ambiguity costs a lookup per item). A 422 on the batch route that names no
item (the model is not batch-capable, or the body shape is refused) created
nothing: ``auto`` then creates those items and every later one of the model
per run, remembered for the client's life (:class:`BatchRoutes`);
``batches`` ends them with :class:`~runflow_async.BatchRouteRefusedError`,
and later items of the model get the same error without a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from runflow_async._batch.limits import AdaptiveWindow
from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import APIError, BatchRouteRefusedError
from runflow_async._core.models import Run
from runflow_async._http.batch_answer import BATCH_MAX, BatchBodyShape, BatchSend
from runflow_async._http.batch_create import batch_unknown, create_batch
from runflow_async._http.create import CreateProgress
from runflow_async._http.retry import RetryHook
from runflow_async._http.transport import Transport
from runflow_async._waiting.durations import DurationStats
from runflow_async._waiting.list_poller import ListPoller

if TYPE_CHECKING:
    from runflow_async._batch.options import EngineOptions

__all__ = [
    "AUTO_THRESHOLD",
    "BATCH_MAX",
    "BatchRoutes",
    "CreateGroups",
    "CreateVia",
    "PollerTuning",
    "create_groups",
    "list_poller",
    "poller_tuning",
]

logger = logging.getLogger("runflow_async")

CreateVia = Literal["auto", "runs", "batches"]
"""``runs``: one create per run; ``batches``: batch creates of up to 100 runs;
``auto``: batches when at least :data:`AUTO_THRESHOLD` items are ready together."""

AUTO_THRESHOLD = 10
"""Items ready together from which ``auto`` sends a batch create."""

# A group is sent once this many passes of the event loop went by without a new
# item joining (items fed one by one, as a dataset does, join a pass or two
# apart), or after _MAX_PASSES in all (never a timer: nothing waits for time).
_QUIET_PASSES = 3
_MAX_PASSES = 1000


def list_poller(
    transport: Transport, stats: DurationStats, poll: PollPolicy, options: EngineOptions
) -> ListPoller | None:
    """The list poller of an engine run with ``options`` (``None``: per-run polling)."""
    strategy = options.wait_strategy
    if strategy == "per_run":
        return None
    tuning = poller_tuning(options.create_via, options.max_concurrency)
    return ListPoller(transport, stats, poll, allow_fallback=strategy == "auto", **tuning)


def create_groups(
    transport: Transport,
    options: EngineOptions,
    routes: BatchRoutes | None,
    start: Start,
    window: AdaptiveWindow,
) -> CreateGroups | None:
    """The create groups of an engine run with ``options`` (``None``: creates per run)."""
    if options.create_via == "runs":
        return None
    return CreateGroups(
        transport,
        routes or BatchRoutes(),
        mode=options.create_via,
        shape=options.batch_body_shape,
        start=start,
        window=window,
    )


class PollerTuning(TypedDict):
    """How a batch's list poller is set up (see :func:`poller_tuning`)."""

    documented_first: bool
    ticks_per_run: float


def poller_tuning(create_via: CreateVia, max_concurrency: int) -> PollerTuning:
    """The list poller's set-up for runs created ``create_via``.

    By batch, more than 100 runs may be in flight at once: the documented
    filters' one page a tick then costs less than the ``id:`` filter's request
    per 100 runs. And each tick frees slots that one batch create then fills,
    so a tick costs a page and a create: at 11 ticks per median run rather
    than 15, 2,000 runs at concurrency 200 take about 0.14 requests per run
    and 1.045x the ideal makespan (BENCHMARKS.md).
    """
    if create_via == "runs":
        return {"documented_first": False, "ticks_per_run": 15.0}
    return {"documented_first": max_concurrency > BATCH_MAX, "ticks_per_run": 11.0}


@dataclass(slots=True)
class BatchRoutes:
    """What one client learned of the batch route: the models whose route refused it."""

    refused: dict[str, BatchRouteRefusedError] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class _Joined:
    send: BatchSend
    answer: asyncio.Future[Run | APIError | None]


Start = Callable[[Callable[[], Awaitable[None]]], None]


class CreateGroups:
    """The groups of one engine (module doc).

    Args:
        transport: The HTTP layer.
        routes: The client's record of refused batch routes.
        mode: ``auto`` or ``batches``.
        shape: The batch body shape the server speaks.
        start: Runs a task in the engine's task group.
        window: The engine's window: a 429 on a batch create shrinks it and
            the retry waits out its shared cool-down (the items keep their
            slots and reservations: a 429 proves nothing was created).
        on_retry: Told about each retry of a batch create.
    """

    def __init__(
        self,
        transport: Transport,
        routes: BatchRoutes,
        *,
        mode: CreateVia,
        shape: BatchBodyShape,
        start: Start,
        window: AdaptiveWindow | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        self._transport = transport
        self._routes = routes
        self._mode = mode
        self._shape = shape
        self._start = start
        self._on_retry = on_retry
        self._gate = _WindowGate(window) if window is not None else None
        self._pending: dict[str, list[_Joined]] = {}
        self.sent = 0  # batch creates sent (each with its retries)

    async def create(
        self, model: str, client_ref: str, item_input: dict[str, Any], progress: CreateProgress
    ) -> Run | APIError | None:
        """Join ``model``'s group: the item's run, its error, or ``None`` to create it alone."""
        refused = self._routes.refused.get(model)
        if refused is not None:
            return None if self._mode == "auto" else refused
        answer: asyncio.Future[Run | APIError | None] = asyncio.get_running_loop().create_future()
        group = self._pending.get(model)
        if group is None:
            group = self._pending[model] = []
            self._start(lambda: self._gather(model))
        group.append(_Joined(BatchSend(client_ref, item_input, progress), answer))
        if len(group) >= BATCH_MAX:  # full: out now; the next joiner starts a new group
            del self._pending[model]
            self._start(lambda: self._send(model, group))
        return await answer

    async def _gather(self, model: str) -> None:
        group = self._pending.get(model)
        quiet = passes = 0
        while quiet < _QUIET_PASSES and passes < _MAX_PASSES and self._pending.get(model) is group:
            size = len(group or ())
            await asyncio.sleep(0)  # the items started with this one join meanwhile
            quiet = quiet + 1 if len(group or ()) == size else 0
            passes += 1
        if group is not None and self._pending.get(model) is group:
            del self._pending[model]
            await self._send(model, group)

    async def _send(self, model: str, group: list[_Joined]) -> None:
        live = [j for j in group if not j.answer.done()]  # an item cancelled meanwhile is not sent
        try:
            if not live:
                return
            if self._mode == "auto" and (
                len(live) < AUTO_THRESHOLD or model in self._routes.refused
            ):
                _answer(live, None)  # created one by one, by their items
                return
            await self._create(model, live)
        except BaseException as exc:
            if isinstance(exc, Exception):  # the client closed, or a bug: the items raise it
                for joined in live:
                    if not joined.answer.done():
                        joined.answer.set_exception(exc)
                return
            raise
        finally:
            for joined in live:
                if not joined.answer.done():
                    joined.answer.cancel()

    async def _create(self, model: str, live: list[_Joined]) -> None:
        self.sent += 1
        try:
            results = await create_batch(
                self._transport,
                model,
                [j.send for j in live],
                shape=self._shape,
                gate=self._gate,
                on_retry=self._on_retry,
            )
        except BatchRouteRefusedError as exc:
            self._routes.refused.setdefault(model, exc)
            if self._mode == "auto":
                logger.warning(
                    "The API refused batch creates for %s (%s); creating its runs one by one "
                    "from now on.",
                    model,
                    exc.message,
                )
                _answer(live, None)
            else:
                _answer(live, exc)
            return
        for joined in live:
            ref = joined.send.client_ref
            result = results.get(ref) or batch_unknown(ref, model, "its batch named no outcome")
            if not joined.answer.done():
                joined.answer.set_result(result)


class _WindowGate:
    """The :class:`CreateGate` of batch creates: 429s go through the engine's window."""

    __slots__ = ("_window",)

    def __init__(self, window: AdaptiveWindow) -> None:
        self._window = window

    def throttled(self, retry_after: float | None) -> None:
        self._window.on_throttle(retry_after)

    async def wait_to_retry(self) -> None:
        await self._window.wait_cooldown()


def _answer(group: list[_Joined], value: Run | APIError | None) -> None:
    for joined in group:
        if not joined.answer.done():
            joined.answer.set_result(value)

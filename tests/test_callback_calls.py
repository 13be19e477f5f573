"""A run noticed by callback costs the engine few calls (issue 12); counted, never timed.

Everything after a create returns, until the outcome is handed over, plus the
receiver's handler, is counted with ``sys.setprofile`` against the in-process
emulator: every Python and C call made under ``ItemLife._finish``,
``CallbackReceiver._handle`` and ``Engine._deliver``. The old path armed a
cancel scope and an ``anyio.fail_after`` per item even when nothing could
cancel it, looked anyio's backend up for every event and deadline, built
events nobody observed, copied the run to add its cost and parsed its status
through the enum machinery: about 420 calls per run. It is about 290 now.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType
from typing import Any

import pytest
from anyio._backends._asyncio import CancelScope

from runflow_async import (
    BatchEvent,
    CallbackReceiver,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
)
from runflow_async._batch.handover import Handover
from runflow_async._batch.items import ItemLife
from runflow_async._callbacks.receiver import CallbackReceiver as Receiver
from runflow_async._callbacks.watch import Deadlines
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, TIME_SCALE
from tests.test_by_callback import new_secret, prompts, start_emulator

pytestmark = pytest.mark.anyio

RUNS = 30
ROOTS = {
    ItemLife._finish.__code__: "finish",
    Receiver._handle.__code__: "handle",
    Handover.deliver.__code__: "deliver",
}
# Far beyond any run (~50 ms) even under the profiler: no fallback read starts.
AFTER = 100_000.0


def _root(frame: FrameType | None) -> str | None:
    while frame is not None:
        root = ROOTS.get(frame.f_code)
        if root is not None:
            return root
        frame = frame.f_back
    return None


@contextmanager
def counted(entered: CodeType) -> Iterator[tuple[Counter[str], Counter[str]]]:
    """Calls under each root, and how often ``entered`` ran under them."""
    calls: Counter[str] = Counter()
    hits: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event not in ("call", "c_call"):
            return
        root = _root(frame)
        if root is not None:
            calls[root] += 1
            if event == "call" and frame.f_code is entered:
                hits[root] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield calls, hits
    finally:
        sys.setprofile(previous)


def client(url: str) -> RunflowClient:
    poll = PollPolicy(
        time_scale=TIME_SCALE, callback_fallback_after=AFTER, callback_fallback_interval=AFTER
    )
    return RunflowClient(API_KEY, base_url=url, retry=RetryPolicy(time_scale=TIME_SCALE), poll=poll)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = await start_emulator(median_duration=50.0, duration_sigma=0.1)
    try:
        yield emu
    finally:
        await emu.aclose()


async def _batch(
    emulator: Emulator, **options: Any
) -> tuple[Counter[str], Counter[str], list[BatchEvent]]:
    """Run a warm-up batch, then ``RUNS`` runs counted; every one settles by callback."""
    events: list[BatchEvent] = []
    observer = options.pop("observer", None)
    async with client(emulator.url) as rf, CallbackReceiver([await new_secret(rf)]) as rx:
        async with rf.batch(max_concurrency=10, callbacks=rx, **options) as batch:
            batch.submit_many(prompts(5))  # imports, schemas and sessions warmed
        with counted(CancelScope.__enter__.__code__) as (calls, scopes):
            async with rf.batch(
                max_concurrency=10, callbacks=rx, observer=observer or events.append, **options
            ) as batch:
                batch.submit_many(prompts(RUNS))
        outcomes = await batch.gather()
        assert rx.counters.accepted == 5 + RUNS
    assert all(o.ok and o.billed_usd is not None for o in outcomes)
    assert emulator.counters.requests_by_route.get("get_run", 0) == 0  # all by callback
    return calls, scopes, events


async def test_a_run_noticed_by_callback_costs_the_engine_few_calls(emulator: Emulator) -> None:
    calls, scopes, _ = await _batch(emulator, observer=lambda _event: None)
    per_run = sum(calls.values()) / RUNS
    assert per_run <= 325, dict(calls)  # about 420 before, 285 now
    assert calls["deliver"] / RUNS <= 15  # the outcome is handed with no checkpoint (24 before)
    assert scopes["finish"] == RUNS  # the item's deadline only (a scope and a fail_after before)


async def test_a_wait_with_no_deadline_and_no_fail_fast_arms_no_cancel_scope(
    emulator: Emulator,
) -> None:
    _, scopes, events = await _batch(emulator, timeout=None)
    assert scopes["finish"] == 0
    # Events are still built for an observer that listens.
    kinds = Counter(event.kind for event in events)
    assert kinds["succeeded"] == kinds["cost_settled"] == RUNS


async def test_fail_fast_keeps_its_scope_to_abandon_waits(emulator: Emulator) -> None:
    calls, scopes, _ = await _batch(emulator, fail_fast=True)
    assert scopes["finish"] == 2 * RUNS  # fail_fast's abandonment scope and the deadline
    assert sum(calls.values()) / RUNS <= 355  # about 425 before, 310 now


async def test_first_windows_share_one_timer_and_each_ends_on_time() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    start = loop.time()
    futures = [loop.create_future() for _ in range(4)]
    handles = [deadlines.add(loop, start + 0.01 * (i + 1), f) for i, f in enumerate(futures)]
    assert handles == [None] * 4  # in order: queued behind one timer
    futures[1].set_result(None)  # its callback came first: nothing to cancel
    late = loop.create_future()
    own = deadlines.add(loop, start + 0.005, late)  # earlier than the last: a timer of its own
    assert own is not None
    woken: list[int] = []

    def note(i: int) -> Callable[[asyncio.Future[None]], None]:
        return lambda _future: woken.append(i)

    for i, future in enumerate([*futures, late]):
        future.add_done_callback(note(i))
    await asyncio.gather(*futures, late)
    # Settled early, then the earlier deadline on its own timer, then the queue in order.
    assert woken == [1, 4, 0, 2, 3]
    gone = loop.create_future()
    assert deadlines.add(loop, loop.time() + 0.001, gone) is None  # the drained queue restarts
    gone.set_result(None)
    again = loop.create_future()
    assert deadlines.add(loop, loop.time() + 0.002, again) is None  # a settled head is dropped
    assert await again is None

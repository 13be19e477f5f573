"""Cancellation and errors at the public boundary of ``client.batch`` and ``client.map``.

Each pattern a user writes is cancelled (task cancel, as Ctrl-C does under
``asyncio.run``) or interrupted by an error; creates must stop within the
in-flight window, every created run must stay listed, and an error must leave
the block as itself, not wrapped in an ``ExceptionGroup``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from runflow_async import (
    Batch,
    BudgetExceededError,
    ClientClosedError,
    CreateOutcomeUnknownError,
    GenerateRequest,
    NotSubmittedError,
    PollPolicy,
    RetryPolicy,
    RunAbandonedError,
    RunflowClient,
)
from runflow_async.emulator import Emulator, Fault
from tests.conftest import client_tasks

SCALE = 0.005  # a "10 s" run takes 50 ms
WINDOW = 10


def requests(n: int) -> list[GenerateRequest]:
    return [GenerateRequest(prompt=f"prompt {i}") for i in range(n)]


def scaled_client(url: str) -> RunflowClient:
    return RunflowClient(
        "k",
        base_url=url,
        retry=RetryPolicy(time_scale=SCALE),
        poll=PollPolicy(time_scale=SCALE),
    )


def emulator() -> Emulator:
    return Emulator(time_scale=SCALE, median_duration=10.0, seed=11)


def creates(emu: Emulator) -> int:
    return emu.counters.requests_by_route.get("create", 0)


async def cancel_after_creates(emu: Emulator, scope: anyio.CancelScope, n: int) -> int:
    """Cancel ``scope`` once ``n`` creates arrived; return the create count at that moment."""
    while creates(emu) < n:  # noqa: ASYNC110 - polls the emulator's counters
        await anyio.sleep(0.001)
    at_cancel = creates(emu)
    scope.cancel()
    return at_cancel


async def run_cancelled(
    emu: Emulator, body: Callable[[anyio.CancelScope], Awaitable[None]]
) -> tuple[int, int]:
    """Run ``body`` in a scope cancelled after 10 creates; return creates (at cancel, after)."""
    at_cancel = 0

    async def watch(scope: anyio.CancelScope) -> None:
        nonlocal at_cancel
        at_cancel = await cancel_after_creates(emu, scope, 10)

    with anyio.fail_after(10):  # a safety net: the bug made this run every item
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                tg.start_soon(watch, scope)
                await body(scope)
            tg.cancel_scope.cancel()
    await anyio.sleep(0.05)  # a straggling task would create more meanwhile
    return at_cancel, creates(emu)


def assert_listed(emu: Emulator, batch: Batch) -> None:
    created = {run["id"]: run["client_ref"] for run in emu.runs()}
    listed, uncertain = set(batch.run_ids), set(batch.uncertain_client_refs)
    for run_id, client_ref in created.items():
        assert run_id in listed or client_ref in uncertain
    assert all(f.done() for f in batch.futures)


async def wait_at_the_end(batch: Batch) -> None:
    pass  # the block ends at once and waits in __aexit__


async def gather(batch: Batch) -> None:
    await batch.gather()


async def as_completed(batch: Batch) -> None:
    async for _outcome in batch.as_completed():
        pass


@pytest.mark.parametrize("pattern", [wait_at_the_end, gather, as_completed])
@pytest.mark.parametrize(
    "fault",
    [None, Fault.slow(5.0), Fault.lost_response()],
    ids=["no fault", "slow creates", "lost answers"],
)
async def test_cancelling_a_batch_stops_creates_and_lists_every_run(
    pattern: Callable[[Batch], Awaitable[None]], fault: Fault | None
) -> None:
    # Under a server that answers creates late, or stores the run and loses the
    # answer, creates in flight at the cancel are read to the end (or left
    # uncertain, their client_ref listed), and nothing new is sent.
    async with emulator() as emu, scaled_client(emu.url) as client:
        if fault is not None:
            emu.faults.next("create", fault, times=200)
        before = client_tasks()
        holder: list[Batch] = []

        async def body(_: anyio.CancelScope) -> None:
            async with client.batch(max_concurrency=WINDOW) as batch:
                holder.append(batch)
                batch.submit_many(requests(200))
                await pattern(batch)

        at_cancel, after = await run_cancelled(emu, body)
        assert client_tasks() == before
        assert after - at_cancel <= WINDOW
        assert after < 200
        assert_listed(emu, holder[0])


async def test_map_break_creates_at_most_the_window_more_and_lists_them() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        before = client_tasks()
        consumed: set[str] = set()
        async with client.map(requests(500), max_concurrency=WINDOW) as outcomes:
            async for outcome in outcomes:
                assert outcome.run_id is not None
                consumed.add(outcome.run_id)
                if len(consumed) == 60:
                    break
        await anyio.sleep(0.05)
        assert client_tasks() == before
        created = {run["id"] for run in emu.runs()}
    assert len(created) <= 60 + WINDOW
    assert created == consumed | set(outcomes.undelivered_run_ids)
    assert set(outcomes.unfinished_run_ids) <= set(outcomes.undelivered_run_ids)
    assert not consumed & set(outcomes.undelivered_run_ids)


async def test_map_cancelled_lists_every_run_it_did_not_hand_over() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        consumed: set[str] = set()
        holder: list[object] = []

        async def body(_: anyio.CancelScope) -> None:
            async with client.map(requests(500), max_concurrency=WINDOW) as outcomes:
                holder.append(outcomes)
                async for outcome in outcomes:
                    assert outcome.run_id is not None
                    consumed.add(outcome.run_id)

        at_cancel, after = await run_cancelled(emu, body)
        assert after - at_cancel <= WINDOW
        created = {run["id"] for run in emu.runs()}
    undelivered = set(holder[0].undelivered_run_ids)  # type: ignore[attr-defined]
    assert created == consumed | undelivered


async def test_except_budget_exceeded_around_the_block_catches_submit_many() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        with pytest.raises(BudgetExceededError) as info:
            async with client.batch(max_cost_usd="0.01") as batch:
                batch.submit_many(requests(100))
        assert type(info.value) is BudgetExceededError
        assert creates(emu) == 0


async def test_an_error_raised_in_the_block_leaves_as_itself_and_stops_creates() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        with pytest.raises(ValueError, match="mine") as info:  # noqa: PT012 - the block is the subject
            async with client.batch(max_concurrency=WINDOW) as batch:
                batch.submit_many(requests(200))
                while creates(emu) < 5:  # noqa: ASYNC110 - polls the emulator's counters
                    await anyio.sleep(0.001)
                at_error = creates(emu)
                raise ValueError("mine")
        assert type(info.value) is ValueError
        await anyio.sleep(0.05)
        assert creates(emu) - at_error <= WINDOW
        assert_listed(emu, batch)


async def test_aclose_under_a_running_batch_raises_client_closed_error() -> None:
    async with emulator() as emu:
        client = scaled_client(emu.url)
        async with client:
            with pytest.raises(ClientClosedError) as info:  # noqa: PT012 - the block is the subject
                async with client.batch(max_concurrency=WINDOW) as batch:
                    futures = batch.submit_many(requests(50))
                    while creates(emu) < 5:  # noqa: ASYNC110 - polls the emulator's counters
                        await anyio.sleep(0.001)
                    await client.aclose()
                    outcomes = [await f.wait() for f in futures]  # every future resolves
            assert type(info.value) is ClientClosedError
            stopped = [o for o in outcomes if not o.ok]
            assert stopped  # the close ended them; none was left hanging
            # A create cut off in flight may have made a run: outcome unknown, listed.
            closed = (ClientClosedError, RunAbandonedError, NotSubmittedError)
            unknown = [o.error for o in stopped if isinstance(o.error, CreateOutcomeUnknownError)]
            assert all(isinstance(o.error, (*closed, CreateOutcomeUnknownError)) for o in stopped)
            assert {e.client_ref for e in unknown} <= set(batch.uncertain_client_refs)
            assert creates(emu) < 50


async def test_map_error_in_the_loop_leaves_as_itself() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        with pytest.raises(KeyError) as info:  # noqa: PT012 - the block is the subject
            async with client.map(requests(100), max_concurrency=WINDOW) as outcomes:
                async for _outcome in outcomes:
                    raise KeyError("mine")
        assert type(info.value) is KeyError
        await anyio.sleep(0.05)
        assert creates(emu) <= 1 + WINDOW

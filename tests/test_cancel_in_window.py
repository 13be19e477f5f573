"""Issue 11: an item stopped while its create may exist is outcome-unknown, never "not submitted".

A create whose answer was lost (or that the server stores late) is looked up
over the visibility window. Cancelling the batch (or Ctrl-C, or closing the
client) during that window must not report the item as never created: its run
may well exist and bill. Only an item whose create provably made nothing ends
not submitted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from runflow_async import (
    ClientClosedError,
    CreateOutcomeUnknownError,
    GenerateRequest,
    NotSubmittedError,
    Outcome,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
)
from runflow_async._dataset.input import Defaults, read_generate_file
from runflow_async._dataset.journal import ItemState, Journal
from runflow_async._dataset.pipeline import run_dataset
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY

SCALE = 0.002
LONG = 2000.0  # emulated seconds: a window and a lag far longer than the test


def requests(n: int) -> list[GenerateRequest]:
    return [GenerateRequest(prompt=f"prompt {i}", image_size="square") for i in range(n)]


def client_for(url: str, *, window: float = LONG) -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=SCALE, visibility_floor=window, visibility_cap=window),
        poll=PollPolicy(time_scale=SCALE),
    )


def emulator(**overrides: Any) -> Emulator:
    return Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE, seed=3, **overrides)


async def wait_until(check: Any) -> None:
    for _ in range(10_000):
        if check():
            return
        await anyio.sleep(0.001)
    raise AssertionError("the emulator never got there")


def lookups(emu: Emulator) -> int:
    return emu.counters.requests_by_route["list_runs"]


FAULTS = {"lost_response": Fault.lost_response(), "late_commit": Fault.late_commit(LONG)}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_a_batch_cancelled_while_an_item_looks_for_its_run_holds_it_unknown(
    fault: Fault,
) -> None:
    async with emulator(list_lag=LONG) as emu, client_for(emu.url) as client:
        emu.faults.next("create", fault)
        with anyio.CancelScope() as scope:
            async with client.batch(max_concurrency=1) as batch:
                batch.submit_many(requests(3))  # 1 and 2 wait for the only slot
                await wait_until(lambda: lookups(emu) >= 1)
                scope.cancel()
        outcomes = [f.outcome for f in batch.futures]
        committed = batch._engine.snapshot().committed_usd
        emu.advance(2 * LONG)  # the late commit is stored now
        (run,) = emu.runs()
    first, *queued = outcomes
    assert first is not None
    assert isinstance(first.error, CreateOutcomeUnknownError)
    assert first.error.client_ref == run["client_ref"]
    assert first.error.idempotency_key
    assert batch.uncertain_client_refs == [run["client_ref"]]
    assert committed >= first.estimated_usd > 0  # its money held
    assert all(o is not None and isinstance(o.error, NotSubmittedError) for o in queued)


async def test_a_rerun_that_follows_the_outcomes_makes_exactly_one_run_per_item() -> None:
    # What a user (or a script) does next: items "not submitted" are sent
    # again, fresh; an unknown one is sent again under its own client_ref (same
    # Idempotency-Key), which the server answers with the run it made.
    async with emulator(list_lag=LONG) as emu, client_for(emu.url) as client:
        emu.faults.next("create", Fault.lost_response())
        with anyio.CancelScope() as scope:
            async with client.batch(max_concurrency=1) as batch:
                batch.submit_many(requests(3))
                await wait_until(lambda: lookups(emu) >= 1)
                scope.cancel()
        outcomes = [f.outcome for f in batch.futures]
        again = [rerun_request(o) for o in outcomes if o is not None]
        async with client_for(emu.url, window=10.0) as second, second.batch() as rerun:
            rerun.submit_many(again)
        assert all(o.ok for o in await rerun.gather())
        per_prompt = Counter(run["input"]["prompt"] for run in emu.runs())
    assert per_prompt == Counter({f"prompt {i}": 1 for i in range(3)})


def rerun_request(outcome: Outcome) -> GenerateRequest:
    request = outcome.request
    assert isinstance(request, GenerateRequest)
    if isinstance(outcome.error, CreateOutcomeUnknownError):
        return request.model_copy(update={"client_ref": outcome.error.client_ref})
    assert isinstance(outcome.error, NotSubmittedError)
    return request


async def cancelled_in_the_429_wait(emu: Emulator, client: RunflowClient) -> tuple[Any, Any]:
    """Submit one item, cancel its batch once a create was answered 429; the future, batch."""
    with anyio.CancelScope() as scope:
        async with client.batch() as batch:
            future = batch.submit(requests(1)[0])
            await wait_until(lambda: emu.counters.faults_injected.get("status_429", 0) >= 1)
            await anyio.sleep(0.01)
            scope.cancel()
    return future, batch


async def test_cancelled_while_throttled_before_any_run_it_is_not_submitted() -> None:
    # A 429 proves nothing was made: cancelled while it waits to retry, the
    # item was never created, and says so.
    async with emulator() as emu, client_for(emu.url) as client:
        emu.faults.next("create", Fault.status(429, retry_after=LONG))
        future, batch = await cancelled_in_the_429_wait(emu, client)
        outcome = future.outcome
        created = emu.counters.runs_created
    assert outcome is not None
    assert isinstance(outcome.error, NotSubmittedError)
    assert batch.uncertain_client_refs == []
    assert created == 0


async def test_a_client_closed_while_an_item_looks_for_its_run_leaves_it_unknown() -> None:
    async with emulator(list_lag=LONG) as emu:
        client = client_for(emu.url)
        emu.faults.next("create", Fault.lost_response())
        with pytest.raises(ClientClosedError):  # noqa: PT012 - the block is the subject
            async with client.batch() as batch:
                future = batch.submit(requests(1)[0])
                await wait_until(lambda: lookups(emu) >= 1)
                await client.aclose()
        outcome = future.outcome
        (run,) = emu.runs()
    assert outcome is not None
    assert isinstance(outcome.error, CreateOutcomeUnknownError)
    assert isinstance(outcome.error.__cause__, ClientClosedError)
    assert batch.uncertain_client_refs == [run["client_ref"]]


async def test_a_dataset_cancelled_mid_window_is_reconciled_by_the_next_run(
    tmp_path: Path,
) -> None:
    inp = tmp_path / "prompts.txt"
    inp.write_text("".join(f"a tiny test image number {i}\n" for i in range(3)))
    items = read_generate_file(inp, Defaults(image_size=(64, 64)))
    out = tmp_path / "out"
    async with emulator(list_lag=LONG, idempotency_mode="ignored") as emu:
        emu.faults.next("create", Fault.late_commit(LONG), times=3)
        async with client_for(emu.url) as client:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run_dataset, client, out, items)
                    await wait_until(lambda: lookups(emu) >= 3)
                    scope.cancel()
        with Journal.open(out) as journal:
            states = {e.state for e in journal.items()}
        emu.advance(4 * LONG)  # stored, and past the lag: a lookup sees them
        async with client_for(emu.url, window=10.0) as client:
            summary = await run_dataset(client, out, items)
        per_ref = Counter(run["client_ref"] for run in emu.runs())
    assert states == {ItemState.SUBMITTING}  # to reconcile, not "not submitted"
    assert summary.succeeded == 3
    assert len(per_ref) == 3
    assert set(per_ref.values()) == {1}  # adopted, never created again


async def test_cancelled_in_a_429_wait_after_an_ambiguous_attempt_it_stays_unknown() -> None:
    # The first attempt lost its answer (the run exists, the list lags past the
    # window), the resend is answered 429: the item waits to be admitted again,
    # its reservation given back. Cancelled there, it may still have a run.
    async with emulator(list_lag=LONG) as emu, client_for(emu.url, window=10.0) as client:
        emu.faults.next("create", Fault.lost_response())
        emu.faults.next("create", Fault.status(429, retry_after=LONG))
        future, batch = await cancelled_in_the_429_wait(emu, client)
        outcome = future.outcome
        committed = batch._engine.snapshot().committed_usd
        (run,) = emu.runs()
    assert outcome is not None
    assert isinstance(outcome.error, CreateOutcomeUnknownError)
    assert outcome.error.client_ref == run["client_ref"]
    assert committed >= outcome.estimated_usd > 0  # held again, though the wait gave it back

"""Issue 13: ``create_via`` - batch creates of up to 100 runs, each run still its own item."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from runflow_async import (
    BatchEvent,
    BatchRouteRefusedError,
    ClientClosedError,
    ConfigurationError,
    CreateOutcomeUnknownError,
    GenerateRequest,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
    UnprocessableEntityError,
)
from runflow_async._batch.grouping import AUTO_THRESHOLD, BatchRoutes, CreateGroups
from runflow_async._http.batch_answer import refused_items
from runflow_async._http.create import CreateProgress
from runflow_async.emulator import Emulator, Fault, FaultRates
from tests.conftest import API_KEY

SCALE = 0.002
BATCH_CREATES = frozenset({"batch_create"})
MODEL = "black-forest-labs/flux-2-klein-9b"


def requests(n: int, start: int = 0) -> list[GenerateRequest]:
    return [GenerateRequest(prompt=f"prompt {i}", image_size="square") for i in range(start, n)]


def client_for(url: str, scale: float = SCALE, **options: Any) -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=scale),
        poll=PollPolicy(time_scale=scale),
        max_connections=64,
        **options,
    )


def emulator(**overrides: Any) -> Emulator:
    options: dict[str, Any] = {"time_scale": SCALE, "median_duration": 2.0, "seed": 13}
    options.update(overrides)
    return Emulator(api_keys=frozenset({API_KEY}), **options)


def runs_per_item(emu: Emulator) -> Counter[str]:
    emu.advance(60.0)  # every late commit is stored by now
    return Counter(run["client_ref"] for run in emu.runs())


async def test_250_items_through_batches_take_at_most_3_batch_creates_and_all_settle() -> None:
    async with emulator() as emu, client_for(emu.url, create_via="batches") as client:
        async with client.batch(max_concurrency=250) as batch:
            futures = batch.submit_many(requests(250))
        outcomes = [await f.wait() for f in futures]
        counters = emu.counters
        runs = emu.runs()
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]
    assert counters.requests_by_route["batch_create"] <= 3
    assert counters.requests_by_route["create"] == 0
    assert counters.runs_created == 250
    refs = {r["client_ref"] for r in runs}
    assert len(refs) == 250  # each item kept its own client_ref
    assert all(r["batch_id"] for r in runs)
    assert {o.run_id for o in outcomes} == {r["id"] for r in runs}
    assert all(o.billed_usd is not None and o.billed_usd > 0 for o in outcomes)


async def test_a_batch_takes_a_slot_per_item_and_reserves_every_estimate() -> None:
    seen: list[tuple[int, Decimal]] = []
    async with emulator() as emu, client_for(emu.url, create_via="batches") as client:

        def observe(event: BatchEvent) -> None:
            if event.kind == "submitted":  # told once the item's run is known
                snap = batch._engine.snapshot()
                seen.append((snap.in_flight, snap.committed_usd))

        batch = client.batch(max_concurrency=30, max_cost_usd=100, probe_runs=30, observer=observe)
        async with batch:
            batch.submit_many(requests(90))
            estimate = batch.estimate(requests(1)).total_usd
        outcomes = await batch.gather()
        counters = emu.counters
    assert all(o.ok for o in outcomes)
    assert counters.runs_created == 90
    assert max(n for n, _ in seen) == 30  # a batch of 30 holds 30 slots, never more
    # When the first batch's runs are known, all 30 estimates were reserved before it went out.
    assert seen[0][1] >= 30 * estimate
    # Items of a 30-slot window go out 30 at a time (more when slots free together).
    assert 3 <= counters.requests_by_route["batch_create"] <= 90 // AUTO_THRESHOLD + 3


async def test_auto_falls_back_to_per_run_creates_on_a_model_that_is_not_batch_capable() -> None:
    async with (
        emulator(batch_models="none") as emu,
        client_for(emu.url, create_via="auto") as client,
    ):
        async with client.batch(max_concurrency=50) as batch:
            batch.submit_many(requests(120))
        first = await batch.gather()
        async with client.map(requests(160, 120), max_concurrency=40) as outcomes:
            later = [o async for o in outcomes]  # remembered: no batch create tried again
        counters = emu.counters
        per_item = runs_per_item(emu)
    assert all(o.ok for o in first + later)
    assert counters.requests_by_route["batch_create"] == 1
    assert counters.runs_created == 160
    assert max(per_item.values()) == 1  # zero duplicates
    assert counters.client_ref_duplicates == 0


async def test_auto_creates_a_few_items_per_run_and_many_by_batch() -> None:
    async with emulator() as emu, client_for(emu.url, create_via="auto") as client:
        async with client.batch(max_concurrency=50) as batch:
            batch.submit_many(requests(AUTO_THRESHOLD - 1))
        few = await batch.gather()
        creates = emu.counters.requests_by_route["create"]
        async with client.batch(max_concurrency=50) as batch:
            batch.submit_many(requests(50))
        many = await batch.gather()
        counters = emu.counters
    assert all(o.ok for o in few + many)
    assert creates == AUTO_THRESHOLD - 1
    assert counters.requests_by_route["batch_create"] == 1
    assert counters.runs_created == AUTO_THRESHOLD - 1 + 50


async def test_batches_on_a_model_that_refuses_them_is_a_typed_error_and_creates_nothing() -> None:
    async with (
        emulator(batch_models="none") as emu,
        client_for(emu.url) as client,
    ):
        async with client.batch(max_concurrency=20, create_via="batches") as batch:
            batch.submit_many(requests(40))
        outcomes = await batch.gather()
        counters = emu.counters
    assert all(isinstance(o.error, BatchRouteRefusedError) for o in outcomes)
    assert counters.runs_created == 0
    assert counters.requests_by_route["batch_create"] == 1  # the refusal is remembered
    assert "create_via='runs'" in str(outcomes[0].error)


async def test_the_guide_body_shape_is_spoken_with_the_option_and_refused_clearly_without() -> None:
    async with emulator(batch_body="guide") as emu:
        async with client_for(emu.url, create_via="batches", batch_body_shape="guide") as client:
            async with client.batch(max_concurrency=100) as batch:
                batch.submit_many(requests(100))
            spoken = await batch.gather()
        reads = emu.counters.requests_by_route["batch_items"]
        async with client_for(emu.url, create_via="batches") as client:
            async with client.batch(max_concurrency=10) as batch:
                batch.submit_many(requests(10))
            refused = await batch.gather()
        async with client_for(emu.url, create_via="auto") as client:
            async with client.batch(max_concurrency=20) as batch:
                batch.submit_many(requests(20))
            fell_back = await batch.gather()
        counters = emu.counters
    assert all(o.ok for o in spoken + fell_back)
    assert reads >= 1  # the guide's lean answer names no runs: the items endpoint does
    assert all(isinstance(o.error, BatchRouteRefusedError) for o in refused)
    assert "batch_body_shape='guide'" in str(refused[0].error)
    assert counters.runs_created == 120
    assert counters.client_ref_duplicates == 0


@pytest.mark.parametrize("mode", ["at_receipt", "at_commit", "ignored"])
async def test_ambiguous_batch_creates_never_create_an_item_twice(mode: str) -> None:
    # Answers lost after the batch was made (a 502 or a dropped connection),
    # and batches stored late: with the key honoured or ignored, never twice.
    faults = FaultRates(
        rate_lost_create=0.3,
        rate_late_commit=0.2,
        late_commit_seconds=3.0,
        applies_to=BATCH_CREATES,
    )
    async with (
        emulator(idempotency_mode=mode, faults=faults, list_lag=1.0, time_scale=0.01) as emu,
        client_for(emu.url, scale=0.01, create_via="batches") as client,
    ):
        async with client.batch(max_concurrency=60) as batch:
            batch.submit_many(requests(300))
        outcomes = await batch.gather()
        per_item = runs_per_item(emu)
        counters = emu.counters
    assert sum(counters.faults_injected.values()) >= 2
    assert [ref for ref, n in per_item.items() if n > 1] == []
    assert counters.client_ref_duplicates == 0
    assert counters.runs_created == 300
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]


@pytest.mark.parametrize("mode", ["at_receipt", "ignored"])
async def test_a_lost_batch_answer_is_found_by_client_ref_and_never_resent(mode: str) -> None:
    async with (
        emulator(idempotency_mode=mode) as emu,
        client_for(emu.url, create_via="batches") as client,
    ):
        emu.faults.next("batch_create", Fault.lost_response(None))
        async with client.batch(max_concurrency=40) as batch:
            batch.submit_many(requests(40))
        outcomes = await batch.gather()
        counters = emu.counters
    assert all(o.ok for o in outcomes)
    assert counters.requests_by_route["batch_create"] == 1  # found, not sent again
    assert counters.runs_created == 40


async def test_a_batch_refused_before_it_was_made_is_sent_again_with_its_key() -> None:
    async with emulator() as emu, client_for(emu.url, create_via="batches") as client:
        emu.faults.next("batch_create", Fault.status(503, "MODEL_UNAVAILABLE"))
        emu.faults.next("batch_create", Fault.status(429))
        async with client.batch(max_concurrency=40) as batch:
            batch.submit_many(requests(40))
        outcomes = await batch.gather()
        counters = emu.counters
    assert all(o.ok for o in outcomes)
    assert counters.requests_by_route["batch_create"] == 3
    assert counters.runs_created == 40


def test_a_422_naming_items_refuses_those_items_only() -> None:
    named = UnprocessableEntityError(
        "2 errors",
        errors=[
            {"field": "input.3.prompt", "message": "item 3: is required"},
            {"field": "items.7.input.seed", "message": "item 7: too large"},
            {"field": "input[1]", "message": "bad"},
            {"field": "input.99.prompt", "message": "out of range"},
            "not a dict",
        ],
    )
    assert refused_items(named, 10) == {
        3: ["item 3: is required"],
        7: ["item 7: too large"],
        1: ["bad"],
    }
    route = UnprocessableEntityError("no", errors=[{"field": "input", "message": "shape"}])
    assert refused_items(route, 10) == {}
    assert refused_items(UnprocessableEntityError("BATCH_NOT_SUPPORTED"), 10) == {}


async def test_an_unknown_create_via_is_refused_with_the_closest_name() -> None:
    with pytest.raises(ConfigurationError, match="batches"):
        RunflowClient(API_KEY, create_via="batch")  # type: ignore[arg-type]
    async with client_for("http://127.0.0.1:9") as client:
        with pytest.raises(ConfigurationError, match="create_via"):
            client.batch(create_vai="runs")  # type: ignore[call-arg]


FAULTS = {
    "lost_502": Fault.lost_response(),
    "lost_dropped": Fault.lost_response(None),
    "late_commit": Fault.late_commit(3.0),
    "late_answer": Fault.late_commit(3.0, answer=True),
    "html_ok": Fault.html_ok(),
    "malformed": Fault.malformed(),
    "bad_run_id": Fault.bad_run_id(None),
    "reused_run_id": Fault.reused_run_id(),
    "drop": Fault.drop(),
    "status_500": Fault.status(500),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("mode", ["at_receipt", "ignored"])
async def test_every_create_fault_on_the_batch_route_makes_each_item_once(
    fault: str, mode: str
) -> None:
    async with (
        emulator(idempotency_mode=mode, list_lag=0.5) as emu,
        client_for(emu.url, create_via="batches") as client,
    ):
        async with client.batch(max_concurrency=30) as batch:
            batch.submit_many(requests(30))  # a first batch, so that a reused id exists
        first = await batch.gather()
        emu.faults.next("batch_create", FAULTS[fault])
        async with client.batch(max_concurrency=30) as batch:
            batch.submit_many(requests(60, 30))
        outcomes = await batch.gather()
        per_item = runs_per_item(emu)
        counters = emu.counters
    assert counters.faults_injected  # it happened
    assert [ref for ref, n in per_item.items() if n > 1] == []
    assert counters.client_ref_duplicates == 0
    assert all(o.ok for o in first)
    if fault == "html_ok":  # a 2xx nobody made: it may exist, so it is never sent again
        assert counters.runs_created == 30
        assert all(isinstance(o.error, CreateOutcomeUnknownError) for o in outcomes)
        return
    assert counters.runs_created == 60
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:2]


def starter(tg: TaskGroup) -> Callable[[Callable[[], Awaitable[None]]], None]:
    def start(task: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await task()

        tg.start_soon(run)

    return start


async def test_a_group_whose_create_raises_hands_the_error_to_each_of_its_items() -> None:
    client = client_for("http://127.0.0.1:9")
    async with client:
        pass  # closed: its batch create raises ClientClosedError
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        groups = CreateGroups(
            client._transport, BatchRoutes(), mode="batches", shape="openapi", start=starter(tg)
        )

        async def one(i: int) -> None:
            try:
                await groups.create(MODEL, f"rfa-{i}", {"prompt": "x"}, CreateProgress())
            except ClientClosedError as exc:
                errors.append(exc)

        for i in range(3):
            tg.start_soon(one, i)
    assert len(errors) == 3
    assert groups.sent == 1


async def test_an_item_cancelled_while_its_group_gathers_is_not_sent() -> None:
    client = client_for("http://127.0.0.1:9")
    async with client:
        pass
    async with anyio.create_task_group() as tg:
        groups = CreateGroups(
            client._transport, BatchRoutes(), mode="batches", shape="openapi", start=starter(tg)
        )
        with anyio.move_on_after(0):  # cancelled at its first wait
            await groups.create(MODEL, "rfa-0", {"prompt": "x"}, CreateProgress())
    assert groups.sent == 0


async def test_a_lost_batch_answer_whose_children_carry_no_ref_is_resent_with_its_key() -> None:
    # A server that keeps client_ref on the batch items only: the lookup finds nothing,
    # so once the visibility window passed the batch is sent again with the same
    # Idempotency-Key (documented for batches), and the server replays it.
    async with (
        emulator(batch_child_refs=False) as emu,
        client_for(emu.url, create_via="batches") as client,
    ):
        emu.faults.next("batch_create", Fault.lost_response(None))
        async with client.batch(max_concurrency=40) as batch:
            batch.submit_many(requests(40))
        outcomes = await batch.gather()
        counters = emu.counters
    assert all(o.ok for o in outcomes)
    assert counters.requests_by_route["batch_create"] == 2  # the resend, replayed
    assert counters.batch_replays == 1
    assert counters.runs_created == 40


@pytest.mark.xfail(
    reason="known limit: a server that ignores Idempotency-Key and keeps client_ref off "
    "the children leaves a lost batch create unprovable; the client resends it and the "
    "items are billed twice (the batch route documents the key, so it is the assumed ground)",
    strict=True,
)
async def test_a_lost_batch_answer_with_the_key_ignored_and_no_child_refs_bills_once() -> None:
    async with (
        emulator(batch_child_refs=False, honour_idempotency_key=False) as emu,
        client_for(emu.url, create_via="batches") as client,
    ):
        emu.faults.next("batch_create", Fault.lost_response(None))
        async with client.batch(max_concurrency=40) as batch:
            batch.submit_many(requests(40))
        await batch.gather()
        counters = emu.counters
    assert counters.runs_created == 40

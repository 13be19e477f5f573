"""The batch engine against the emulator: limits, budget, credit, 429 storms, cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import anyio
import pytest

from runflow_async import (
    BatchEvent,
    BatchOptions,
    BudgetExceededError,
    ConfigurationError,
    CreateOutcomeUnknownError,
    EditRequest,
    GenerateRequest,
    InsufficientCreditError,
    NotSubmittedError,
    Outcome,
    PollPolicy,
    ProgressBarObserver,
    RetryPolicy,
    RunAbandonedError,
    RunFailedError,
    RunflowClient,
    RunTimeoutError,
    UnprocessableEntityError,
)
from runflow_async._batch.engine import Engine
from runflow_async._batch.hooks import WorkItem
from runflow_async._batch.limits import Pacer
from runflow_async._waiting.list_poller import WaitStrategy
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY, client_tasks

SCALE = 0.005  # a "10 s" run takes 50 ms


def requests(n: int, size: str = "square") -> list[GenerateRequest]:
    return [GenerateRequest(prompt=f"prompt {i}", image_size=size) for i in range(n)]  # type: ignore[arg-type]


def scaled_client(url: str, *, wait_strategy: WaitStrategy = "auto") -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=SCALE),
        poll=PollPolicy(time_scale=SCALE),
        wait_strategy=wait_strategy,
        max_connections=64,
    )


def emulator(**overrides: object) -> Emulator:
    options: dict[str, object] = {"time_scale": SCALE, "median_duration": 10.0, "seed": 3}
    options.update(overrides)
    return Emulator(**options)


async def test_max_in_flight_is_exactly_the_concurrency_limit() -> None:
    # Every run lasts 100 ms, far longer than 50 creates take even on a busy
    # machine, so the first wave is fully in flight together.
    async with (
        emulator(median_duration=20.0, duration_sigma=0.0) as emu,
        scaled_client(emu.url) as client,
    ):
        async with client.batch(max_concurrency=50) as batch:
            batch.submit_many(requests(1000))
        outcomes = await batch.gather()
        counters = emu.counters
    assert all(o.ok for o in outcomes)
    assert counters.runs_created == 1000
    assert counters.max_in_flight == 50


async def test_over_budget_submit_many_sends_nothing() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        async with client.batch(max_cost_usd="0.05") as batch:
            with pytest.raises(BudgetExceededError) as info:
                batch.submit_many(requests(10, "square_hd"))  # 10 x $0.006
        assert sum(emu.counters.requests_by_route.values()) == 0
    err = info.value
    assert err.estimate.total_usd == Decimal("0.060000")
    assert err.max_cost_usd == Decimal("0.05")
    assert "nothing was submitted" in str(err)


async def test_billing_above_the_estimate_never_breaks_the_cap() -> None:
    cap = Decimal("0.05")
    async with emulator(cost_multiplier=Decimal("1.3")) as emu, scaled_client(emu.url) as client:
        async with client.batch(max_concurrency=10, max_cost_usd=cap) as batch:
            for request in requests(60):  # $0.0015 estimated, $0.00195 billed each
                batch.submit(request)
        outcomes = await batch.gather()
        billed = emu.counters.billed_usd
    report = batch.cost_report()
    assert billed <= cap
    assert report.billed_usd == billed
    assert report.estimated_usd < report.billed_usd
    skipped = [o for o in outcomes if isinstance(o.error, NotSubmittedError)]
    assert skipped
    assert {o.error.reason for o in skipped} == {"budget"}  # type: ignore[union-attr]
    assert sum(o.ok for o in outcomes) == emu.counters.runs_created


async def test_insufficient_credit_stops_submitting_and_lets_in_flight_runs_finish() -> None:
    async with emulator(credit_usd=Decimal("0.012")) as emu, scaled_client(emu.url) as client:
        async with client.batch(max_concurrency=4) as batch:
            batch.submit_many(requests(40))
        outcomes = await batch.gather()
        counters = emu.counters
    ok = [o for o in outcomes if o.ok]
    refused = [o for o in outcomes if not o.ok]
    assert len(ok) == counters.runs_created == counters.runs_billed  # every created run finished
    assert refused
    for outcome in refused:
        assert isinstance(outcome.error, NotSubmittedError)
        assert outcome.error.reason == "insufficient_credit"
    # Only creates already on the wire when the first 402 came back can see one.
    assert counters.responses_by_status[402] <= 4


async def storm(adaptive: bool) -> tuple[list[Outcome], int]:
    async with emulator(max_in_flight_runs=8) as emu, scaled_client(emu.url) as client:
        async with client.batch(max_concurrency=40, adaptive=adaptive) as batch:
            batch.submit_many(requests(120))
        outcomes = await batch.gather()
        return outcomes, emu.counters.rate_limited


async def test_adaptive_window_takes_fewer_429s_in_a_storm() -> None:
    adaptive, adaptive_429s = await storm(adaptive=True)
    _, fixed_429s = await storm(adaptive=False)
    assert all(o.ok for o in adaptive)
    assert adaptive_429s < fixed_429s


async def test_cancelling_a_batch_leaves_no_task_and_lists_every_created_run() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        before = client_tasks()
        seen = 0
        with anyio.move_on_after(10):  # a safety net only; we cancel much earlier
            with anyio.CancelScope() as scope:
                async with client.batch(max_concurrency=20) as batch:
                    batch.submit_many(requests(200))
                    async for _ in batch.as_completed():
                        seen += 1
                        if seen == 30:
                            scope.cancel()
        assert client_tasks() == before
        created = {run["id"]: run["client_ref"] for run in emu.runs()}
    exposed = set(batch.run_ids)
    uncertain = set(batch.uncertain_client_refs)
    assert 30 <= len(created) < 200
    for run_id, client_ref in created.items():
        assert run_id in exposed or client_ref in uncertain
    outcomes = [f.outcome for f in batch.futures]
    assert all(o is not None for o in outcomes)
    abandoned = [o for o in outcomes if o and isinstance(o.error, RunAbandonedError)]
    assert {o.run_id for o in abandoned} <= set(batch.unfinished_run_ids)
    assert all(o.run_id for o in abandoned)


async def test_one_failure_never_cancels_its_siblings() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        emu.faults.next("create", Fault.fail_run(code="NSFW", message="Blocked."))
        async with client.batch(max_concurrency=5) as batch:
            futures = batch.submit_many(requests(10))
        outcomes = await batch.gather()
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 1
    assert isinstance(failed[0].error, RunFailedError)
    assert failed[0].run_id is not None
    with pytest.raises(RunFailedError):
        await futures[failed[0].index]
    assert (await futures[(failed[0].index + 1) % 10]).run_id


async def test_fail_fast_stops_everything_at_the_first_failure() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        emu.faults.next("create", Fault.fail_run())
        async with client.batch(max_concurrency=5, fail_fast=True) as batch:
            batch.submit_many(requests(50))
        outcomes = await batch.gather()
        created = {run["id"] for run in emu.runs()}
    kinds = {type(o.error).__name__ for o in outcomes if o.error is not None}
    assert "RunFailedError" in kinds
    assert "NotSubmittedError" in kinds
    assert len(created) < 50
    assert created <= set(batch.run_ids)


async def test_outcomes_arrive_as_completed_and_gather_keeps_order() -> None:
    async with (
        emulator() as emu,
        scaled_client(emu.url) as client,
        client.batch(max_concurrency=8) as batch,
    ):
        futures = batch.submit_many(requests(30))
        streamed = [o.index async for o in batch.as_completed()]
        gathered = await batch.gather()
    assert sorted(streamed) == list(range(30))
    assert [o.index for o in gathered] == list(range(30))
    assert [f.run_id for f in futures] == [o.run_id for o in gathered]
    assert "ok" in repr(futures[0])


@pytest.mark.parametrize("strategy", ["auto", "list", "per_run"])
async def test_every_wait_strategy_completes_every_run(strategy: WaitStrategy) -> None:
    async with emulator() as emu, scaled_client(emu.url, wait_strategy=strategy) as client:
        async with client.batch(max_concurrency=20) as batch:
            batch.submit_many(requests(60))
        outcomes = await batch.gather()
        routes = emu.counters.requests_by_route
    assert all(o.ok for o in outcomes)
    if strategy == "per_run":
        assert routes["list_runs"] == 0
        assert routes["get_run"] >= 60
    else:
        # The list answers carry the full finished runs: no per-run reads at all.
        # (How few list requests it takes is the benchmark's business, not a test's.)
        assert routes["get_run"] == 0
        assert routes["list_runs"] > 0


async def test_run_timeouts_keep_the_run_listed_as_unfinished() -> None:
    async with (
        emulator(median_duration=10_000, duration_sigma=0.0) as emu,
        scaled_client(emu.url) as client,
    ):
        async with client.batch(timeout=0.05) as batch:
            future = batch.submit(GenerateRequest(prompt="slow"))
        outcome = await future.wait()
    assert isinstance(outcome.error, RunTimeoutError)
    assert batch.unfinished_run_ids == [outcome.run_id]
    assert batch.cost_report().unsettled_run_ids == (outcome.run_id,)


class Bar:
    def __init__(self) -> None:
        self.n = 0
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s


async def test_observers_see_every_event_and_drive_a_progress_bar() -> None:
    events: list[BatchEvent] = []
    bar = Bar()
    progress = ProgressBarObserver(bar)

    def observe(event: BatchEvent) -> None:
        events.append(event)
        progress(event)

    async with emulator() as emu, scaled_client(emu.url) as client:
        emu.faults.next("create", Fault.status(429, code="RATE_LIMITED", retry_after=1))
        emu.faults.next("create", Fault.fail_run())
        async with client.batch(max_concurrency=3, observer=observe) as batch:
            batch.submit_many(requests(6))
    kinds = [e.kind for e in events]
    assert kinds.count("submitted") == 6
    assert kinds.count("succeeded") == 5
    assert kinds.count("failed") == 1
    assert kinds.count("cost_settled") == 6
    assert "throttled" in kinds
    assert "retried" in kinds
    assert bar.n == 6
    assert "done=5 failed=1 in_flight=0" in bar.postfix


async def test_pacer_spaces_starts_with_no_burst() -> None:
    pacer = Pacer(1000.0)  # one start per millisecond
    starts: list[float] = []

    async def one() -> None:
        await pacer.wait_turn()
        starts.append(anyio.current_time())

    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    # The n-th start never comes before n intervals have passed: no burst.
    for n, start in enumerate(sorted(starts)):
        assert start >= t0 + n * 0.001


async def test_map_pulls_lazily_and_stops_pulling_when_left_early() -> None:
    pulled = 0

    def endless() -> object:
        nonlocal pulled
        while True:
            pulled += 1
            yield f"prompt {pulled}"

    async with emulator() as emu, scaled_client(emu.url) as client:
        before = client_tasks()
        got = 0
        async with client.map(endless(), max_concurrency=10) as outcomes:  # type: ignore[arg-type]
            async for outcome in outcomes:
                assert outcome.ok
                got += 1
                if got == 100:
                    break
        assert client_tasks() == before
    assert pulled <= 100 + 10 + 1
    assert set(outcomes.unfinished_run_ids) <= {r["id"] for r in emu.runs()}


async def test_map_over_an_async_iterable_yields_every_outcome() -> None:
    async def source() -> AsyncIterator[GenerateRequest]:
        for request in requests(25):
            yield request

    async with emulator() as emu, scaled_client(emu.url) as client:
        async with client.map(source(), max_concurrency=5) as outcomes:
            indexes = sorted([o.index async for o in outcomes])
        assert outcomes.billed_usd == emu.counters.billed_usd
    assert indexes == list(range(25))
    assert outcomes.submitted == 25


async def test_client_estimate_probes_inputs_and_matches_the_bill() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        first = await client.generate("a cat", image_size=(512, 384))
        edit = EditRequest(prompt="make it night", image_urls=[first.images[0].url])
        estimate = await client.estimate([edit])
        assert estimate.items[0].input_sizes == ((512, 384),)
        blind = await client.estimate([edit], probe_inputs=False)
        assert blind.total_usd > estimate.total_usd  # unknown inputs are assumed 1 MP
        result = await client.run(edit)
    assert result.cost_usd == estimate.total_usd


async def test_map_stops_pulling_an_endless_input_when_credit_runs_out() -> None:
    def endless() -> Iterator[str]:
        n = 0
        while True:
            n += 1
            yield f"prompt {n}"

    async with emulator(credit_usd=Decimal("0.01")) as emu, scaled_client(emu.url) as client:
        async with client.map(endless(), max_concurrency=3) as outcomes:
            results = [o async for o in outcomes]
        created = emu.counters.runs_created
    refused = [o for o in results if not o.ok]
    assert refused
    assert all(isinstance(o.error, NotSubmittedError) for o in refused)
    assert sum(o.ok for o in results) == created


async def test_map_hands_a_queued_items_refusal_to_a_reader_that_was_busy() -> None:
    # The soak's flake: the stop refused the queued item while the reader was not in
    # receive(), the unbuffered hand-over failed, and the outcome was dropped.
    async with emulator(credit_usd=Decimal("0")) as emu, scaled_client(emu.url) as client:
        async with client.map([f"prompt {i}" for i in range(3)], max_concurrency=1) as m:
            for _ in range(2000):  # busy elsewhere until the 402 stops the map
                if m.stop_reason is not None:
                    break
                await anyio.sleep(0.001)
            assert m.stop_reason == "insufficient_credit"
            outcomes = [o async for o in m]
        assert emu.counters.requests_by_route["create"] == 1
    assert sorted(o.index for o in outcomes) == [0, 1]  # 2 was never pulled: the map stopped
    assert all(isinstance(o.error, NotSubmittedError) for o in outcomes)
    assert m.submitted == 1


async def test_an_unbuffered_engine_hands_every_refusal_to_a_reader_that_was_busy() -> None:
    async with (
        emulator(credit_usd=Decimal("0")) as emu,
        scaled_client(emu.url) as client,
        client.engine(outcome_buffer=0, max_concurrency=1) as engine,
    ):
        for i in range(3):
            engine.submit(WorkItem(i, GenerateRequest(prompt=f"p{i}")))
        for _ in range(2000):  # not reading until the 402 has stopped it
            if engine.stop_reason is not None:
                break
            await anyio.sleep(0.001)
        late = WorkItem(3, GenerateRequest(prompt="late"))
        engine.submit(late)  # refused at once, handed when read
        got = [await engine.outcomes.receive() for _ in range(4)]
        assert emu.counters.requests_by_route["create"] == 1
    assert sorted(o.index for o in got) == [0, 1, 2, 3]
    assert all(isinstance(o.error, NotSubmittedError) for o in got)


async def _leave_with_refusals_unread(client: RunflowClient) -> Engine:
    async with client.engine(outcome_buffer=0, max_concurrency=1) as engine:
        for i in range(3):
            engine.submit(WorkItem(i, GenerateRequest(prompt=f"p{i}")))
        for _ in range(2000):
            if engine.stop_reason is not None:
                break
            await anyio.sleep(0.001)
        raise KeyError(engine)


async def test_refusals_nobody_reads_are_dropped_when_the_block_is_left() -> None:
    async with emulator(credit_usd=Decimal("0")) as emu, scaled_client(emu.url) as client:
        with pytest.raises(KeyError) as left:
            await _leave_with_refusals_unread(client)
        engine = left.value.args[0]
        assert engine.stop_reason == "insufficient_credit"
        assert engine.snapshot().undelivered == {}  # none of them had a run
        assert emu.counters.requests_by_route["create"] == 1


async def test_refusals_end_quietly_when_the_reader_closes_the_outcomes() -> None:
    async with (
        emulator(credit_usd=Decimal("0")) as emu,
        scaled_client(emu.url) as client,
        client.engine(outcome_buffer=0, max_concurrency=1) as engine,
    ):
        for i in range(3):
            engine.submit(WorkItem(i, GenerateRequest(prompt=f"p{i}")))
        for _ in range(2000):
            if engine.stop_reason is not None:
                break
            await anyio.sleep(0.001)
        engine.outcomes.close()  # two refusals were waiting for a reader
        engine.submit(WorkItem(3, GenerateRequest(prompt="late")))
    assert engine.snapshot().undelivered == {}
    assert emu.counters.requests_by_route["create"] == 1


async def test_items_submitted_after_a_stop_are_refused_at_once() -> None:
    async with (
        emulator(credit_usd=Decimal("0")) as emu,
        scaled_client(emu.url) as client,
        client.batch(max_concurrency=2) as batch,
    ):
        first = batch.submit(GenerateRequest(prompt="a"))
        outcome = await first.wait()
        late = batch.submit(GenerateRequest(prompt="b"))
        assert late.done()
        assert batch.window == 2
    assert isinstance(outcome.error, NotSubmittedError)
    assert outcome.error.reason == "insufficient_credit"
    assert isinstance(outcome.error.__cause__, InsufficientCreditError)
    assert emu.counters.requests_by_route["create"] == 1


async def test_a_refused_create_is_the_items_typed_error_and_fail_fast_stops() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        emu.faults.next("create", Fault.status(422, code="VALIDATION_ERROR"))
        async with client.batch(max_concurrency=1, fail_fast=True) as batch:
            batch.submit_many(requests(5))
        outcomes = await batch.gather()
    assert isinstance(outcomes[0].error, UnprocessableEntityError)
    assert outcomes[0].run_id is None
    assert {o.error.reason for o in outcomes[1:]} == {"fail_fast"}  # type: ignore[union-attr]
    assert batch.cost_report().items == ()


async def test_an_unknown_create_outcome_is_listed_for_reconciliation() -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        emu.faults.next("create", Fault.lost_response(502))
        emu.faults.next("list_runs", Fault.status(400), times=5)
        async with client.batch() as batch:
            future = batch.submit(GenerateRequest(prompt="a", client_ref="mine-1"))
        outcome = await future.wait()
    assert isinstance(outcome.error, CreateOutcomeUnknownError)
    assert batch.uncertain_client_refs == ["mine-1"]
    assert emu.runs()[0]["client_ref"] == "mine-1"


async def test_an_unknown_create_holds_its_money_and_never_stalls_the_batch() -> None:
    # A square run costs $0.0015 (reserved at 1.5x until one settles, then at
    # the 1.25 margin). The first create's outcome is unknown: it may be billed,
    # so its money stays held; two more runs fit beside it and the last item
    # must be refused, not wait forever for a settlement that cannot come (a
    # deadlock, seen in a soak).
    async with emulator() as emu, scaled_client(emu.url) as client:
        emu.faults.next("create", Fault.lost_response(502))
        emu.faults.next("list_runs", Fault.status(400), times=5)
        with anyio.fail_after(10):
            async with client.map(requests(4), max_concurrency=1, max_cost_usd="0.006") as m:
                outcomes = sorted([o async for o in m], key=lambda o: o.index)
    assert isinstance(outcomes[0].error, CreateOutcomeUnknownError)
    assert outcomes[1].ok
    assert outcomes[2].ok
    assert isinstance(outcomes[3].error, NotSubmittedError)
    assert outcomes[3].error.reason == "budget"


async def test_a_throttled_create_never_deadlocks_with_items_waiting_for_money() -> None:
    # One slot; runs cost $0.0015, reserved at 1.5x ($0.00225) until one settles;
    # the cap fits one reservation. Item 0 is answered 429 and gives its slot
    # back for the cool-down; item 1 takes the slot and needs money. Item 0
    # used to keep its money and wait for the slot: each waited on the other.
    async with emulator() as emu, scaled_client(emu.url) as client:
        emu.faults.next("create", Fault.status(429, retry_after="2"))
        with anyio.fail_after(10):
            async with client.map(requests(3), max_concurrency=1, max_cost_usd="0.004") as m:
                outcomes = sorted([o async for o in m], key=lambda o: o.index)
        billed = emu.counters.billed_usd
    assert sum(o.ok for o in outcomes) == 2  # whichever two got the money first
    refused = [o.error for o in outcomes if not o.ok]
    assert isinstance(refused[0], NotSubmittedError)
    assert refused[0].reason == "budget"
    assert billed == Decimal("0.003")


async def test_items_wait_for_in_flight_runs_to_settle_instead_of_being_refused() -> None:
    # Ten runs at $0.0015 fit a $0.016 cap exactly as estimated, but until one
    # settles every reservation counts at the 1.5 safety factor: later items
    # must wait for the first bills, not be refused.
    async with emulator() as emu, scaled_client(emu.url) as client:
        async with client.batch(max_concurrency=10, max_cost_usd="0.016") as batch:
            batch.submit_many(requests(10))
        outcomes = await batch.gather()
        billed = emu.counters.billed_usd
    assert all(o.ok for o in outcomes)
    assert billed == Decimal("0.015")


@pytest.mark.parametrize(
    "options",
    [{"max_concurrency": 0}, {"max_cost_usd": "-1"}, {"submits_per_second": 0.0}],
)
async def test_nonsense_batch_options_are_refused(options: BatchOptions) -> None:
    async with emulator() as emu, scaled_client(emu.url) as client:
        with pytest.raises(ConfigurationError):
            client.batch(**options)
        with pytest.raises(ConfigurationError):
            client.map([], **options)


async def test_a_refused_key_stops_the_batch_after_the_first_create() -> None:
    async with (
        emulator(api_keys=frozenset({API_KEY})) as emu,
        RunflowClient(
            "rf_wrong_key_000000000000",
            base_url=emu.url,
            retry=RetryPolicy(time_scale=SCALE),
            poll=PollPolicy(time_scale=SCALE),
        ) as client,
    ):
        async with client.batch(max_concurrency=8) as batch:
            batch.submit_many(requests(200))
        outcomes = await batch.gather()
        sent = emu.counters.requests_by_route["create"]
    assert sent <= 8  # only those already in flight
    assert batch.stop_reason == "authentication"
    assert all(isinstance(o.error, NotSubmittedError) for o in outcomes)
    assert {o.error.reason for o in outcomes if isinstance(o.error, NotSubmittedError)} == {
        "authentication"
    }

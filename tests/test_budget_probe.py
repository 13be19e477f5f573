"""The cap holds however much the API over-bills: a probe, a margin, recalibration (issue 11).

The emulator bills ``cost_multiplier`` times the price the client estimates (an
independent server's view of the money); every check of the cap reads the
emulator's own bill, never the client's.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from runflow_async import (
    BatchEvent,
    ConfigurationError,
    GenerateRequest,
    NotSubmittedError,
    Outcome,
    PollPolicy,
    PricingPolicy,
    RetryPolicy,
    RunFailedError,
    RunflowClient,
    RunTimeoutError,
)
from runflow_async._batch.budget import BudgetLedger
from runflow_async._batch.hooks import NoHooks, WorkItem
from runflow_async._waiting.list_poller import WaitStrategy
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY
from tests.test_dataset_cli import cli_args, prompts_file, run_cli

SCALE = 0.001
CAP = Decimal("0.10")  # the cap: 22 runs fit at 3x, 6 at 10x
SQUARE = Decimal("0.0015")  # the estimate of one 512x512 run


def client_for(url: str, **kwargs: Any) -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=SCALE),
        poll=PollPolicy(time_scale=SCALE),
        max_connections=64,
        **kwargs,
    )


def emulator(multiplier: str, **overrides: Any) -> Emulator:
    options: dict[str, Any] = {"time_scale": SCALE, "seed": 11}
    options.update(overrides)
    return Emulator(api_keys=frozenset({API_KEY}), cost_multiplier=Decimal(multiplier), **options)


def squares(n: int) -> list[GenerateRequest]:
    return [GenerateRequest(prompt=f"p{i}", image_size="square") for i in range(n)]


async def run_batch(client: RunflowClient, events: list[BatchEvent], n: int) -> list[Outcome]:
    async with client.batch(max_concurrency=50, max_cost_usd=CAP, observer=events.append) as b:
        for request in squares(n):  # one by one: submit_many refuses a list over the cap
            b.submit(request)
    return await b.gather()


async def run_map(client: RunflowClient, events: list[BatchEvent], n: int) -> list[Outcome]:
    options: dict[str, Any] = {"observer": events.append}
    async with client.map(squares(n), max_concurrency=50, max_cost_usd=CAP, **options) as m:
        return [o async for o in m]


@pytest.mark.parametrize("api", [run_batch, run_map], ids=["batch", "map"])
@pytest.mark.parametrize(("multiplier", "factor"), [("3", "3.75"), ("10", "12.5")])
async def test_the_cap_holds_at_3x_and_10x_billing_at_concurrency_50(
    api: Any, multiplier: str, factor: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The old engine started the whole first wave on its 1.5 guess: $0.20
    # billed at 3x, $0.67 at 10x, for a $0.10 cap.
    events: list[BatchEvent] = []
    caplog.set_level(logging.WARNING, logger="runflow_async")
    async with emulator(multiplier) as emu, client_for(emu.url) as client:
        with anyio.fail_after(30):
            outcomes = await api(client, events, 200)
        billed = emu.counters.billed_usd
        created = emu.counters.runs_created
    assert billed <= CAP
    assert billed > CAP - SQUARE * Decimal(multiplier) * Decimal("1.25")  # the cap is used
    ok = [o for o in outcomes if o.ok]
    assert len(ok) == created
    assert all(o.result is not None and o.result.images for o in ok)
    assert {o.error.reason for o in outcomes if isinstance(o.error, NotSubmittedError)} == {
        "budget"
    }
    # The probe billed over its 1.5x reservation: said once, as an event and a warning.
    (event,) = [e for e in events if e.kind == "budget_recalibrated"]
    assert (event.previous_factor, event.factor) == (Decimal("1.5"), Decimal(factor))
    assert event.billed_usd == SQUARE * Decimal(multiplier)
    assert any("billing factor is now" in r.getMessage() for r in caplog.records)


async def test_the_dataset_cli_keeps_to_its_max_cost_at_3x(tmp_path: Path) -> None:
    # 64x64 images are estimated at $0.000023 and billed $0.000069: 20 fit.
    # The old engine admitted 40 at once on the 1.5 guess and billed $0.00276.
    cap = Decimal("0.0014")
    out = tmp_path / "out"
    async with emulator("3", median_duration=100.0, duration_sigma=0.0) as emu:  # 100 ms
        argv = cli_args(prompts_file(tmp_path, 200), out, emu.url, "--concurrency", "50")
        code = await run_cli([*argv, "--max-cost", str(cap)])
        counters = emu.counters
    assert code == 1  # not every prompt fitted
    assert counters.billed_usd <= cap
    assert counters.runs_created >= 15


async def test_with_a_cap_the_probe_runs_alone_and_without_one_the_first_wave_is_full() -> None:
    # Runs last 200 ms, far longer than 50 creates take.
    async with (
        Emulator(time_scale=0.005, median_duration=40.0, duration_sigma=0.0, seed=2) as emu,
        client_for(emu.url) as client,
    ):
        async with client.batch(max_concurrency=50) as batch:
            batch.submit_many(squares(50))
        assert all(o.ok for o in await batch.gather())
        assert emu.counters.max_in_flight == 50  # no cap: no probe, no slowdown
        since = emu.counters.runs_created
        async with client.batch(max_concurrency=50, max_cost_usd="1") as capped:
            capped.submit_many(squares(50))
        assert all(o.ok for o in await capped.gather())
        runs = emu.report(since=since)["runs"]
    probe, *rest = runs
    assert all(run["created"] >= probe["end"] for run in rest)
    # Once calibrated (1x billed, factor 1.25), the rest start together.
    assert sum(run["created"] < rest[0]["end"] for run in rest) == 49


async def test_a_failed_probe_is_released_and_the_next_run_probes_again() -> None:
    async with emulator("3") as emu, client_for(emu.url) as client:
        emu.faults.next("create", Fault.fail_run())
        events: list[BatchEvent] = []
        with anyio.fail_after(30):
            outcomes = await run_batch(client, events, 200)
        billed = emu.counters.billed_usd
        runs = emu.report()["runs"]
    assert isinstance(outcomes[0].error, RunFailedError)
    assert runs[0]["status"] == "failed"
    assert runs[1]["created"] >= runs[0]["end"]  # the second probe, alone too
    assert all(run["created"] >= runs[1]["end"] for run in runs[2:])
    assert billed <= CAP
    assert sum(o.ok for o in outcomes) >= 15


async def test_a_timed_out_probe_is_held_and_the_next_run_probes_again() -> None:
    # The probe's status reads hang past its timeout: it ends RunTimeoutError,
    # its money stays held (the run goes on and bills 3x), and a new probe starts.
    strategy: WaitStrategy = "per_run"
    async with emulator("3") as emu, client_for(emu.url, wait_strategy=strategy) as client:
        emu.faults.next("get_run", Fault.slow(300.0))
        with anyio.fail_after(30):
            async with client.batch(max_concurrency=50, max_cost_usd=CAP, timeout=0.05) as b:
                for request in squares(200):
                    b.submit(request)
            outcomes = await b.gather()
        billed = emu.counters.billed_usd
    assert isinstance(outcomes[0].error, RunTimeoutError)
    assert billed <= CAP
    assert sum(o.ok for o in outcomes) >= 10


class Timeline(NoHooks):
    """Admissions (``on_submitting`` follows ``_admit`` with no await) and ends, in order."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int]] = []

    def on_submitting(self, index: int, client_ref: str, /) -> None:
        self.steps.append(("admit", index))

    def on_outcome(self, outcome: Outcome, /) -> None:
        self.steps.append(("end", outcome.index))

    def observe(self, event: BatchEvent) -> None:
        if event.kind == "budget_recalibrated":
            assert event.index is not None
            self.steps.append(("recalibrated", event.index))


async def test_a_bill_over_its_reservation_pauses_admission_until_runs_in_flight_settle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The server rounds each image up to a whole megapixel; the client does
    # not: a 1024x1024 probe bills as estimated, every 512x512 run 4x.
    caplog.set_level(logging.WARNING, logger="runflow_async")
    timeline = Timeline()
    async with (
        Emulator(
            api_keys=frozenset({API_KEY}), time_scale=SCALE, seed=5,
            pricing=PricingPolicy(round_up_per_image=True),
        ) as emu,
        client_for(emu.url) as client,
        client.engine(
            hooks=timeline, max_concurrency=50, max_cost_usd="1", observer=timeline.observe
        ) as engine,
    ):  # fmt: skip
        engine.submit(WorkItem(0, GenerateRequest(prompt="probe", image_size="square_hd")))
        first = await engine.outcomes.receive()
        assert first.ok
        assert engine.snapshot().billing_factor == Decimal("1.25")
        for i, request in enumerate(squares(80), start=1):
            engine.submit(WorkItem(i, request))
        await engine.end_input()
        outcomes = [first] + [o async for o in engine.outcomes]
        snapshot = engine.snapshot()
    assert all(o.ok for o in outcomes)
    assert snapshot.billing_factor == Decimal(5)  # 4x seen, times 1.25
    steps = timeline.steps
    first_change = steps.index(next(s for s in steps if s[0] == "recalibrated"))
    admitted = {i for kind, i in steps[:first_change] if kind == "admit"}
    ended = {i for kind, i in steps[:first_change] if kind == "end"}
    in_flight = admitted - ended
    assert in_flight  # they were admitted on the 1.25 factor: none starts beside them
    next_admit = next(n for n, s in enumerate(steps) if n > first_change and s[0] == "admit")
    assert in_flight <= {i for kind, i in steps[:next_admit] if kind == "end"}
    # After the pause every run is reserved at 5x: no bill exceeds it again.
    last_change = max(n for n, s in enumerate(steps) if s[0] == "recalibrated")
    assert last_change < next_admit
    assert any("no new run starts" in r.getMessage() for r in caplog.records)


async def test_an_untrusted_cost_holds_the_reservation_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every cost reads negative: nothing calibrates, so runs go one at a time,
    # each holding its reservation; spending never drops, the images are kept.
    caplog.set_level(logging.WARNING, logger="runflow_async")
    async with emulator("1", reported_cost="negative") as emu, client_for(emu.url) as client:
        async with client.engine(max_concurrency=50, max_cost_usd="0.01") as engine:
            for i, request in enumerate(squares(10)):
                engine.submit(WorkItem(i, request))
            await engine.end_input()
            outcomes = [o async for o in engine.outcomes]
            snapshot = engine.snapshot()
        billed = emu.counters.billed_usd
        max_in_flight = emu.counters.max_in_flight
    ok = [o for o in outcomes if o.ok]
    assert len(ok) == 4  # 4 x 0.0015 x 1.5 <= 0.01
    assert all(o.result is not None and o.result.images and o.billed_usd is None for o in ok)
    assert snapshot.spent_usd == 0
    assert snapshot.billed_usd == 0  # unknown, never a negative amount
    assert snapshot.committed_usd == 4 * SQUARE * Decimal("1.5")
    assert billed <= Decimal("0.01")
    assert max_in_flight == 1
    assert sum("no usable cost" in r.getMessage() for r in caplog.records) == 4


def test_several_probe_runs_and_the_margin_are_options() -> None:
    ledger = BudgetLedger(Decimal(10), margin=Decimal("1.1"), probe_runs=2)
    assert ledger.try_reserve(Decimal(1))
    assert ledger.try_reserve(Decimal(1))
    assert not ledger.try_reserve(Decimal(1))  # the probe is two runs
    settled = ledger.settle(Decimal(1), Decimal(2))
    assert settled.recalibration is not None  # billed 2x, reserved at 1.5x
    assert settled.recalibration.paused  # the other probe is in flight
    assert ledger.factor == Decimal("2.2")
    assert not ledger.try_reserve(Decimal(1))  # paused until it settles
    assert ledger.settle(Decimal(1), Decimal(2)).recalibration is not None
    assert ledger.try_reserve(Decimal(1))  # 4 + 2.2 <= 10: admitting again
    assert ledger.settle(Decimal(1), Decimal("2.2")).recalibration is None


@pytest.mark.parametrize(
    "options",
    [
        {"probe_runs": 0},
        {"billing_margin": "0.9"},
        {"billing_margin": "NaN"},
        {"billing_margin": "lots"},
        {"max_cost_usd": "Infinity"},
    ],
)
async def test_nonsensical_budget_options_are_refused(options: dict[str, Any]) -> None:
    async with client_for("http://127.0.0.1:9") as client:
        with pytest.raises(ConfigurationError):
            client.engine(**options)


def test_a_nan_cost_is_held_and_a_bill_for_a_free_estimate_is_still_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from runflow_async._batch.budget import recalibrated

    ledger = BudgetLedger(Decimal(1))
    assert ledger.try_reserve(Decimal("0.1"))
    assert ledger.settle(Decimal("0.1"), Decimal("NaN")).billed_usd is None
    assert (ledger.spent, ledger.held, ledger.in_flight) == (Decimal(0), Decimal("0.1"), 0)
    assert ledger.try_reserve(Decimal(0))  # priced at nothing, billed anyway
    change = ledger.settle(Decimal(0), Decimal("0.01")).recalibration
    assert change is not None
    assert not ledger.calibrated  # no ratio to learn from
    caplog.set_level(logging.WARNING, logger="runflow_async")
    event = recalibrated(3, "run-1", change)
    assert (event.kind, event.index, event.billed_usd) == (
        "budget_recalibrated",
        3,
        Decimal("0.01"),
    )
    assert "?x its estimate" in caplog.records[-1].getMessage()

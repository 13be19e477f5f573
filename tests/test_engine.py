"""The engine as a pipeline stage uses it: typed hooks, re-attaching, backpressure, a snapshot."""

from __future__ import annotations

from decimal import Decimal

from runflow_async import GenerateRequest, NotSubmittedError, Outcome, Run
from runflow_async._batch.hooks import NoHooks, WorkItem
from runflow_async.emulator import Emulator
from tests.test_batch_boundary import creates, scaled_client


class Recorder(NoHooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.stops: list[str] = []

    def on_submitting(self, index: int, client_ref: str, /) -> None:
        self.events.append(("submitting", index))

    def on_created(self, index: int, run: Run, /) -> None:
        self.events.append(("created", index))

    def on_outcome(self, outcome: Outcome, /) -> None:
        self.events.append(("outcome", outcome.index))

    def on_stop(self, reason: str, /) -> None:
        self.stops.append(reason)


async def test_hooks_come_write_ahead_and_an_attached_run_is_never_created() -> None:
    async with (
        Emulator(time_scale=0.005, median_duration=2.0, seed=5) as emu,
        scaled_client(emu.url) as client,
    ):
        existing = await client.submit(GenerateRequest(prompt="made earlier"))
        hooks = Recorder()
        async with client.engine(hooks=hooks, max_concurrency=2) as engine:
            engine.submit(WorkItem(0, GenerateRequest(prompt="new")))
            engine.submit(WorkItem(1, GenerateRequest(prompt="x"), run_id=existing.id))
            await engine.end_input()
            outcomes = [o async for o in engine.outcomes]
        assert creates(emu) == 2  # the earlier submit and item 0, never item 1
    assert {o.index: o.ok for o in outcomes} == {0: True, 1: True}
    assert next(o for o in outcomes if o.index == 1).run_id == existing.id
    zero = [e for e in hooks.events if e[1] == 0]
    assert zero == [("submitting", 0), ("created", 0), ("outcome", 0)]
    assert ("submitting", 1) not in hooks.events
    assert engine.snapshot().unfinished == {}


async def test_put_keeps_to_the_window_and_the_budget_holds() -> None:
    async with (
        Emulator(time_scale=0.005, median_duration=10.0, seed=6) as emu,
        scaled_client(emu.url) as client,
    ):
        hooks = Recorder()
        async with client.engine(hooks=hooks, max_concurrency=3, max_cost_usd="0.01") as eng:
            put = 0
            for i in range(10):
                if not await eng.put(WorkItem(i, GenerateRequest(prompt=f"p{i}"))):
                    break
                put += 1
                assert eng.snapshot().in_flight <= 3
            await eng.end_input()
            outcomes = [o async for o in eng.outcomes]
            snapshot = eng.snapshot()
    assert put == 10  # nothing stopped the engine: items over budget end one by one
    assert emu.counters.max_in_flight <= 3
    assert snapshot.spent_usd <= Decimal("0.01")
    ok = [o for o in outcomes if o.ok]
    refused = [o for o in outcomes if not o.ok]
    assert len(ok) == creates(emu) >= 1
    assert refused
    assert all(isinstance(o.error, NotSubmittedError) for o in refused)
    assert {o.error.reason for o in refused if isinstance(o.error, NotSubmittedError)} == {"budget"}

"""Issue 11: a create answered with a run that is not its own is never trusted.

A buggy server may tell two creates they made one run while it made (and
bills) a run for each: the second item must find its own run by its
``client_ref`` and collect it, or a paid image is lost.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from runflow_async import (
    BatchEvent,
    CreateOutcomeUnknownError,
    GenerateRequest,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
)
from runflow_async._core.models import Run
from runflow_async._dataset.input import Defaults, read_generate_file
from runflow_async._dataset.journal import ItemState, Journal, JournalStateError
from runflow_async._dataset.pipeline import run_dataset
from runflow_async._http.owners import RunOwners
from runflow_async._waiting.list_poller import WaitStrategy
from runflow_async.emulator import Emulator, Fault, FaultRates
from runflow_async.emulator._cli import _config, add_emulator_command
from tests.conftest import API_KEY
from tests.test_create import Start, lookup_server

SCALE = 0.002
CREATES = frozenset({"create"})


def requests(n: int) -> list[GenerateRequest]:
    return [GenerateRequest(prompt=f"prompt {i}", image_size="square") for i in range(n)]


def client_for(url: str, *, wait_strategy: WaitStrategy = "auto", **policy: Any) -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=SCALE, **policy),
        poll=PollPolicy(time_scale=SCALE),
        wait_strategy=wait_strategy,
    )


def emulator(**overrides: Any) -> Emulator:
    options: dict[str, Any] = {"time_scale": SCALE, "seed": 5}
    options.update(overrides)
    return Emulator(api_keys=frozenset({API_KEY}), **options)


def billed_runs(emu: Emulator) -> dict[str, str]:
    """Every run the emulator made: id -> client_ref."""
    return {run["id"]: run["client_ref"] for run in emu.runs()}


@pytest.mark.parametrize("strategy", ["auto", "list", "per_run"])
async def test_creates_answered_with_a_reused_run_id_each_collect_their_own_run(
    strategy: WaitStrategy, caplog: pytest.LogCaptureFixture
) -> None:
    # Every create after the first is answered with the previous create's run
    # id; the server made (and bills) a run for each of them.
    n = 12
    events: list[BatchEvent] = []
    caplog.set_level(logging.INFO, logger="runflow_async")
    async with emulator() as emu, client_for(emu.url, wait_strategy=strategy) as client:
        emu.faults.next("create", Fault.reused_run_id(), times=n)
        with anyio.fail_after(20):
            async with client.batch(max_concurrency=4, observer=events.append) as batch:
                batch.submit_many(requests(n))
            outcomes = await batch.gather()
        made = billed_runs(emu)
        counters = emu.counters
    assert counters.faults_injected["reused_run_id"] == n
    assert all(o.ok for o in outcomes)
    ids = [o.run_id for o in outcomes]
    assert len(set(ids)) == n  # distinct: each item has its own run
    assert set(ids) == set(made)  # every run billed is collected
    assert counters.runs_billed == counters.runs_created == n
    for outcome in outcomes:
        assert outcome.result is not None
        assert outcome.result.images
        assert made[outcome.run_id or ""] == outcome.result.run.client_ref
    assert any(e.kind == "reconciled" for e in events)  # the user can see it
    assert "not this create's own" in caplog.text


async def test_random_reused_run_ids_never_lose_a_billed_run() -> None:
    faults = FaultRates(rate_reused_run_id=0.3, applies_to=CREATES)
    async with emulator(faults=faults) as emu, client_for(emu.url) as client:
        async with client.batch(max_concurrency=8) as batch:
            batch.submit_many(requests(40))
        outcomes = await batch.gather()
        made = billed_runs(emu)
        counters = emu.counters
    assert counters.faults_injected["reused_run_id"] >= 5
    assert all(o.ok for o in outcomes)
    assert sorted(o.run_id or "" for o in outcomes) == sorted(made)
    assert counters.runs_created == 40


async def test_generate_answered_with_the_previous_run_id_returns_its_own_run() -> None:
    async with emulator() as emu, client_for(emu.url) as client:
        first = await client.generate("a lighthouse", image_size="square")
        emu.faults.next("create", Fault.reused_run_id())
        second = await client.generate("a harbour", image_size="square")
        made = billed_runs(emu)
        creates = emu.counters.requests_by_route["create"]
    assert first.run.id != second.run.id
    assert set(made) == {first.run.id, second.run.id}
    assert made[second.run.id] == second.run.client_ref
    assert creates == 2  # found by its client_ref, never sent again


async def test_concurrent_generates_answered_with_one_run_id_each_get_their_own() -> None:
    results: list[Any] = []
    async with emulator() as emu, client_for(emu.url) as client:
        warm = await client.generate("warm-up", image_size="square")
        emu.faults.next("create", Fault.reused_run_id(), times=6)

        async def one(n: int) -> None:
            results.append(await client.generate(f"harbour {n}", image_size="square"))

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(one, n)
        made = billed_runs(emu)
    ids = {result.run.id for result in results}
    assert len(ids) == 6
    assert ids == set(made) - {warm.run.id}  # none of them ended on another's run


async def test_an_answer_naming_another_client_ref_is_looked_up(inline_server: Start) -> None:
    refs: list[str] = []

    def post(body: dict[str, Any]) -> web.StreamResponse:
        refs.append(body["client_ref"])
        return web.json_response({"id": "run-theirs", "client_ref": "rfa-someone-else"}, status=201)

    def listing(q: str) -> web.StreamResponse:
        return web.json_response({"items": [{"id": "run-ours", "client_ref": refs[0]}]})

    handler, calls = lookup_server(post=post, listing=listing)
    url = await inline_server(handler)
    async with client_for(url) as client:
        run = await client.submit(requests(1)[0])
    assert run.id == "run-ours"
    assert calls == ["POST", "GET"]


async def test_an_untrusted_answer_whose_run_never_shows_is_unknown(inline_server: Start) -> None:
    def post(body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"id": "run-theirs", "client_ref": "rfa-someone-else"}, status=201)

    handler, calls = lookup_server(post=post, listing=lambda q: web.json_response({"items": []}))
    url = await inline_server(handler)
    async with client_for(url) as client:
        with pytest.raises(CreateOutcomeUnknownError, match="rfa-someone-else"):
            await client.submit(requests(1)[0])
    assert calls.count("POST") == 1  # never sent again


def journal_runs(out: Path) -> dict[str, tuple[str | None, str | None]]:
    with Journal.open(out) as journal:
        return {e.key: (e.run_id, e.client_ref) for e in journal.items()}


async def test_the_dataset_journal_records_each_item_s_real_run(tmp_path: Path) -> None:
    inp = tmp_path / "prompts.txt"
    inp.write_text("".join(f"a tiny test image number {i}\n" for i in range(8)))
    items = read_generate_file(inp, Defaults(image_size=(64, 64)))
    out = tmp_path / "out"
    async with emulator() as emu, client_for(emu.url) as client:
        emu.faults.next("create", Fault.reused_run_id(), times=8)
        summary = await run_dataset(client, out, items, concurrency=3)
        made = billed_runs(emu)
    recorded = journal_runs(out)
    assert summary.succeeded == 8
    assert len({run_id for run_id, _ in recorded.values()}) == 8
    for run_id, client_ref in recorded.values():
        assert run_id is not None
        assert made[run_id] == client_ref  # the run the server made for this item
    rows = (out / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 8
    assert Counter(made.values()).most_common(1)[0][1] == 1
    with Journal.open(out) as journal:
        assert {e.state for e in journal.items()} == {ItemState.SUCCEEDED}


async def stranger_run(emu: Emulator) -> str:
    """A run made by another client: this test's client never heard of it."""
    async with client_for(emu.url) as other:
        return (await other.submit(requests(1)[0])).id


async def test_an_item_whose_own_run_never_shows_ends_unknown_with_its_ref_listed() -> None:
    # The answer names another client's run (unknown here, so trusted at first);
    # reading it shows another client_ref. The item's own run exists but the
    # list lags past the window: unknown, listed, money held, never resent.
    async with emulator(list_lag=5000.0) as emu:
        await stranger_run(emu)
        async with client_for(emu.url, wait_strategy="per_run") as client:
            emu.faults.next("create", Fault.reused_run_id())
            async with client.batch() as batch:
                batch.submit(requests(2)[1])
            (outcome,) = await batch.gather()
            snapshot = batch._engine.snapshot()
        mine = [run for run in emu.runs() if run["input"]["prompt"] == "prompt 1"]
        creates = emu.counters.requests_by_route["create"]
    assert isinstance(outcome.error, CreateOutcomeUnknownError)
    assert outcome.run_id is None  # not the stranger's run
    assert batch.uncertain_client_refs == [mine[0]["client_ref"]]
    assert snapshot.unfinished == {}
    assert snapshot.committed_usd >= outcome.estimated_usd > 0
    assert creates == 2


async def test_generate_whose_own_run_never_shows_raises_unknown() -> None:
    async with emulator(list_lag=5000.0) as emu:
        await stranger_run(emu)
        async with client_for(emu.url) as client:
            emu.faults.next("create", Fault.reused_run_id())
            with pytest.raises(CreateOutcomeUnknownError, match="another create's"):
                await client.generate("a harbour", image_size="square")
        creates = emu.counters.requests_by_route["create"]
    assert creates == 2


async def test_a_stranger_s_run_read_later_is_swapped_for_the_item_s_own() -> None:
    async with emulator() as emu:
        theirs = await stranger_run(emu)
        async with client_for(emu.url) as client:
            emu.faults.next("create", Fault.reused_run_id())
            result = await client.generate("a harbour", image_size="square")
        made = billed_runs(emu)
    assert result.run.id != theirs
    assert set(made) == {theirs, result.run.id}


def test_the_reused_run_id_rate_is_a_flag_and_is_validated() -> None:
    parser = argparse.ArgumentParser()
    add_emulator_command(parser.add_subparsers())
    config = _config(parser.parse_args(["emulator", "--rate-reused-run-id", "0.25"]))
    assert config.faults.rate_reused_run_id == 0.25
    with pytest.raises(ValueError, match="rate_reused_run_id"):
        FaultRates(rate_reused_run_id=1.5)
    with pytest.raises(ValueError, match="add up to"):
        FaultRates(rate_reused_run_id=0.6, rate_late_commit=0.6)


def test_the_journal_moves_a_created_item_only_off_the_run_it_names(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        journal.add_items([("a", 0, "generate", Decimal("0.01"))])
        journal.mark_submitting("a", "rfa-a")
        journal.own_run("a", "run-theirs")
        journal.own_run("a", "run-theirs")  # the same run again: nothing changes
        journal.own_run("a", "run-mine")
        entry = journal.get("a")
        assert entry is not None
        assert (entry.state, entry.run_id) == (ItemState.CREATED, "run-mine")
        with pytest.raises(JournalStateError, match="run-theirs cannot be replaced"):
            journal.move_run("a", "run-theirs", "run-other")


def test_run_owners_forget_the_oldest_and_the_latest_word_wins() -> None:
    owners = RunOwners()
    for n in range(100_001):
        owners.own(f"run-{n}", f"rfa-{n}")
    assert owners.doubt(Run(id="run-0"), "rfa-x") is None  # forgotten: the oldest went first
    assert owners.doubt(Run(id="run-1"), "rfa-x") is not None
    owners.own("run-1", "rfa-x")  # a lookup by client_ref says whose it is
    assert owners.doubt(Run(id="run-1"), "rfa-x") is None
    assert owners.doubt(Run(id="run-9", client_ref="rfa-y"), "rfa-x") == "it names client_ref rfa-y"

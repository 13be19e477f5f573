"""The status chain: id filter, documented filters, no filter, per-run; against the emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from aiohttp import web

from runflow_async import GenerateRequest, PollPolicy, RetryPolicy, RunflowClient
from runflow_async._batch.hooks import WorkItem
from runflow_async._batch.outcomes import Outcome
from runflow_async._waiting.list_poller import DurationStats, ListPoller
from runflow_async.emulator import Emulator, EmulatorCounters
from tests.conftest import API_KEY, TIME_SCALE, Handler, make_client

Start = Callable[[Handler], Awaitable[str]]
BATCH = 24


@asynccontextmanager
async def emulated(**overrides: Any) -> AsyncIterator[tuple[Emulator, RunflowClient]]:
    keys = frozenset({API_KEY})
    emulator = Emulator(api_keys=keys, time_scale=TIME_SCALE, seed=7, **overrides)
    async with emulator as emu, make_client(emu.url) as client:
        yield emu, client


async def run_batch(client: RunflowClient, n: int = BATCH, tag: str = "p") -> list[Outcome]:
    async with client.batch(max_concurrency=n) as batch:
        batch.submit_many([GenerateRequest(prompt=f"{tag}{i}") for i in range(n)])
    return await batch.gather()


def assert_own_runs(emu: Emulator, outcomes: list[Outcome], tag: str = "p") -> None:
    """Every item succeeded with the run its own create made (never another client's)."""
    ours = {run["id"]: run for run in emu.runs()}
    assert all(o.ok for o in outcomes)
    for o in outcomes:
        assert o.result is not None
        run = ours[o.result.run.id]  # a KeyError would be a background run
        assert run["input"]["prompt"] == f"{tag}{o.index}"
        assert run["client_ref"] == o.result.run.client_ref
        assert run["status_code"] == o.result.run.status_code == "succeeded"


def by_filter(counters: EmulatorCounters) -> dict[str, int]:
    return {k: v for k, v in counters.list_requests_by_filter.items() if v}


@pytest.mark.parametrize(
    ("mode", "steps"),
    [("all", {"id"}), ("no-id", {"id", "documented"}), ("none", {"id", "documented", "none"})],
)
async def test_each_filter_mode_is_served_by_a_list_and_never_run_by_run(
    mode: str, steps: set[str]
) -> None:
    async with emulated(list_filters=mode, background_runs=0.5) as (emu, client):
        outcomes = await run_batch(client)
        counters = emu.counters
    assert_own_runs(emu, outcomes)
    assert counters.requests_by_route.get("get_run", 0) == 0
    sent = by_filter(counters)
    assert set(sent) == steps
    # Each refused step was tried once, then the chain moved on for good; the
    # documented step's refusal may be its fields projection's: asked once without it.
    assert counters.list_refused == {"all": 0, "no-id": 1, "none": 3}[mode]
    if mode != "all":
        assert sent["id"] == 1
    if mode == "none":
        assert sent["documented"] == 2
    assert counters.listed_background > 0 or mode == "all"


async def test_documented_filters_scope_the_list_to_the_batch_window() -> None:
    # Runs of an earlier batch (and the other client's) are out of the window:
    # step 2 lists only terminal runs created since this batch's first create.
    async with emulated(list_filters="no-id", background_runs=0.5) as (emu, client):
        await run_batch(client, 10, "early")
        before = emu.counters
        outcomes = await run_batch(client, 10, "p")
        after = emu.counters
    assert_own_runs(emu, outcomes)
    listed = after.listed_runs - before.listed_runs
    pages = after.list_pages - before.list_pages
    # Each page shows at most the 20 runs (ours and the other client's) of this batch.
    assert 0 < listed <= 20 * pages
    assert after.requests_by_route.get("get_run", 0) == 0


async def test_a_contradicted_step_moves_to_the_next() -> None:
    # A server that accepts every filter and ignores it: the id step sees runs
    # it did not ask about, the documented step runs outside its window; the
    # unfiltered step is right by construction and serves the batch.
    async with emulated(list_ignores_filter=True, background_runs=0.5) as (emu, client):
        await run_batch(client, 4, "early")  # older runs, listed whatever the filter says
        before = emu.counters
        outcomes = await run_batch(client)
        after = emu.counters
    assert_own_runs(emu, outcomes)
    assert after.requests_by_route.get("get_run", 0) == 0
    delta = {k: v - before.list_requests_by_filter.get(k, 0) for k, v in by_filter(after).items()}
    assert delta["id"] == 1
    assert delta["documented"] == 1
    assert delta["none"] > 0


async def test_runs_beyond_the_pages_reach_are_read_one_by_one() -> None:
    # One watched run, then 600 newer runs of the organisation: a tick pays for
    # one page (500 runs) per 4 runs in flight, so the watched run is handed back.
    async with emulated(list_filters="none", background_runs=0.9, median_duration=1e6) as (
        emu,
        client,
    ):
        first = await client.submit(GenerateRequest(prompt="mine"))
        for i in range(60):
            await client.submit(GenerateRequest(prompt=f"more{i}"))
        poller = ListPoller(client._transport, DurationStats(), PollPolicy(time_scale=TIME_SCALE))
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run)
            assert await poller.wait(first.id, first.created_at) is None
            tg.cancel_scope.cancel()
        counters = emu.counters
    assert poller.step == "newest"
    assert counters.list_requests_by_filter["none"] == 1  # one page, no continuation
    assert counters.list_pages_continued == 0


@pytest.mark.parametrize("mode", ["no-id", "none"])
async def test_resumed_runs_are_read_once_then_served_by_the_list(mode: str) -> None:
    # Runs given by id alone (a resumed dataset: no created_at) are read one by
    # one once, to learn their created_at; from then on the list reports them.
    async with emulated(list_filters=mode, median_duration=200, duration_sigma=0) as (emu, c):
        runs = [await c.submit(GenerateRequest(prompt=f"p{i}")) for i in range(4)]
        async with c.engine() as engine:
            for i, run in enumerate(runs):
                engine.submit(WorkItem(i, GenerateRequest(prompt=f"p{i}"), run_id=run.id))
            await engine.end_input()
            outcomes = [o async for o in engine.outcomes]
        counters = emu.counters
    assert_own_runs(emu, outcomes)
    assert counters.requests_by_route["get_run"] == len(runs)  # one read each, no polling
    assert counters.list_pages > 1


def item(i: int, at: datetime, status: str = "succeeded") -> dict[str, Any]:
    created = at.isoformat(timespec="microseconds")
    return {"id": f"run-{i}", "status_code": status, "created_at": created, "cost": "0.0015"}


class OddList:
    """Creates answer at once; the list refuses filters and sorts oldest first."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.routes: list[str] = []
        self.start = datetime(2026, 1, 1, tzinfo=UTC)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            self.routes.append("create")
            body = await request.json()
            at = self.start + timedelta(seconds=len(self.runs))
            run = {**item(len(self.runs), at, "queued"), "client_ref": body["client_ref"]}
            self.runs.append(run)
            return web.json_response(run, status=201)
        if request.path == "/v1/runs":
            if "q" in request.query:
                self.routes.append("filtered list")
                return web.json_response({"code": "INVALID_QUERY"}, status=400)
            self.routes.append("list")
            return web.json_response({"items": self.runs, "next_pq": None})  # oldest first
        self.routes.append("get")
        run = next(r for r in self.runs if r["id"] == request.path.rsplit("/", 1)[1])
        output = {"outputs": [{"url": "https://files.invalid/0.png"}]}
        return web.json_response({**run, "status_code": "succeeded", "output": output})


async def test_an_unsorted_list_contradicts_the_last_step_and_runs_are_polled(
    inline_server: Start,
) -> None:
    api = OddList()
    url = await inline_server(api)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=2)
    client = RunflowClient(API_KEY, base_url=url, retry=retry, poll=PollPolicy(time_scale=0.001))
    async with client, client.batch(max_concurrency=4) as batch:
        batch.submit_many([GenerateRequest(prompt=f"p{i}") for i in range(4)])
    assert all(o.ok for o in await batch.gather())
    # id refused, documented refused (with its projection and without), newest
    # contradicted (oldest first): per-run.
    assert api.routes.count("filtered list") == 3
    assert api.routes.count("list") == 1
    assert "get" in api.routes


class HidesOne(OddList):
    """Lists newest first, unfiltered, but never shows the first run."""

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/runs" and "q" not in request.query:
            self.routes.append("list")
            shown = [r for r in reversed(self.runs) if r["id"] != "run-0"]
            return web.json_response({"items": shown, "next_pq": None})
        return await super().__call__(request)


async def test_a_run_the_unfiltered_list_never_shows_contradicts_it(
    inline_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    api = HidesOne()
    url = await inline_server(api)
    # A visibility window of 50 emulated seconds: 50 real ms.
    retry = RetryPolicy(time_scale=TIME_SCALE, visibility_floor=50, visibility_cap=50)
    client = RunflowClient(API_KEY, base_url=url, retry=retry, poll=PollPolicy(time_scale=0.001))
    async with client, client.batch(max_concurrency=4) as batch:
        batch.submit_many([GenerateRequest(prompt=f"p{i}") for i in range(4)])
    assert all(o.ok for o in await batch.gather())
    # The other runs stay "queued" in the list; once run-0 is overdue, per-run polling.
    assert api.routes.count("list") >= 1
    assert "get" in api.routes
    assert "did not list run run-0 within its reach" in caplog.text

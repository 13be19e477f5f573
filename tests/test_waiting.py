"""The shared list poller verifies the server and falls back when it lies or refuses."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from runflow_async import GenerateRequest, PollPolicy, RetryPolicy, Run, RunflowClient
from runflow_async._waiting.list_poller import DurationStats, WaitStrategy
from tests.conftest import API_KEY, Handler

Start = Callable[[Handler], Awaitable[str]]
SCALE = 0.001


OUTPUT = {"outputs": [{"url": "https://files.invalid/0.png"}]}


class FakeAPI:
    """Runs that finish on their second read; a list endpoint that misbehaves on demand."""

    def __init__(self, listing: str) -> None:
        self.listing = listing
        self.runs: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.routes: list[str] = []
        self.listed: dict[str, bool] = {}

    def view(self, run_id: str) -> dict[str, Any]:
        reads = self.reads[run_id] = self.reads.get(run_id, 0) + 1
        if reads <= 1:
            return {**self.runs[run_id], "status_code": "running"}
        return {**self.runs[run_id], "status_code": "succeeded", "cost": "0.0015", "output": OUTPUT}

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            self.routes.append("create")
            body = await request.json()
            run_id = f"run-{len(self.runs)}"
            self.runs[run_id] = {"id": run_id, "client_ref": body["client_ref"]}
            return web.json_response({**self.runs[run_id], "status_code": "queued"}, status=201)
        if request.path == "/v1/runs":
            self.routes.append("list")
            named = set(re.findall(r"id:([\w-]+)", request.query["q"]))
            ids = [i for i in self.runs if i in named]
            if self.listing == "reject":
                return web.json_response({"code": "INVALID_QUERY"}, status=400)
            if self.listing == "extra":
                return web.json_response({"items": [self.view(i) for i in self.runs]})
            if self.listing == "missing":
                return web.json_response({"items": [self.view(i) for i in ids[1:]]})
            if self.listing == "lagging":
                shown = [i for i in ids if self.listed.get(i)]
                self.listed.update(dict.fromkeys(ids, True))
                items = [self.view(i) for i in shown]
                if "status_code" in request.query["q"]:  # honours the terminal filter
                    items = [i for i in items if i["status_code"] == "succeeded"]
                return web.json_response({"items": items})
            if self.listing == "not_a_list":
                return web.json_response({"items": "nope"})
            # "running": honest on the first (verifying) query, then ignores the status filter.
            items = [{**self.view(i), "status_code": "running"} for i in ids]
            if "status_code" not in request.query["q"]:
                items = [self.view(i) for i in ids]
            return web.json_response({"items": items})
        self.routes.append("get")
        return web.json_response(self.view(request.path.rsplit("/", 1)[1]))


def client_for(url: str, strategy: WaitStrategy = "auto") -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=SCALE, max_attempts=2),
        poll=PollPolicy(time_scale=SCALE),
        wait_strategy=strategy,
    )


@pytest.mark.parametrize("listing", ["reject", "extra", "missing", "not_a_list", "running"])
async def test_auto_falls_back_to_per_run_polling(inline_server: Start, listing: str) -> None:
    api = FakeAPI(listing)
    url = await inline_server(api)
    async with client_for(url) as client, client.batch(max_concurrency=4) as batch:
        batch.submit_many([GenerateRequest(prompt=f"p{i}") for i in range(8)])
    outcomes = await batch.gather()
    assert all(o.ok for o in outcomes)
    assert "get" in api.routes  # per-run polling took over
    # and the list was given up quickly; a run left out is first given the
    # visibility window (10 s, ticks of at least 0.1 s) to show up.
    assert api.routes.count("list") <= (100 if listing == "missing" else 3)


async def test_a_list_that_lags_behind_creates_is_not_given_up(inline_server: Start) -> None:
    # Runs show in the list only from their second list query on (a lagging
    # index): the poller waits for them instead of falling back for good.
    api = FakeAPI("lagging")
    url = await inline_server(api)
    # A scaled clock makes real milliseconds emulated seconds: a window of
    # 1,000 emulated seconds keeps the test from depending on the machine's speed.
    retry = RetryPolicy(time_scale=SCALE, visibility_floor=1000, visibility_cap=1000)
    client = RunflowClient(API_KEY, base_url=url, retry=retry, poll=PollPolicy(time_scale=SCALE))
    async with client, client.batch(max_concurrency=4) as batch:
        batch.submit_many([GenerateRequest(prompt=f"p{i}") for i in range(8)])
    outcomes = await batch.gather()
    assert all(o.ok for o in outcomes)
    assert "get" not in api.routes


async def test_list_strategy_never_falls_back_and_times_out_instead(inline_server: Start) -> None:
    api = FakeAPI("reject")
    url = await inline_server(api)
    async with client_for(url, "list") as client, client.batch(timeout=0.05) as batch:
        future = batch.submit(GenerateRequest(prompt="p"))
    outcome = await future.wait()
    assert type(outcome.error).__name__ == "RunTimeoutError"
    assert "get" not in api.routes


async def test_transient_list_failures_are_retried_next_tick(inline_server: Start) -> None:
    api = FakeAPI("honest")
    failures = [2]

    async def flaky(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/runs" and failures[0]:
            failures[0] -= 1
            return web.json_response({"code": "X"}, status=500)
        return await api(request)

    url = await inline_server(flaky)
    async with client_for(url) as client, client.batch() as batch:
        batch.submit_many([GenerateRequest(prompt="a"), GenerateRequest(prompt="b")])
    assert all(o.ok for o in await batch.gather())
    assert "get" not in api.routes


def run(created: datetime, seconds: float | None) -> Run:
    done = None if seconds is None else created + timedelta(seconds=seconds)
    return Run(id="r", created_at=created, completed_at=done)


def test_duration_stats_learn_the_median() -> None:
    stats = DurationStats(default=2.0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    stats.add(run(start, None))
    stats.add(run(start, 0))
    assert stats.median == 2.0
    for seconds in (1, 2, 3, 4, 5) * 10:
        stats.add(run(start, seconds))
    assert stats.median == 3.0

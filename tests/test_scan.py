"""Steps 2-3 of the status chain, one walk at a time, against a list that pages on demand."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from runflow_async import GenerateRequest, PollPolicy, RetryPolicy, RunflowClient
from runflow_async._core.errors import APIError
from runflow_async._waiting.scan import FIELDS, ChainBroken, Scan
from tests.conftest import API_KEY, TIME_SCALE, Handler
from tests.test_status_chain import OddList

Start = Callable[[Handler], Awaitable[str]]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def item(run_id: str, seconds: float, status: str = "succeeded") -> dict[str, Any]:
    created = at(seconds).isoformat(timespec="microseconds")
    return {"id": run_id, "status_code": status, "created_at": created}


class Pages:
    """Serves ``items`` (newest first) ``size`` per page with an index cursor; logs queries."""

    def __init__(self, items: list[dict[str, Any]], size: int, status: int = 200) -> None:
        self.items, self.size, self.status = items, size, status
        self.queries: list[dict[str, str]] = []

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        if self.status != 200:
            return web.json_response({"code": "X"}, status=self.status)
        start = int(request.query.get("pq", "0"))
        end = start + self.size
        more = str(end) if end < len(self.items) else None
        return web.json_response({"items": self.items[start:end], "next_pq": more})


async def walk(
    start: Start, pages: Pages, watched: dict[str, datetime], *, documented: bool = False
) -> tuple[Scan, Any]:
    url = await start(pages)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=1)
    async with RunflowClient(API_KEY, base_url=url, retry=retry) as client:
        scan = Scan(client._transport, documented=documented, runs_per_page=2)
        return scan, await scan.walk(watched)


NEWEST_FIRST = [item(f"r{i}", 100 - i, "succeeded" if i % 2 else "running") for i in range(10)]


async def test_a_walk_pages_back_to_the_oldest_watched_run_and_no_further(
    inline_server: Start,
) -> None:
    pages = Pages(NEWEST_FIRST, size=3)
    watched = {f"r{i}": at(100 - i) for i in range(1, 6)}
    scan, result = await walk(inline_server, pages, watched)
    # Pages end at r2 (98) and r5 (95): every watched run is listed, no third page.
    assert result.pages == 2
    assert [q.get("pq") for q in pages.queries] == [None, "3"]
    assert {i["id"] for i in result.finished} == {"r1", "r3", "r5"}  # the rest still run
    assert result.seen == set(watched)
    assert result.reach is None
    assert scan.verified
    assert pages.queries[0] == {
        "limit": "500",
        "sort_by": "created_at:desc",
        "fields": ",".join(FIELDS),
    }
    assert scan.projection is True  # the items carried nothing more: honoured


async def test_a_spent_budget_reports_how_far_the_pages_reached(inline_server: Start) -> None:
    pages = Pages(NEWEST_FIRST, size=2)
    watched = {"r1": at(99), "r9": at(91)}  # two runs: one page per tick
    _, result = await walk(inline_server, pages, watched)
    assert result.pages == 1
    assert result.reach == at(99)


async def test_the_documented_step_asks_for_terminal_runs_since_the_earliest_create(
    inline_server: Start,
) -> None:
    finished = [i for i in NEWEST_FIRST if i["status_code"] == "succeeded"]
    pages = Pages(finished[:4], size=500)
    _, result = await walk(inline_server, pages, {"r3": at(97), "r7": at(93)}, documented=True)
    assert {i["id"] for i in result.finished} == {"r3", "r7"}
    q = pages.queries[0]["q"]
    assert q.startswith("(status_code:succeeded OR ")
    assert q.endswith(") AND created_at>=2026-01-01T00:01:32.000000+00:00")


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        (NEWEST_FIRST[:2], "under a terminal filter"),  # a running run under a terminal filter
        ([item("r0", 100), item("r1", 10)], "before the created_at bound"),
        ([item("r0", 1), item("r1", 100)], "newest first"),
        ([{"id": "r0", "status_code": "succeeded", "created_at": "soon"}], "created_at"),
        ([{"id": "r0", "status_code": "succeeded"}], "created_at"),
    ],
)
async def test_contradictions_break_the_step(
    inline_server: Start, items: list[dict[str, Any]], reason: str
) -> None:
    with pytest.raises(ChainBroken, match=reason):
        await walk(inline_server, Pages(items, 500), {"r0": at(100)}, documented=True)


@pytest.mark.parametrize(("status", "error"), [(422, ChainBroken), (503, APIError)])
async def test_a_refusal_breaks_the_step_and_a_server_error_does_not(
    inline_server: Start, status: int, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        await walk(inline_server, Pages([], 500, status=status), {"r0": at(100)})
    assert (caught.type is ChainBroken) == (error is ChainBroken)


async def test_the_list_strategy_keeps_its_last_step_and_times_out(inline_server: Start) -> None:
    api = OddList()
    url = await inline_server(api)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=2)
    client = RunflowClient(
        API_KEY,
        base_url=url,
        retry=retry,
        poll=PollPolicy(time_scale=TIME_SCALE),
        wait_strategy="list",
    )
    async with client, client.batch(timeout=0.05) as batch:
        futures = [batch.submit(GenerateRequest(prompt=p)) for p in "ab"]
    for future in futures:
        outcome = await future.wait()
        assert type(outcome.error).__name__ == "RunTimeoutError"
    assert "get" not in api.routes
    # The unfiltered step lists oldest first (a contradiction), and is tried again and again.
    assert api.routes.count("filtered list") == 3  # documented: with and without fields
    assert api.routes.count("list") > 1


async def test_an_ignored_projection_is_not_asked_for_again(inline_server: Start) -> None:
    full = [{**i, "input": {"prompt": "x" * 50}, "model_id": "m"} for i in NEWEST_FIRST]
    pages = Pages(full, size=3)
    watched = {"r1": at(99), "r4": at(96), "r5": at(95)}
    scan, result = await walk(inline_server, pages, watched)
    assert scan.projection is False
    assert "fields" in pages.queries[0]
    assert "fields" not in pages.queries[1]
    assert {i["id"] for i in result.finished} == {"r1", "r5"}
    assert result.seen == set(watched)


class RefusesFields(Pages):
    """A list that answers 400 to any ``fields`` projection."""

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if "fields" in request.query:
            self.queries.append(dict(request.query))
            return web.json_response({"code": "INVALID_FIELDS"}, status=400)
        return await super().__call__(request)


@pytest.mark.parametrize("documented", [False, True])
async def test_a_refused_projection_is_asked_once_more_without_it(
    inline_server: Start, documented: bool
) -> None:
    finished = [i for i in NEWEST_FIRST if i["status_code"] == "succeeded"]
    pages = RefusesFields(finished[:2], size=500)
    url = await inline_server(pages)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=1)
    async with RunflowClient(API_KEY, base_url=url, retry=retry) as client:
        scan = Scan(client._transport, documented=documented)
        result = await scan.walk({"r3": at(97)})
        assert scan.projection is False
        assert ["fields" in q for q in pages.queries] == [True, False]
        assert {i["id"] for i in result.finished} == {"r3"}
        await scan.walk({"r3": at(97)})  # later walks ask without it from the start
    assert ["fields" in q for q in pages.queries] == [True, False, False]


async def test_a_refusal_without_the_projection_too_breaks_the_step(inline_server: Start) -> None:
    pages = Pages([], 500, status=400)
    with pytest.raises(ChainBroken):
        await walk(inline_server, pages, {"r0": at(100)}, documented=True)
    assert ["fields" in q for q in pages.queries] == [True, False]


async def test_a_walk_stops_paging_for_too_few_runs_further_back(inline_server: Start) -> None:
    # r1 on the first page; r7 and r8 further back: two runs pay for a page
    # (runs_per_page=2), so it reads on; with r8 alone left it would stop.
    pages = Pages(NEWEST_FIRST, size=3)
    _, result = await walk(inline_server, pages, {"r1": at(99), "r7": at(93), "r8": at(92)})
    assert result.pages == 3
    assert result.reach is None
    pages = Pages(NEWEST_FIRST, size=3)
    _, result = await walk(inline_server, pages, {"r1": at(99), "r2": at(98), "r8": at(92)})
    assert result.pages == 1
    assert result.reach == at(98)

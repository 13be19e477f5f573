"""A status scan's cost per listed run, and how often it reads deep pages (counted, not timed)."""

from __future__ import annotations

import cProfile
import pstats
from datetime import datetime
from typing import Any

import anyio
import pytest
from aiohttp import web

from runflow_async import PollPolicy, RetryPolicy, RunflowClient
from runflow_async._core.models import Run
from runflow_async._waiting.list_poller import DurationStats, ListPoller
from runflow_async._waiting.scan import ChainBroken, Scan
from tests.conftest import API_KEY, TIME_SCALE
from tests.test_scan import Pages, Start, at, item


def others(count: int, newest: float, *, finished: bool) -> list[dict[str, Any]]:
    """Other clients' runs, newest first, a millisecond apart (half of them running)."""
    return [
        item(f"other-{i}", newest - (i + 1) / 1000, "succeeded" if finished or i % 2 else "running")
        for i in range(count)
    ]


async def profiled_calls(start: Start, listed: int, *, documented: bool) -> int:
    """Python calls of one walk (after a first, verifying one) over a page of ``listed`` runs."""
    ours = item("ours", 100)
    pages = Pages([ours, *others(listed - 1, 100, finished=documented)], size=500)
    url = await start(pages)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=1)
    watched: dict[str, datetime] = {"ours": at(100), "late": at(99)}  # "late" is not listed yet
    async with RunflowClient(API_KEY, base_url=url, retry=retry) as client:
        scan = Scan(client._transport, documented=documented)
        await scan.walk(watched)  # verifies the order, judges the projection
        profile = cProfile.Profile()
        profile.enable()
        result = await scan.walk(watched)
        profile.disable()
    assert [i["id"] for i in result.finished] == ["ours"]
    assert result.pages == 1
    stats: Any = pstats.Stats(profile)
    return sum(nc for (_, nc, _, _, _) in stats.stats.values())


async def test_a_listed_run_not_ours_costs_at_most_one_python_call(inline_server: Start) -> None:
    # 450 more runs of other clients on the page: the walk's calls grow by at
    # most one per run (the ``get`` of its id); never a model, a datetime, an
    # isinstance or a generator step for a run that is not ours.
    for documented in (False, True):
        small = await profiled_calls(inline_server, 50, documented=documented)
        large = await profiled_calls(inline_server, 500, documented=documented)
        per_run = (large - small) / 450
        limit = 2.2 if documented else 1.2  # step 2 also checks each status
        assert per_run <= limit, (documented, per_run)


DEEP = [
    item("r0", 1_000_000, "running"),
    *others(3, 1_000_000, finished=False),
    *(item(f"d{i}", 10 - i, "running") for i in range(4)),
]
"""Page one (size 4): ours, just created, and three others; page two: four of ours, old."""


async def test_deep_pages_are_read_again_by_the_age_of_the_runs_there(inline_server: Start) -> None:
    pages = Pages(DEEP, size=4)
    url = await inline_server(pages)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=1)
    watched = {"r0": at(1_000_000), **{f"d{i}": at(10 - i) for i in range(4)}}
    async with RunflowClient(API_KEY, base_url=url, retry=retry) as client:
        scan = Scan(client._transport, documented=False, runs_per_page=2)
        first = await scan.walk(watched)
        # The deep runs are ~10^6 s old: their page is due again only after
        # 5% of that (5 * 10^4 emulated seconds, 50 real ones), not next walk.
        second = await scan.walk(watched)
        scan.deep_share = 0.0  # due at once from now on
        third = await scan.walk(watched)
    assert (first.pages, second.pages, third.pages) == (2, 1, 2)
    assert [q.get("pq") for q in pages.queries] == [None, "4", None, None, "4"]
    assert first.seen == third.seen == set(watched)
    assert second.seen == {"r0"}
    assert second.deferred == DEEP_LAST
    assert second.reach is None
    assert first.deferred is None
    assert third.deferred is None


DEEP_LAST = at(1_000_000 - 3 / 1000)
"""The oldest ``created_at`` on page one."""


async def test_runs_on_deferred_pages_stay_watched_by_the_list(inline_server: Start) -> None:
    # Not read this tick is not out of reach: the deep runs are neither
    # handed back to per-run polling nor judged missing from the list.
    pages = Pages(DEEP, size=4)
    url = await inline_server(pages)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=1)
    async with RunflowClient(API_KEY, base_url=url, retry=retry) as client:
        poller = ListPoller(
            client._transport, DurationStats(), PollPolicy(time_scale=TIME_SCALE), runs_per_page=2
        )
        poller.step = "newest"
        outcomes: dict[str, Run | None] = {}
        async with anyio.create_task_group() as tg:

            async def wait(run_id: str, created: datetime) -> None:
                outcomes[run_id] = await poller.wait(run_id, created)

            tg.start_soon(wait, "r0", at(1_000_000))
            for i in range(4):
                tg.start_soon(wait, f"d{i}", at(10 - i))
            await anyio.wait_all_tasks_blocked()
            await poller.poll_once()
            await poller.poll_once()  # deep pages deferred
            assert poller.step == "newest"
            assert outcomes == {}  # nobody released
            assert [q.get("pq") for q in pages.queries] == [None, "4", None]
            pages.items = [{**i, "status_code": "succeeded"} for i in DEEP]
            poller._scans["newest"].deep_share = 0.0
            await poller.poll_once()
    assert set(outcomes) == {"r0", *(f"d{i}" for i in range(4))}
    assert all(run is not None and run.status_code == "succeeded" for run in outcomes.values())


class IdFilter(Pages):
    """Honours the ``id:`` filter for these running runs: none of them is terminal yet."""

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        q = request.query["q"]
        return web.json_response({"items": [] if "status_code:" in q else self.items})


async def test_the_id_filter_builds_each_run_term_once_whatever_the_ticks(
    inline_server: Start,
) -> None:
    # Step 1 asks about the same runs tick after tick: each run's ``id:``
    # term is built when its wait starts, not once per tick.
    pages = IdFilter([item(f"r{i}", 100 - i, "running") for i in range(3)], size=500)
    url = await inline_server(pages)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=1)
    async with RunflowClient(API_KEY, base_url=url, retry=retry) as client:
        poller = ListPoller(client._transport, DurationStats(), PollPolicy(time_scale=TIME_SCALE))
        profile = cProfile.Profile()
        async with anyio.create_task_group() as tg:
            profile.enable()
            for i in range(3):
                tg.start_soon(poller.wait, f"r{i}", at(100 - i))
            await anyio.wait_all_tasks_blocked()
            for _ in range(4):
                await poller.poll_once()
            profile.disable()
            tg.cancel_scope.cancel()
    assert poller.verified
    assert len(pages.queries) == 4
    assert pages.queries[-1]["q"].startswith("(id:r0 OR id:r1 OR id:r2) AND (status_code:")
    stats: Any = pstats.Stats(profile)
    built = sum(nc for (_, _, name), (_, nc, *_) in stats.stats.items() if name == "term")
    assert built == 3


class Answers(Pages):
    """Serves the given JSON bodies in turn, whatever the query."""

    def __init__(self, bodies: list[Any]) -> None:
        super().__init__([], 500)
        self.bodies = bodies

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        return web.json_response(self.bodies[len(self.queries) - 1])


GOOD = {"items": [item("r0", 100, "running")], "next_pq": None}


@pytest.mark.parametrize(
    "bodies",
    [
        [{"items": "not a list"}],
        [{"items": ["not an object"]}],  # the first page is verified item by item
        [GOOD, {"items": [item("r1", 100, "running"), "not an object"]}],  # later: the hot loop
    ],
    ids=["no-items", "first-page", "later-page"],
)
async def test_a_page_without_run_objects_breaks_the_step(
    inline_server: Start, bodies: list[Any]
) -> None:
    url = await inline_server(Answers(bodies))
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=1)
    async with RunflowClient(API_KEY, base_url=url, retry=retry) as client:
        scan = Scan(client._transport, documented=False)
        scan.projection = False
        for _ in bodies[:-1]:
            await scan.walk({"r0": at(100)})
        with pytest.raises(ChainBroken, match=r"no items array|not an object"):
            await scan.walk({"r0": at(100)})

"""Other clients' runs in the organisation (``background_runs``) and paging while runs are made."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from runflow_async.emulator import EmulatorCounters, Fault
from runflow_async.emulator._listing import _seq_bounds, parse_list_params
from tests.emulator.emulator_support import FAST, FROZEN, Harness, running


async def _make(h: Harness, count: int, prefix: str = "ours") -> list[dict[str, Any]]:
    return [await h.create(f"p{i}", client_ref=f"{prefix}-{i}") for i in range(count)]


async def _walk(h: Harness, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = await h.get("/v1/runs", params=params)
    while True:
        items += page["items"]
        if page["next_pq"] is None:
            return items
        page = await h.get("/v1/runs", params={**params, "pq": page["next_pq"]})


@pytest.mark.parametrize(("share", "per_create"), [(0.5, 1), (0.75, 3), (0.2, 0.25)])
async def test_the_share_of_background_runs_is_exact(share: float, per_create: float) -> None:
    async with running(**FROZEN, background_runs=share) as h:
        ours = await _make(h, 8)
        listed = await _walk(h, limit="500")
        counters = h.emu.counters
    mine = {run["id"] for run in ours}
    others = [item for item in listed if item["id"] not in mine]
    assert len(others) == counters.background_created == 8 * per_create
    assert counters.runs_created == 8
    assert len(listed) == 8 + 8 * per_create
    assert all(item["client_ref"].startswith("other-client-") for item in others)
    assert len({item["client_ref"] for item in others}) == len(others)
    assert counters.listed_background == len(others)
    assert counters.listed_runs == len(listed)


async def test_background_runs_interleave_with_ours_newest_first() -> None:
    async with running(**FROZEN, background_runs=0.5) as h:
        ours = await _make(h, 3)
        listed = [item["client_ref"] for item in await _walk(h)]
    assert listed == [
        "other-client-3",
        "ours-2",
        "other-client-2",
        "ours-1",
        "other-client-1",
        "ours-0",
    ]
    assert len(ours) == 3


async def test_background_runs_are_billed_apart_and_leave_our_counters_alone() -> None:
    async with running(**FAST, background_runs=0.5, seed=4) as h:
        ours = await _make(h, 6)
        h.emu.advance(100.0)
        other = await h.get("/v1/runs", params={"q": "client_ref:other-client-1"})
        (run,) = other["items"]
        read = await h.get(f"/v1/runs/{run['id']}")
        counters = h.emu.counters
        report = h.emu.report()
        mine = h.emu.runs()
        everyone = h.emu.runs(background=True)
    assert read["status_code"] == "succeeded"
    assert counters.runs_created == counters.runs_billed == 6
    assert counters.background_created == counters.background_billed == 6
    assert counters.billed_usd == sum(Decimal(r["cost"]) for r in mine)
    assert counters.background_billed_usd == counters.billed_usd  # same price per run
    assert (counters.in_flight, counters.max_in_flight) == (0, 1)
    assert [row["id"] for row in report["runs"]] == [r["id"] for r in ours]
    assert report["total"] == 12
    assert [r["id"] for r in mine] == [r["id"] for r in ours]
    assert len(everyone) == 12
    assert EmulatorCounters.from_json(counters.to_json()) == counters


async def test_background_runs_fail_at_the_failure_rate_and_count_as_failed_apart() -> None:
    async with running(**FAST, background_runs=0.5, failure_rate=1.0) as h:
        await _make(h, 3)
        h.emu.advance(100.0)
        counters = h.emu.counters
    assert (counters.runs_failed, counters.background_failed) == (3, 3)
    assert (counters.runs_billed, counters.background_billed) == (0, 0)
    assert counters.background_billed_usd == 0


async def test_background_runs_do_not_change_our_runs_draws() -> None:
    durations: list[list[float]] = []
    for share in (0.0, 0.5):
        async with running(**{**FAST, "duration_sigma": 0.5}, background_runs=share, seed=9) as h:
            await _make(h, 5)
            durations.append([row["duration"] for row in h.emu.report()["runs"]])
    assert durations[0] == durations[1]


async def test_background_runs_neither_fill_our_in_flight_cap_nor_spend_our_credit() -> None:
    async with running(**FROZEN, background_runs=0.75, max_in_flight_runs=2) as h:
        await _make(h, 2)
        refused = await h.create("third", expect=429)
        counters = h.emu.counters
    assert "2 runs in flight" in refused["message"]
    assert (counters.in_flight, counters.background_created) == (2, 6)


async def test_a_late_commit_makes_its_background_runs_at_receipt() -> None:
    async with running(**FROZEN, background_runs=0.5) as h:
        h.emu.faults.next("create", Fault.late_commit(5.0))
        with pytest.raises(aiohttp.ClientError):
            await h.create("late", client_ref="late")
        before = h.emu.counters
        h.emu.advance(6.0)
        listed = [item["client_ref"] for item in await _walk(h)]
    assert (before.runs_created, before.background_created) == (0, 1)
    assert listed == ["late", "other-client-1"]


@pytest.mark.parametrize("q", [None, "status_code:queued", "created_at>=2026-01-01"])
async def test_paging_newest_first_under_concurrent_creates_skips_and_repeats_nothing(
    q: str | None,
) -> None:
    params = {"limit": "7", "sort_by": "created_at:desc", **({"q": q} if q else {})}
    async with running(**FROZEN, background_runs=0.5, list_filters="no-id") as h:
        await _make(h, 30, "before")
        existing = [item["id"] for item in await _walk(h, limit="500")]
        seen: list[str] = []
        page = await h.get("/v1/runs", params=params)
        pages = 1
        while True:
            seen += [item["id"] for item in page["items"]]
            if page["next_pq"] is None:
                break
            # Creates between pages, and some racing the next page's request.
            await _make(h, 2, f"between-{pages}")
            racing = asyncio.gather(*(h.create(f"race {pages}-{i}") for i in range(3)))
            page = await h.get("/v1/runs", params={**params, "pq": page["next_pq"]})
            await racing
            pages += 1
        counters = h.emu.counters
    assert len(existing) == 60
    assert seen == existing  # each run listed when paging began, once, in order; no newer one
    assert pages == 9
    assert counters.runs_created == 30 + 8 * 5
    assert counters.background_created == counters.runs_created
    assert counters.list_pages_continued == 8


async def test_paging_by_cursor_works_in_every_filter_mode() -> None:
    for mode in ("all", "no-id", "none"):
        async with running(**FROZEN, background_runs=0.5, list_filters=mode) as h:
            ours = await _make(h, 10)
            listed = await _walk(h, limit="3")
            counters = h.emu.counters
        assert len(listed) == 20, mode
        assert {r["id"] for r in ours} <= {item["id"] for item in listed}
        assert counters.list_pages == 7
        assert counters.listed_background == 10


async def test_created_at_bounds_become_a_seq_range() -> None:
    async with running(**FROZEN) as h:
        await _make(h, 3)
        h.emu.advance(10.0)
        middle = await _make(h, 2)
        h.emu.advance(10.0)
        await _make(h, 3)
        store = h.emu._state.store
        at = middle[0]["created_at"]
        last = middle[1]["created_at"]

        def bounds(q: str) -> tuple[int, int]:
            params, _ = parse_list_params({"q": q})
            assert params is not None
            return _seq_bounds(store, params.query)

        assert bounds("status_code:queued") == (0, 7)
        assert bounds(f"created_at>={at}") == (3, 7)
        assert bounds(f"created_at>{at}") == (4, 7)
        assert bounds(f"created_at>={at} AND created_at<={last}") == (3, 4)
        assert bounds(f"created_at<{at} AND status_code:queued") == (0, 2)
        assert bounds(f"created_at>={at} OR created_at<={last}") == (0, 7)  # not required
        assert bounds("created_at>2030-01-01") == (8, 7)

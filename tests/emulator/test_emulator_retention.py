"""``retain_runs``: bounded memory for millions of runs, exact counters and report."""

from __future__ import annotations

from decimal import Decimal

import pytest

from runflow_async._pricing import PricingPolicy
from runflow_async.emulator import _store
from tests.emulator.emulator_support import FROZEN, Harness, running

PRICE = PricingPolicy().generate_cost(None)


async def _ids(h: Harness, **params: str) -> list[str]:
    page = await h.get("/v1/runs", params={"limit": "500", **params})
    return [item["id"] for item in page["items"]]


async def test_only_the_newest_terminal_runs_are_kept_and_counters_stay_exact() -> None:
    async with running(**FROZEN, retain_runs=10) as h:
        ended = [(await h.create(f"p{i}", client_ref=f"r{i}"))["id"] for i in range(100)]
        h.emu.advance(1000.0)  # all 100 end together, in creation order
        going = [(await h.create(f"q{i}"))["id"] for i in range(5)]
        kept = [run["id"] for run in h.emu.runs()]
        old = await h.get(f"/v1/runs/{ended[0]}", expect=404)
        recent = await h.get(f"/v1/runs/{ended[-1]}")
        listed = await _ids(h)
        ascending = await _ids(h, sort_by="created_at:asc")
        by_old_id = await _ids(h, q=f"id:{ended[0]} OR id:{ended[-1]}")
        by_old_ref = await _ids(h, q="client_ref:r0")
        scanned = await _ids(h, q="status_code:succeeded")
        counters = h.emu.counters
        report = h.emu.report()
    assert kept == ended[-10:] + going
    assert old["code"] == "RUN_NOT_FOUND"
    assert recent["status_code"] == "succeeded"
    assert listed == list(reversed(kept))
    assert ascending == kept
    assert by_old_id == [ended[-1]]
    assert by_old_ref == []
    assert scanned == list(reversed(ended[-10:]))
    assert counters.runs_created == 105
    assert (counters.runs_billed, counters.billed_usd) == (100, PRICE * 100)
    assert (counters.max_in_flight, counters.in_flight) == (100, 5)
    assert [row["id"] for row in report["runs"]] == ended + going  # evicted runs included
    assert report["runs"][-6]["noticed"] is not None  # the recent get


async def test_the_oldest_terminal_runs_go_first_in_the_order_they_ended() -> None:
    async with running(**{**FROZEN, "duration_sigma": 1.0}, retain_runs=1, seed=3) as h:
        ids = [(await h.create(f"p{i}"))["id"] for i in range(4)]
        durations = [row["duration"] for row in h.emu.report()["runs"]]
        h.emu.advance(max(durations) + 1.0)
        kept = [run["id"] for run in h.emu.runs()]
    last_to_end = max(range(4), key=lambda i: durations[i])
    assert kept == [ids[last_to_end]]


async def test_an_evicted_runs_idempotency_key_creates_a_new_run() -> None:
    async with running(**FROZEN, retain_runs=1) as h:
        first = await h.create(headers={"Idempotency-Key": "k1"})
        h.emu.advance(1000.0)
        await h.create()
        h.emu.advance(1000.0)
        await h.create()  # settles: the first run is evicted with its key
        again = await h.create(headers={"Idempotency-Key": "k1"})
        counters = h.emu.counters
    assert again["id"] != first["id"]
    assert counters.idempotent_replays == 0
    assert counters.runs_created == 4


async def test_runs_sharing_a_client_ref_are_evicted_one_by_one() -> None:
    async with running(**FROZEN, retain_runs=1) as h:
        runs = [(await h.create(f"p{i}", client_ref="dup"))["id"] for i in range(3)]
        h.emu.advance(500.0)
        late = (await h.create("late", client_ref="dup"))["id"]
        h.emu.advance(500.0)  # the first three end: two of them are evicted
        found = await _ids(h, q="client_ref:dup", sort_by="created_at:asc")
        h.emu.advance(500.0)  # the late one ends, the third goes
        last = await _ids(h, q="client_ref:dup")
        await h.create("next")
        h.emu.advance(1000.0)  # "next" ends, the late one goes
        gone = await _ids(h, q="client_ref:dup")
    assert found == [runs[2], late]
    assert last == [late]
    assert gone == []


async def test_an_evicted_runs_files_are_gone() -> None:
    async with running(**FROZEN, retain_runs=1) as h:
        run = await h.create()
        h.emu.advance(1000.0)
        url = (await h.get(f"/v1/runs/{run['id']}"))["output"]["outputs"][0]["url"]
        await h.create()
        h.emu.advance(1000.0)
        await h.get("/v1/runs")  # settles
        async with h.http.get(url) as resp:
            body = await resp.json()
    assert resp.status == 404
    assert body["code"] == "FILE_NOT_FOUND"


async def test_pages_stay_correct_across_holes_and_compaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_store, "_MIN_COMPACTION", 2)
    async with running(**FROZEN, retain_runs=2) as h:
        ids = [(await h.create(f"p{i}"))["id"] for i in range(8)]
        h.emu.advance(500.0)
        later = [(await h.create(f"q{i}"))["id"] for i in range(3)]
        asc = {"limit": "2", "sort_by": "created_at:asc"}
        page = await h.get("/v1/runs", params=asc)
        h.emu.advance(500.0)  # the first eight end; six are evicted, compacting twice
        after = await h.get("/v1/runs", params={**asc, "pq": page["next_pq"]})
        walked = []
        params = {"limit": "2"}
        while True:
            result = await h.get("/v1/runs", params=params)
            walked += [item["id"] for item in result["items"]]
            if result["next_pq"] is None:
                break
            params = {"limit": "2", "pq": result["next_pq"]}
        counters = h.emu.counters
    kept = ids[-2:] + later
    assert [item["id"] for item in after["items"]] == kept[:2]
    assert walked == list(reversed(kept))
    assert counters.runs_billed == 8
    assert counters.billed_usd == PRICE * 8 == Decimal("0.036")

"""Per-run read counts in the report: how many requests named each run."""

from __future__ import annotations

import pytest

from runflow_async.emulator import Fault
from tests.emulator.callback_receiver import QUICK, history, receiving
from tests.emulator.emulator_support import FROZEN, Harness, running

STATUSES = "(status_code:succeeded OR status_code:failed)"


def _reads(h: Harness) -> list[int]:
    return [row["reads"] for row in h.emu.report()["runs"]]


async def test_gets_and_id_terms_of_a_list_query_count_as_reads() -> None:
    async with running(**FROZEN) as h:
        a, b, c, _ = [(await h.create(f"p{i}"))["id"] for i in range(4)]
        await h.get(f"/v1/runs/{a}")
        await h.get(f"/v1/runs/{a}")
        # Named, though neither is terminal, so neither comes back.
        page = await h.get("/v1/runs", params={"q": f"(id:{b} OR id:{c}) AND {STATUSES}"})
        async with h.http.get("/_emulator/report") as resp:
            http_rows = (await resp.json())["runs"]
    assert page["items"] == []
    assert [row["reads"] for row in http_rows] == [2, 1, 1, 0]


async def test_a_terminal_run_is_counted_on_every_get_not_only_the_first() -> None:
    async with running(**FROZEN) as h:
        run = await h.create()
        await h.get(f"/v1/runs/{run['id']}")
        h.emu.advance(1000.0)
        for _ in range(3):
            await h.get(f"/v1/runs/{run['id']}")
        assert _reads(h) == [4]


@pytest.mark.parametrize(
    ("q", "reads"),
    [
        ("id:{a} OR id:{a} OR id:{b}", [1, 1, 0]),  # once per request, however often named
        ('id="{a}" AND NOT id:{c}', [1, 0, 1]),  # quoted, and under NOT: named all the same
        ("(id:{a} OR client_ref:r1) AND created_at>2000-01-01", [1, 0, 0]),  # full parser
        ("id>{a} OR id<={c}", [0, 0, 0]),  # comparisons name no run
        ("client_ref:r1", [0, 0, 0]),  # a match is not a naming
        ("id:nope OR id:{b}", [0, 1, 0]),  # unknown ids are ignored
    ],
)
async def test_which_list_queries_name_a_run(q: str, reads: list[int]) -> None:
    async with running(**FROZEN) as h:
        a, b, c = [(await h.create(client_ref=f"r{i}"))["id"] for i in range(3)]
        await h.get("/v1/runs", params={"q": q.format(a=a, b=b, c=c)})
        assert _reads(h) == reads


async def test_refused_requests_unknown_ids_and_snapshots_do_not_count() -> None:
    async with running(**FROZEN) as h:
        run = await h.create()
        path = f"/v1/runs/{run['id']}"
        async with h.http.get(path) as resp:
            assert resp.status == 401  # no API key
        h.emu.faults.next("get_run", Fault.status(503))
        await h.get(path, expect=503)
        q = f"id:{run['id']}"
        await h.get("/v1/runs", params={"q": q, "limit": "0"}, expect=422)
        await h.get("/v1/runs/nope", expect=404)
        await h.get("/v1/runs")  # lists it, names it not
        h.emu.runs()
        assert _reads(h) == [0]


async def test_callbacks_and_their_routes_do_not_count() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        run = await h.create(callback_url=rx.url)
        await rx.wait_for(1)
        await history(h, run["id"])
        await h.post(f"/v1/runs/{run['id']}/callback-redeliveries", None, expect=202)
        await rx.wait_for(2)
        await history(h, run["id"], count=2)
        assert _reads(h) == [0]


async def test_an_evicted_run_is_no_longer_counted() -> None:
    async with running(**FROZEN, retain_runs=1) as h:
        old, new = [(await h.create(f"p{i}"))["id"] for i in range(2)]
        h.emu.advance(2000.0)  # both ended; only the later one is kept
        await h.get(f"/v1/runs/{old}", expect=404)
        await h.get("/v1/runs", params={"q": f"id:{old} OR id:{new}"})
        assert _reads(h) == [0, 1]

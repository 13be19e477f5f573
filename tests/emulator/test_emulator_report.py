"""The timing report: created, drawn duration, end, and when a client first saw the end."""

from __future__ import annotations

from typing import Any

import pytest

from runflow_async.emulator import FaultScript
from tests.emulator.emulator_support import FROZEN, Harness, running

ROW_KEYS = {"id", "created", "duration", "end", "status", "noticed", "reads"}


async def _report(h: Harness, **params: str) -> dict[str, Any]:
    async with h.http.get("/_emulator/report", params=params) as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


def _noticed(report: dict[str, Any]) -> list[float | None]:
    return [row["noticed"] for row in report["runs"]]


async def test_the_report_lists_every_run_in_creation_order_with_its_timing() -> None:
    async with running(**{**FROZEN, "time_scale": 0.5}) as h:
        created = [await h.create(f"p{i}") for i in range(3)]
        h.emu.advance(10.0)
        report = await _report(h)
    assert report["time_scale"] == 0.5
    assert report["since"] == 0
    assert report["total"] == 3
    assert report["now"] >= 10.0
    rows = report["runs"]
    assert [row["id"] for row in rows] == [run["id"] for run in created]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["duration"] == 1000.0
        assert row["end"] == row["created"] + row["duration"]
        assert row["status"] == "queued"  # 10 s into a 1000 s run
        assert row["noticed"] is None
    assert rows[0]["created"] <= rows[1]["created"] <= rows[2]["created"] < 10.0


async def test_a_get_marks_a_run_noticed_only_once_it_is_terminal() -> None:
    async with running(**FROZEN) as h:
        run = await h.create()
        await h.get(f"/v1/runs/{run['id']}")
        before = h.emu.report()
        h.emu.advance(1000.0)
        after_end = h.emu.report()
        await h.get(f"/v1/runs/{run['id']}")
        first = h.emu.report()
        h.emu.advance(50.0)
        await h.get(f"/v1/runs/{run['id']}")
        again = h.emu.report()
    assert _noticed(before) == [None]
    assert after_end["runs"][0]["status"] == "succeeded"
    assert _noticed(after_end) == [None]  # ended, but nobody has looked yet
    (seen,) = _noticed(first)
    assert seen is not None
    assert after_end["now"] <= seen <= first["now"]
    assert _noticed(again) == [seen]  # the first terminal read counts


@pytest.mark.parametrize(
    ("params", "marks"),
    [
        ({}, True),
        ({"fields": "id,status_code"}, True),
        ({"fields": "status_code,output"}, True),
        ({"fields": "id,output"}, False),
        ({"fields": "created_at"}, False),
    ],
)
async def test_a_list_marks_terminal_items_noticed_when_they_carry_status_code(
    params: dict[str, str], marks: bool
) -> None:
    async with running(**FROZEN) as h:
        ended = await h.create("ended")
        h.emu.advance(1000.0)
        going = await h.create("going")
        page = await h.get("/v1/runs", params=params)
        report = h.emu.report()
    assert [item["id"] for item in page["items"]] == [going["id"], ended["id"]]
    rows = {row["id"]: row for row in report["runs"]}
    assert (rows[ended["id"]]["noticed"] is not None) is marks
    assert rows[going["id"]]["noticed"] is None


async def test_a_filtered_list_marks_only_the_items_it_returns() -> None:
    async with running(**FROZEN) as h:
        runs = [await h.create(client_ref=f"r{i}") for i in range(3)]
        h.emu.advance(1000.0)
        q = f"id:{runs[0]['id']} OR client_ref:r2"
        await h.get("/v1/runs", params={"q": q, "fields": "status_code"})
        report = h.emu.report()
    assert [seen is not None for seen in _noticed(report)] == [True, False, True]


async def test_failed_runs_are_reported_failed() -> None:
    async with running(**FROZEN, failure_rate=1.0) as h:
        await h.create()
        h.emu.advance(1000.0)
        report = h.emu.report()
    assert report["runs"][0]["status"] == "failed"


async def test_since_returns_runs_from_that_creation_index_on() -> None:
    async with running(**FROZEN) as h:
        ids = [(await h.create(f"p{i}"))["id"] for i in range(4)]
        from_two = await _report(h, since="2")
        past_end = await _report(h, since="9")
        python = h.emu.report(since=1)
        negative = h.emu.report(since=-3)
    assert [row["id"] for row in from_two["runs"]] == ids[2:]
    assert (from_two["since"], from_two["total"]) == (2, 4)
    assert past_end["runs"] == []
    assert [row["id"] for row in python["runs"]] == ids[1:]
    assert negative["since"] == 0
    assert len(negative["runs"]) == 4


async def test_limit_caps_the_rows_for_paging_through_many_runs() -> None:
    async with running(**FROZEN) as h:
        ids = [(await h.create(f"p{i}"))["id"] for i in range(5)]
        pages = [await _report(h, since=str(start), limit="2") for start in (0, 2, 4)]
        python = h.emu.report(since=1, limit=3)
        empty = h.emu.report(limit=-1)
    assert [[row["id"] for row in page["runs"]] for page in pages] == [ids[:2], ids[2:4], ids[4:]]
    assert [row["id"] for row in python["runs"]] == ids[1:4]
    assert empty["runs"] == []


@pytest.mark.parametrize("name", ["since", "limit"])
@pytest.mark.parametrize("value", ["-1", "x", "1.5", "\u00b2", ""])
async def test_a_bad_since_or_limit_is_422(name: str, value: str) -> None:
    async with running() as h, h.http.get("/_emulator/report", params={name: value}) as resp:
        body = await resp.json()
    assert resp.status == 422
    assert [error["field"] for error in body["errors"]] == [name]


async def test_the_report_needs_no_auth_is_counted_and_cannot_be_faulted() -> None:
    async with running(**FROZEN) as h:
        await h.create()
        http_report = await _report(h)
        python_report = h.emu.report()
        counters = h.emu.counters
    assert http_report["runs"] == python_report["runs"]
    assert counters.requests_by_route["report"] == 1
    with pytest.raises(ValueError, match="unknown route"):
        FaultScript().next("report", object())  # type: ignore[arg-type]


async def test_the_python_runs_snapshot_does_not_mark_runs_noticed() -> None:
    async with running(**FROZEN) as h:
        await h.create()
        h.emu.advance(1000.0)
        assert h.emu.runs()[0]["status_code"] == "succeeded"
        report = h.emu.report()
    assert _noticed(report) == [None]

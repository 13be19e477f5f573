"""``list_filters``: which ``q`` filters ``GET /v1/runs`` accepts, and the list counters."""

from __future__ import annotations

from typing import Any

import pytest

from runflow_async.emulator import EmulatorConfig
from runflow_async.emulator._clock import EPOCH
from runflow_async.emulator._filters import filter_kind
from runflow_async.emulator._query import parse_query
from tests.emulator.emulator_support import FROZEN, Harness, running

TERMINAL = "(status_code:succeeded OR status_code:failed)"


async def _make(h: Harness, count: int) -> list[dict[str, Any]]:
    return [await h.create(f"p{i}", client_ref=f"rfa-{i}") for i in range(count)]


async def _ids(h: Harness, **params: str) -> list[str]:
    page = await h.get("/v1/runs", params=params)
    return [item["id"] for item in page["items"]]


async def _walk(h: Harness, **params: str) -> list[str]:
    """Follow ``next_pq`` from the first page to the last; every id in order."""
    ids: list[str] = []
    page = await h.get("/v1/runs", params=params)
    while True:
        ids += [item["id"] for item in page["items"]]
        if page["next_pq"] is None:
            return ids
        page = await h.get("/v1/runs", params={**params, "pq": page["next_pq"]})


@pytest.mark.parametrize(
    "q",
    [
        "id:abc",
        "client_ref:rfa-1",
        "status_code:succeeded AND NOT id:abc",
        "cost>0",
        "(id:a OR id:b) AND (status_code:succeeded OR status_code:failed)",
    ],
)
async def test_no_id_refuses_any_undocumented_field_with_the_error_envelope(q: str) -> None:
    async with running(**FROZEN, list_filters="no-id") as h:
        await _make(h, 2)
        answer = await h.get("/v1/runs", params={"q": q}, expect=400)
        counters = h.emu.counters
    assert answer["code"] == "INVALID_QUERY"
    assert answer["message"].startswith("Invalid q: unknown field")
    assert [(e["field"], e["code"]) for e in answer["errors"]] == [("q", "unknown_filter_field")]
    assert counters.list_refused == 1
    assert counters.list_pages == 0
    assert counters.responses_by_status[400] == 1


async def test_no_id_answers_the_documented_filters_as_all_does() -> None:
    queries = [
        "status_code:queued",
        f"created_at>=2026-01-01T00:00:00 AND {TERMINAL}",
        "created_at<=2026-01-01T00:20:00.000000+00:00 AND NOT status_code:failed",
        "created_at>2026-01-01T00:16:40",
    ]
    answers: dict[str, list[list[str]]] = {}
    for mode in ("all", "no-id"):
        # The former fixed start, so the literal times in the queries mean something.
        async with running(**FROZEN, list_filters=mode, clock_anchor=EPOCH) as h:
            await _make(h, 3)
            h.emu.advance(1000.0)  # the first three end
            await _make(h, 2)
            answers[mode] = [await _walk(h, q=q, limit="2") for q in queries]
    assert answers["no-id"] == answers["all"]
    assert [len(ids) for ids in answers["all"]] == [2, 3, 5, 2]


async def test_none_refuses_every_filter_but_pages_sorts_and_projects() -> None:
    async with running(**FROZEN, list_filters="none") as h:
        runs = [r["id"] for r in await _make(h, 5)]
        refused = await h.get("/v1/runs", params={"q": "status_code:queued"}, expect=400)
        blank = await _ids(h, q="  ", limit="2")
        newest = await _walk(h, limit="2", sort_by="created_at:desc")
        oldest = await _walk(h, limit="3", sort_by="created_at:asc")
        projected = await h.get("/v1/runs", params={"fields": "status_code", "limit": "1"})
    assert refused["code"] == "INVALID_QUERY"
    assert refused["errors"][0]["code"] == "filter_not_supported"
    assert blank == runs[::-1][:2]
    assert newest == runs[::-1]
    assert oldest == runs
    assert projected["items"] == [{"id": runs[-1], "status_code": "queued"}]
    assert projected["next_pq"] is not None


async def test_none_with_list_ignores_filter_lists_everything_silently() -> None:
    async with running(**FROZEN, list_filters="none", list_ignores_filter=True) as h:
        runs = [r["id"] for r in await _make(h, 3)]
        ids = await _ids(h, q="id:nothing-like-it")
        counters = h.emu.counters
    assert ids == runs[::-1]
    assert counters.list_refused == 0
    assert counters.list_requests_by_filter["id"] == 1


async def test_list_counters_count_requests_by_filter_kind_and_pages() -> None:
    async with running(**FROZEN, list_filters="no-id") as h:
        await _make(h, 5)
        await _walk(h, limit="2")  # 3 pages, 2 of them by cursor
        await _walk(h, q=TERMINAL)  # 1 empty page
        await _walk(h, q="created_at>=2026-01-01", limit="4")  # 2 pages
        await h.get("/v1/runs", params={"q": "id:a"}, expect=400)
        await h.get("/v1/runs", params={"q": "client_ref:rfa-1"}, expect=400)
        await h.get("/v1/runs", params={"q": "cost>0"}, expect=400)
        await h.get("/v1/runs", params={"limit": "0"}, expect=422)  # not parsed: not counted
        counters = h.emu.counters
    assert dict(counters.list_requests_by_filter) == {
        "none": 3,
        "id": 1,
        "client_ref": 1,
        "documented": 3,
        "other": 1,
    }
    assert counters.list_refused == 3
    assert counters.list_pages == 6
    assert counters.list_pages_continued == 3
    assert counters.listed_runs == 5 + 0 + 5
    assert counters.listed_background == 0
    assert counters.requests_by_route["list_runs"] == 10


def test_filter_kinds() -> None:
    kinds = {
        "": "none",
        "id:a OR client_ref:b": "id",
        "NOT client_ref:b AND status_code:queued": "client_ref",
        "created_at>=x AND (status_code:a OR status_code:b)": "documented",
        "status_code:a OR batch_id:null": "other",
    }
    assert {q: filter_kind(parse_query(q)) for q in kinds} == kinds


async def test_from_prev_walks_back_from_any_cursor() -> None:
    async with running(**FROZEN) as h:
        runs = [r["id"] for r in await _make(h, 6)]
        newest = runs[::-1]
        first = await h.get("/v1/runs", params={"limit": "2"})
        second = await h.get("/v1/runs", params={"limit": "2", "pq": first["next_pq"]})
        back = await _ids(h, limit="2", pq=second["prev_pq"], from_prev="true")
        also_back = await _ids(h, limit="2", pq=second["next_pq"], from_prev="true")
        onward = await _ids(h, limit="2", pq=second["next_pq"], from_prev="false")
        alone = await _ids(h, limit="2", from_prev="true")
        bad = await h.get("/v1/runs", params={"from_prev": "yes"}, expect=422)
    assert [i["id"] for i in second["items"]] == newest[2:4]
    assert back == newest[0:2]
    assert also_back == newest[1:3]  # the two before the second page's last run
    assert onward == newest[4:6]
    assert alone == newest[0:2]  # no cursor: nothing to walk back from
    assert [e["field"] for e in bad["errors"]] == ["from_prev"]


async def test_a_time_window_scans_only_its_runs_and_still_pages() -> None:
    async with running(**FROZEN) as h:
        early = [r["id"] for r in await _make(h, 3)]
        h.emu.advance(10.0)
        window = (await h.create("first of the window"))["created_at"]
        h.emu.advance(10.0)
        late = [r["id"] for r in await _make(h, 4)]
        runs = [early, late]
        inside = await _walk(h, q=f"created_at>={window}", limit="2")
        after = await _walk(h, q=f"created_at>{window}", limit="3", sort_by="created_at:asc")
        before = await _walk(h, q=f"created_at<{window}", limit="2")
        upto = await _walk(h, q=f"created_at<={window} AND created_at>={window}")
        none = await _walk(h, q="created_at>2027-01-01 AND created_at<2026-01-02")
    assert len(inside) == 5
    assert inside[:4] == runs[1][::-1]
    assert after == runs[1]
    assert before == runs[0][::-1]
    assert len(upto) == 1
    assert upto == [inside[-1]]
    assert none == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"list_filters": "some"}, "list_filters must be one of all, no-id, none"),
        ({"list_filters": "no-id", "list_ignores_filter": True}, "contradicts"),
        ({"background_runs": 1.0}, r"background_runs must be in \[0, 1\)"),
        ({"background_runs": -0.1}, "background_runs"),
        ({"background_runs": float("nan")}, "background_runs"),
    ],
)
def test_bad_list_settings_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmulatorConfig(**fields)

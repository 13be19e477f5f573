"""``GET /v1/runs``: paging cursors, sorting, projection and the ``q`` filter over HTTP."""

from __future__ import annotations

import time
from typing import Any

import pytest

from runflow_async.emulator._listing import Cursor
from tests.emulator.emulator_support import FROZEN, Harness, running


async def _make(h: Harness, count: int, **fields: Any) -> list[dict[str, Any]]:
    return [await h.create(f"p{i}", client_ref=f"rfa-{i}", **fields) for i in range(count)]


async def _ids(h: Harness, **params: str) -> list[str]:
    page = await h.get("/v1/runs", params=params)
    return [item["id"] for item in page["items"]]


async def test_default_listing_is_newest_first_with_no_cursors() -> None:
    async with running(**FROZEN) as h:
        runs = await _make(h, 3)
        page = await h.get("/v1/runs")
    assert [r["id"] for r in page["items"]] == [r["id"] for r in reversed(runs)]
    assert page["next_pq"] is None
    assert page["prev_pq"] is None


@pytest.mark.parametrize(
    "sort_by", ["created_at:asc", "created_at:desc", "id", "id:desc,created_at"]
)
async def test_cursors_walk_forward_and_back_in_both_orders(sort_by: str) -> None:
    async with running(**FROZEN) as h:
        runs = [r["id"] for r in await _make(h, 5)]
        expected = runs if sort_by in ("created_at:asc", "id") else runs[::-1]
        first = await h.get("/v1/runs", params={"limit": "2", "sort_by": sort_by})
        assert first["prev_pq"] is None
        second = await h.get(
            "/v1/runs", params={"limit": "2", "sort_by": sort_by, "pq": first["next_pq"]}
        )
        third = await h.get(
            "/v1/runs", params={"limit": "2", "sort_by": sort_by, "pq": second["next_pq"]}
        )
        assert third["next_pq"] is None
        back = await h.get(
            "/v1/runs", params={"limit": "2", "sort_by": sort_by, "pq": third["prev_pq"]}
        )
        start = await h.get(
            "/v1/runs", params={"limit": "2", "sort_by": sort_by, "pq": back["prev_pq"]}
        )
    pages = [first, second, third]
    assert [i["id"] for p in pages for i in p["items"]] == expected
    assert [i["id"] for i in back["items"]] == expected[2:4]
    assert back["next_pq"] is not None
    assert [i["id"] for i in start["items"]] == expected[0:2]
    assert start["prev_pq"] is None


async def test_cursors_stay_stable_while_runs_are_created() -> None:
    async with running(**FROZEN) as h:
        runs = [r["id"] for r in await _make(h, 4)]
        first = await h.get("/v1/runs", params={"limit": "2"})
        await _make(h, 3)
        second = await h.get("/v1/runs", params={"limit": "2", "pq": first["next_pq"]})
    assert [i["id"] for i in second["items"]] == [runs[1], runs[0]]


async def test_an_empty_page_has_no_cursors() -> None:
    async with running(**FROZEN) as h:
        nothing = await h.get("/v1/runs", params={"q": "status_code:failed"})
        await _make(h, 1)
        first = await h.get("/v1/runs", params={"sort_by": "created_at:asc"})
        backwards = await h.get(
            "/v1/runs", params={"sort_by": "created_at:asc", "pq": first["prev_pq"] or ""}
        )
        past_the_end = await h.get("/v1/runs", params={"pq": Cursor(0, True).encode()})
        foreign = await h.get("/v1/runs", params={"pq": Cursor(99, True).encode()})
    empty: dict[str, Any] = {"items": [], "next_pq": None, "prev_pq": None}
    assert nothing == empty
    assert len(backwards["items"]) == 1
    assert past_the_end == empty
    assert len(foreign["items"]) == 1  # a cursor beyond the last run starts at the newest


async def test_fields_projects_items_and_always_keeps_the_id() -> None:
    async with running(**FROZEN) as h:
        await _make(h, 2)
        page = await h.get("/v1/runs", params={"fields": "status_code, client_ref,,nope"})
    assert [set(item) for item in page["items"]] == [{"id", "status_code", "client_ref"}] * 2


@pytest.mark.parametrize(
    "fields",
    ["target_type,has_logs", "status_code,started_at,completed_at", "created_at,cost", "id"],
)
async def test_a_projection_shows_exactly_what_the_full_item_shows(fields: str) -> None:
    async with running(**FROZEN) as h:
        await h.create()
        h.emu.advance(1000.0)
        await h.create()
        full = await h.get("/v1/runs")
        page = await h.get("/v1/runs", params={"fields": fields})
    wanted = {*fields.split(","), "id"}
    expected = [{k: v for k, v in item.items() if k in wanted} for item in full["items"]]
    assert page["items"] == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),
        ({"pq": "not-a-cursor!"}, "pq"),
        ({"pq": "eDE"}, "pq"),
        ({"pq": "_w"}, "pq"),
        ({"pq": "bsKy"}, "pq"),  # "n" and a superscript two
        ({"sort_by": "cost:asc"}, "sort_by"),
        ({"sort_by": "created_at:up"}, "sort_by"),
    ],
)
async def test_bad_list_parameters_are_422(params: dict[str, str], field: str) -> None:
    async with running() as h:
        answer = await h.get("/v1/runs", params=params, expect=422)
    assert answer["code"] == "VALIDATION_ERROR"
    assert [e["field"] for e in answer["errors"]] == [field]


async def test_limit_accepts_the_documented_maximum_and_empty_sort_means_default() -> None:
    async with running(**FROZEN) as h:
        runs = await _make(h, 2)
        ids = await _ids(h, limit="500", sort_by=" ")
    assert ids == [r["id"] for r in reversed(runs)]


async def test_q_filters_on_status_and_timestamps() -> None:
    async with running(**FROZEN) as h:
        early = await _make(h, 2)
        h.emu.advance(1000.0)
        late = await _make(h, 1)
        done = await _ids(h, q="status_code:succeeded", sort_by="created_at:asc")
        queued = await _ids(h, q=f"status_code=queued AND created_at>{early[1]['created_at']}")
        before = await _ids(h, q=f'created_at<="{early[1]["created_at"]}"')
    assert done == [r["id"] for r in early]
    assert queued == [late[0]["id"]]
    assert before == [early[1]["id"], early[0]["id"]]


async def test_q_supports_or_not_parentheses_numbers_and_quoted_strings() -> None:
    async with running(**FROZEN) as h:
        runs = await _make(h, 4)
        await h.create("quoted", client_ref='say "hi" now')
        h.emu.advance(1000.0)
        ids = [r["id"] for r in runs]
        either = await _ids(h, q="client_ref:rfa-0 OR client_ref:rfa-3", sort_by="id")
        negated = await _ids(h, q="NOT (client_ref:rfa-0 OR client_ref:rfa-1) AND cost>0.001")
        numbers = await _ids(h, q="duration_ms>=1000000 AND duration_ms<1000001 AND has_logs:false")
        quoted = await _ids(h, q=r'client_ref:"say \"hi\" now"')
        unknown = await _ids(h, q="colour:red OR metadata:x")
        nulls = await _ids(h, q="batch_id:null AND NOT client_ref:null")
        others = await _ids(h, q=f"NOT id:{ids[0]} AND model_id>0", sort_by="id")
    assert either == [ids[0], ids[3]]
    assert len(negated) == 3
    assert ids[0] not in negated
    assert len(numbers) == 5
    assert len(quoted) == 1
    assert unknown == []
    assert len(nulls) == 5
    assert others[:3] == ids[1:]
    assert len(others) == 4


@pytest.mark.parametrize("q", ["status_code:", "(id:a", "id:a id:b", "AND id:a", 'id:"open'])
async def test_a_malformed_q_is_400_invalid_query(q: str) -> None:
    async with running() as h:
        answer = await h.get("/v1/runs", params={"q": q}, expect=400)
    assert answer["code"] == "INVALID_QUERY"


async def test_a_200_term_or_of_ids_is_answered_from_the_index() -> None:
    async with running(**FROZEN) as h:
        runs = await _make(h, 300)
        wanted = [r["id"] for r in runs[50:250]]
        q = " OR ".join(f"id:{run_id}" for run_id in wanted)
        started = time.perf_counter()
        page = await h.get("/v1/runs", params={"q": q, "limit": "500", "fields": "status_code"})
        elapsed = time.perf_counter() - started
        refs = await _ids(h, q='client_ref:"rfa-7" OR client_ref:rfa-8 OR id:missing')
    assert {item["id"] for item in page["items"]} == set(wanted)
    assert len(page["items"]) == 200
    assert elapsed < 0.5
    assert refs == [runs[8]["id"], runs[7]["id"]]


async def test_indexed_queries_page_with_cursors_too() -> None:
    async with running(**FROZEN) as h:
        runs = await _make(h, 5)
        q = " OR ".join(f"client_ref:rfa-{i}" for i in (0, 1, 3, 4))
        first = await h.get("/v1/runs", params={"q": q, "limit": "3"})
        second = await h.get("/v1/runs", params={"q": q, "limit": "3", "pq": first["next_pq"]})
        back = await h.get("/v1/runs", params={"q": q, "limit": "3", "pq": second["prev_pq"]})
    ids = [r["id"] for r in runs]
    assert [i["id"] for i in first["items"]] == [ids[4], ids[3], ids[1]]
    assert [i["id"] for i in second["items"]] == [ids[0]]
    assert [i["id"] for i in back["items"]] == [ids[4], ids[3], ids[1]]
    assert back["prev_pq"] is None


async def test_a_client_ref_shared_by_several_runs_finds_them_all() -> None:
    async with running(**FROZEN) as h:
        runs = [await h.create(f"p{i}", client_ref="shared") for i in range(3)]
        await h.create("other", client_ref="solo")
        found = await _ids(h, q="client_ref:shared OR client_ref:nobody", sort_by="id")
    assert found == [r["id"] for r in runs]


async def test_a_pollers_ids_and_terminal_filter_is_answered_from_the_index() -> None:
    terminal = "status_code:succeeded OR status_code:failed OR status_code:canceled"
    async with running(**FROZEN) as h:
        early = await _make(h, 3)
        h.emu.advance(600.0)
        late = [await h.create(f"late{i}", client_ref=f"late-{i}") for i in range(2)]
        h.emu.advance(600.0)  # the early runs have ended, the late ones have not
        asked = [early[0], early[2], late[1]]
        ids = " OR ".join(f"id:{run['id']}" for run in asked)
        polled = await _ids(h, q=f"({ids}) AND ({terminal})", sort_by="created_at:asc")
        by_ref = await _ids(h, q="client_ref:late-1 AND status_code:running")
        scanned = await _ids(h, q=f"({terminal}) AND NOT client_ref:rfa-1", sort_by="id")
        three = await _ids(h, q=f"NOT client_ref:rfa-0 AND ({ids}) AND ({terminal})")
        unref = await h.create("no client_ref")
        nulls = await _ids(h, q="client_ref:null OR client_ref:rfa-1", sort_by="id")
    assert polled == [early[0]["id"], early[2]["id"]]
    assert by_ref == [late[1]["id"]]
    assert scanned == [early[0]["id"], early[2]["id"]]
    assert three == [early[2]["id"]]
    assert nulls == [early[1]["id"], unref["id"]]  # null also means "has none"

"""Batch routes: create, detail, items (paginated), one item; children are ordinary runs."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import anyio

from runflow_async.emulator import Fault
from tests.emulator.emulator_support import AUTH, EDIT, FROZEN, GENERATE, Harness, running

BATCHES = f"/v1/models/{GENERATE}/batches"


def items(count: int, prefix: str = "item") -> list[dict[str, Any]]:
    """``count`` batch items, each a prompt and a ``client_ref``."""
    return [{"prompt": f"{prefix} {i}", "client_ref": f"{prefix}-{i}"} for i in range(count)]


async def settled(h: Harness, batch_id: str) -> dict[str, Any]:
    """Poll the batch (1 ms apart) until every item is terminal."""
    with anyio.fail_after(5):
        while True:
            batch = await h.get(f"/v1/batches/{batch_id}")
            if batch["completed_at"] is not None:
                return batch
            await asyncio.sleep(0.001)


async def all_items(h: Harness, batch_id: str, limit: int) -> list[dict[str, Any]]:
    """Walk the items endpoint by ``next_pq``, ``limit`` a page."""
    found: list[dict[str, Any]] = []
    params = {"limit": str(limit)}
    while True:
        page = await h.get(f"/v1/batches/{batch_id}/items", params=params)
        assert len(page["items"]) <= limit
        found.extend(page["items"])
        assert page["next_cursor"] == page["next_pq"]
        if page["next_pq"] is None:
            return found
        params = {"limit": str(limit), "pq": page["next_pq"]}


async def test_a_100_item_batch_settles_every_item_with_its_counters() -> None:
    async with running(failure_rate=0.3, seed=3) as h:
        created = await h.post(BATCHES, {"input": items(100), "metadata": {"job": 7}})
        assert [item["sequence_index"] for item in created["items"]] == list(range(100))
        assert [item["client_ref"] for item in created["items"]] == [
            f"item-{i}" for i in range(100)
        ]
        batch = await settled(h, created["id"])
        runs = {run["id"]: run for run in h.emu.runs()}
        counters = h.emu.counters
    failed = sum(runs[item["run_id"]]["status_code"] == "failed" for item in batch["items"])
    assert 0 < failed < 100
    assert batch["status_code"] == "partial_succeeded"
    assert (batch["items_total"], batch["items_failed"]) == (100, failed)
    assert batch["items_succeeded"] == 100 - failed
    assert batch["items_cancelled"] == 0
    assert batch["target_id"] == GENERATE
    assert batch["metadata"] == {"job": 7}
    assert batch["output"]["total"] == 100
    assert batch["output"]["failed"] == failed
    billed = sum(Decimal(run["cost"]) for run in runs.values())
    assert Decimal(batch["cost"]) == billed == counters.billed_usd
    assert counters.runs_created == counters.batch_runs_created == 100
    assert counters.batches_created == counters.batch_create_requests == 1
    assert counters.runs_failed == failed
    assert counters.client_ref_duplicates == 0
    assert {run["batch_id"] for run in runs.values()} == {created["id"]}


async def test_a_batch_is_queued_then_running_then_succeeded() -> None:
    async with running(**FROZEN) as h:
        created = await h.post(BATCHES, {"input": items(3)})
        assert created["status_code"] == "queued"
        assert created["started_at"] is None
        assert (created["cost"], created["output"], created["completed_at"]) == (None, None, None)
        h.emu.advance(300.0)  # every run is running from 200 s
        running_ = await h.get(f"/v1/batches/{created['id']}")
        h.emu.advance(700.0)
        done = await h.get(f"/v1/batches/{created['id']}")
    assert running_["status_code"] == "running"
    assert running_["started_at"] is not None
    assert {item["status_code"] for item in running_["items"]} == {"running"}
    assert done["status_code"] == "succeeded"
    assert done["items_succeeded"] == 3
    assert done["duration_ms"] == 1_000_000
    assert done["failure_code"] is None


async def test_a_batch_whose_items_all_fail_is_failed() -> None:
    async with running() as h:
        h.emu.faults.next("batch_create", Fault.fail_run("NSFW", "Refused."))
        created = await h.post(BATCHES, {"input": items(4)})
        batch = await settled(h, created["id"])
        page = await h.get(f"/v1/batches/{created['id']}/items")
        counters = h.emu.counters
    assert batch["status_code"] == "failed"
    assert batch["items_failed"] == 4
    assert batch["failure_code"] == "ALL_ITEMS_FAILED"
    assert batch["cost"] == "0"
    assert {item["error"]["code"] for item in page["items"]} == {"NSFW"}
    assert counters.runs_billed == 0


async def test_0_and_101_items_are_refused_and_create_nothing() -> None:
    async with running() as h:
        empty = await h.post(BATCHES, {"input": []}, expect=422)
        many = await h.post(BATCHES, {"input": items(101)}, expect=422)
        missing = await h.post(BATCHES, {"metadata": {}}, expect=422)
        not_list = await h.post(BATCHES, {"input": {"prompt": "x"}}, expect=422)
        counters = h.emu.counters
    assert empty["code"] == many["code"] == "VALIDATION_ERROR"
    assert empty["errors"][0]["field"] == many["errors"][0]["field"] == "input"
    assert "got 101" in many["errors"][0]["message"]
    assert missing["errors"][0]["code"] == "required"
    assert not_list["errors"][0]["code"] == "invalid_type"
    assert (counters.runs_created, counters.batches_created, counters.runs_billed) == (0, 0, 0)
    assert counters.batch_create_requests == 4


async def test_one_bad_item_refuses_the_batch_naming_its_index() -> None:
    async with running() as h:
        entries: list[Any] = items(10)
        entries[3] = {"prompt": "", "client_ref": "x" * 256}
        entries[7] = {"prompt": "ok", "num_images": 9}
        entries[8] = "not an object"
        answer = await h.post(BATCHES, {"input": entries}, expect=422)
        counters = h.emu.counters
    fields = {error["field"] for error in answer["errors"]}
    assert fields == {"input.3.prompt", "input.3.client_ref", "input.7.num_images", "input.8"}
    assert all(error["message"].startswith("item ") for error in answer["errors"])
    assert counters.runs_created == counters.batches_created == 0


async def test_the_envelope_is_validated() -> None:
    async with running() as h:
        body = {"input": items(1), "callback_url": "ftp://x", "metadata": [1]}
        answer = await h.post(BATCHES, body, expect=422)
        long_url = {"input": items(1), "callback_url": "https://x/" + "a" * 2048}
        too_long = await h.post(BATCHES, long_url, expect=422)
        not_object = await h.post(BATCHES, [1, 2], expect=422)
        async with h.http.post(BATCHES, data=b"{", headers=AUTH) as resp:
            assert resp.status == 400
        assert h.emu.counters.runs_created == 0
    assert {e["field"] for e in answer["errors"]} == {"callback_url", "metadata"}
    assert too_long["errors"][0]["code"] == "too_long"
    assert not_object["errors"][0]["field"] == "body"


async def test_an_edit_batch_validates_each_item_as_an_edit() -> None:
    async with running() as h:
        url = f"/v1/models/{EDIT}/batches"
        bad = await h.post(url, {"input": [{"prompt": "no images"}]}, expect=422)
        good = {"input": [{"prompt": "edit", "image_urls": ["https://example.com/a.png"]}]}
        created = await h.post(url, good)
    assert bad["errors"][0]["field"] == "input.0.image_urls"
    assert created["target_id"] == EDIT


async def test_children_are_ordinary_runs() -> None:
    async with running() as h:
        created = await h.post(BATCHES, {"input": items(5), "metadata": {"m": 1}})
        await settled(h, created["id"])
        run_id = created["items"][2]["run_id"]
        run = await h.get(f"/v1/runs/{run_id}")
        by_ref = await h.get("/v1/runs", params={"q": "client_ref:item-2"})
        by_batch = await h.get("/v1/runs", params={"q": f"batch_id:{created['id']}"})
        report = h.emu.report()
    assert run["batch_id"] == created["id"]
    assert run["client_ref"] == "item-2"
    assert run["input"] == {"prompt": "item 2"}  # client_ref stripped from the input
    assert run["metadata"] == {"m": 1}
    assert run["callback_url"] is None
    assert [r["id"] for r in by_ref["items"]] == [run_id]
    assert len(by_batch["items"]) == 5
    assert len(report["runs"]) == 5


async def test_items_pages_cover_every_item_exactly_once() -> None:
    async with running() as h:
        created = await h.post(BATCHES, {"input": items(100)})
        walked = await all_items(h, created["id"], limit=7)
        whole = await h.get(f"/v1/batches/{created['id']}/items")
    assert [item["sequence_index"] for item in walked] == list(range(100))
    assert len({item["id"] for item in walked}) == 100
    assert [i["id"] for i in whole["items"]] == [i["id"] for i in walked]  # one page by default
    assert whole["next_pq"] is None
    assert whole["prev_pq"] is None


async def test_items_pages_walk_back_and_refuse_bad_parameters() -> None:
    async with running() as h:
        created = await h.post(BATCHES, {"input": items(10)})
        path = f"/v1/batches/{created['id']}/items"
        first = await h.get(path, params={"limit": "4"})
        second = await h.get(path, params={"limit": "4", "cursor": first["next_pq"]})
        back = await h.get(path, params={"limit": "4", "pq": second["prev_pq"]})
        last = await h.get(path, params={"limit": "4", "pq": second["next_pq"]})
        bad = await h.get(path, params={"limit": "101", "pq": "!!"}, expect=422)
    assert [i["sequence_index"] for i in second["items"]] == [4, 5, 6, 7]
    assert [i["id"] for i in back["items"]] == [i["id"] for i in first["items"]]
    assert [i["sequence_index"] for i in last["items"]] == [8, 9]
    assert last["next_pq"] is None
    assert {e["field"] for e in bad["errors"]} == {"limit", "pq"}


async def test_an_item_carries_its_full_run() -> None:
    async with running() as h:
        created = await h.post(BATCHES, {"input": items(3)})
        await settled(h, created["id"])
        lean = created["items"][1]
        item = await h.get(f"/v1/batches/{created['id']}/items/{lean['id']}")
        run = await h.get(f"/v1/runs/{lean['run_id']}")
    assert item["batch_id"] == created["id"]
    assert (item["id"], item["sequence_index"], item["client_ref"]) == (lean["id"], 1, "item-1")
    assert item["status_code"] == "succeeded"
    assert item["input"] == {"prompt": "item 1"}
    assert item["error"] is None
    assert item["cost"] == run["cost"]
    strip = {"output"}  # URLs are signed per read
    assert {k: v for k, v in item["run"].items() if k not in strip} == {
        k: v for k, v in run.items() if k not in strip
    }
    assert item["output"]["outputs"][0]["url"].startswith(h.emu.url)


async def test_unknown_ids_answer_404() -> None:
    async with running() as h:
        one = await h.post(BATCHES, {"input": items(1)})
        two = await h.post(BATCHES, {"input": items(1, "other")})
        nobody = await h.get("/v1/batches/nope", expect=404)
        no_items = await h.get("/v1/batches/nope/items", expect=404)
        other_batch_item = two["items"][0]["id"]
        wrong = await h.get(f"/v1/batches/{one['id']}/items/{other_batch_item}", expect=404)
        no_model = await h.post("/v1/models/acme/none/batches", {"input": items(1)}, expect=404)
        no_batch = await h.get(f"/v1/batches/nope/items/{other_batch_item}", expect=404)
        async with h.http.get(f"/v1/batches/{one['id']}") as resp:
            assert resp.status == 401
        async with h.http.post(BATCHES, json={"input": items(1)}) as resp:
            assert resp.status == 401
        assert h.emu.counters.batches_created == 2
    assert nobody["code"] == no_items["code"] == no_batch["code"] == "BATCH_NOT_FOUND"
    assert wrong["code"] == "ITEM_NOT_FOUND"
    assert no_model["code"] == "MODEL_NOT_FOUND"


async def test_a_repeated_key_replays_the_batch_and_creates_nothing() -> None:
    async with running(**FROZEN) as h:
        key = {"Idempotency-Key": "batch-key-1"}
        body = {"input": items(5)}
        first = await h.post(BATCHES, body, headers=key)
        async with h.http.post(BATCHES, json=body, headers={**AUTH, **key}) as resp:
            assert resp.status == 201
            assert resp.headers["Idempotent-Replayed"] == "true"
            second = await resp.json()
        other = {"input": items(5, "changed")}
        conflict = await h.post(BATCHES, other, headers=key, expect=409)
        counters = h.emu.counters
    assert second == first
    assert conflict["code"] == "CONFLICT"
    assert (counters.batches_created, counters.runs_created) == (1, 5)
    assert counters.batch_replays == counters.idempotent_replays == 1


async def test_an_ignored_key_creates_the_batch_twice() -> None:
    async with running(**FROZEN, honour_idempotency_key=False) as h:
        key = {"Idempotency-Key": "batch-key-1"}
        first = await h.post(BATCHES, {"input": items(2)}, headers=key)
        second = await h.post(BATCHES, {"input": items(2)}, headers=key)
        counters = h.emu.counters
    assert first["id"] != second["id"]
    assert (counters.batches_created, counters.runs_created) == (2, 4)
    assert counters.client_ref_duplicates == 2
    assert counters.batch_replays == 0


async def test_a_key_used_by_an_invalid_batch_is_not_remembered() -> None:
    async with running(**FROZEN) as h:
        key = {"Idempotency-Key": "k"}
        await h.post(BATCHES, {"input": [{"prompt": ""}]}, headers=key, expect=422)
        await h.post(BATCHES, {"input": items(1)}, headers=key)
        assert h.emu.counters.batches_created == 1


async def test_children_without_refs_are_not_listed_by_client_ref_but_items_keep_them() -> None:
    async with running(batch_child_refs=False) as h:
        created = await h.post(BATCHES, {"input": items(3)})
        run = await h.get(f"/v1/runs/{created['items'][1]['run_id']}")
        by_ref = await h.get("/v1/runs", params={"q": "client_ref:item-1"})
        page = await h.get(f"/v1/batches/{created['id']}/items")
    assert [item["client_ref"] for item in created["items"]] == ["item-0", "item-1", "item-2"]
    assert [item["client_ref"] for item in page["items"]] == ["item-0", "item-1", "item-2"]
    assert run["client_ref"] is None
    assert by_ref["items"] == []

"""Faults on the batch create: refusals create nothing, ambiguous answers commit the batch."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from runflow_async.emulator import Fault, FaultRates
from tests.emulator.emulator_support import AUTH, FROZEN, Harness, running
from tests.emulator.test_emulator_batches import BATCHES, items

BODY = {"input": items(4)}


async def send(h: Harness, key: str | None = None, body: Any = BODY) -> tuple[int, Any]:
    """POST a batch create; return the status and the body (JSON, else text)."""
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    async with h.http.post(BATCHES, json=body, headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def listed(h: Harness, client_ref: str = "item-0") -> list[dict[str, Any]]:
    page = await h.get("/v1/runs", params={"q": f"client_ref:{client_ref}"})
    items_: list[dict[str, Any]] = page["items"]
    return items_


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault.status(503), 503),
        (Fault.status(502, html=True), 502),
        (Fault.status(429, retry_after=2), 429),
        (Fault.html_ok(), 200),
    ],
)
async def test_a_refusal_before_the_handler_creates_nothing(fault: Fault, status: int) -> None:
    async with running() as h:
        h.emu.faults.next("batch_create", fault)
        got, _ = await send(h)
        counters = h.emu.counters
    assert got == status
    assert (counters.runs_created, counters.batches_created) == (0, 0)
    assert counters.batch_create_requests == 1


async def test_a_dropped_connection_creates_nothing() -> None:
    async with running() as h:
        h.emu.faults.next("batch_create", Fault.drop())
        with pytest.raises(aiohttp.ClientError):
            await send(h)
        assert h.emu.counters.batches_created == 0


async def test_a_lost_answer_commits_the_batch_and_its_key_replays_it() -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("batch_create", Fault.lost_response())
        status, page = await send(h, key="lost-1")
        assert status == 502
        assert "<html>" in page
        found = await listed(h)
        status, replay = await send(h, key="lost-1")
        counters = h.emu.counters
    assert status == 201
    assert found[0]["batch_id"] == replay["id"]
    assert replay["items"][0]["run_id"] == found[0]["id"]
    assert (counters.batches_created, counters.runs_created) == (1, 4)
    assert counters.batch_replays == 1


async def test_a_dropped_answer_after_the_commit_is_ambiguous_too() -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("batch_create", Fault.lost_response(None))
        with pytest.raises(aiohttp.ClientError):
            await send(h)
        assert h.emu.counters.batches_created == 1
        h.emu.faults.next("batch_create", Fault.malformed())
        with pytest.raises(aiohttp.ClientError):
            await send(h, body={"input": items(2, "second")})
        counters = h.emu.counters
    assert (counters.batches_created, counters.runs_created) == (2, 6)


async def test_seeded_lost_creates_hit_the_batch_route() -> None:
    rates = FaultRates(rate_lost_create=1.0, applies_to=frozenset({"batch_create"}))
    async with running(faults=rates) as h:
        statuses = [(await send(h, body={"input": items(1, f"b{n}")}))[0] for n in range(3)]
        run = await h.create()  # the run route does not draw
        counters = h.emu.counters
    assert statuses == [502, 502, 502]
    assert run["batch_id"] is None
    assert (counters.batches_created, counters.runs_created) == (3, 4)
    assert counters.faults_injected == {"lost_response": 3}


async def test_a_late_commit_hides_the_batch_until_it_is_stored() -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("batch_create", Fault.late_commit(3.0))
        with pytest.raises(aiohttp.ClientError):
            await send(h)
        before = h.emu.counters
        hidden = await listed(h)
        h.emu.advance(3.1)
        (shown,) = await listed(h)
        batch = await h.get(f"/v1/batches/{shown['batch_id']}")
        after = h.emu.counters
    assert (before.batches_created, before.commits_pending, hidden) == (0, 4, [])
    assert (after.batches_created, after.runs_created, after.commits_pending) == (1, 4, 0)
    assert batch["items_total"] == 4
    assert batch["created_at"] == shown["created_at"]


async def _held(h: Harness, key: str) -> asyncio.Task[tuple[int, Any]]:
    """Send a batch create that commits 3 s late and answers then; return once received."""
    h.emu.faults.next("batch_create", Fault.late_commit(3.0, answer=True))
    task = asyncio.create_task(send(h, key=key))
    for _ in range(1000):
        if h.emu.counters.commits_pending:
            return task
        await asyncio.sleep(0.001)
    raise AssertionError("the create never arrived")


async def test_a_repeat_during_a_late_commit_waits_and_replays_at_receipt() -> None:
    async with running(**FROZEN) as h:
        first = await _held(h, "late-1")
        repeat = asyncio.create_task(send(h, key="late-1"))
        await asyncio.sleep(0.005)
        assert not repeat.done()
        h.emu.advance(3.1)
        (status_1, batch_1), (status_2, batch_2) = await asyncio.gather(first, repeat)
        conflict, _ = await send(h, key="late-1", body={"input": items(1, "x")})
        counters = h.emu.counters
    assert (status_1, status_2, conflict) == (201, 201, 409)
    assert batch_1["id"] == batch_2["id"]
    assert (counters.batches_created, counters.runs_created) == (1, 4)


async def test_a_repeat_with_another_body_during_a_late_commit_is_refused() -> None:
    async with running(**FROZEN) as h:
        first = await _held(h, "late-2")
        status, answer = await send(h, key="late-2", body={"input": items(1, "y")})
        h.emu.advance(3.1)
        await first
    assert (status, answer["code"]) == (409, "CONFLICT")


async def test_a_repeat_during_a_late_commit_makes_a_second_batch_at_commit() -> None:
    async with running(**FROZEN, idempotency_mode="at_commit") as h:
        first = await _held(h, "late-3")
        status, second = await send(h, key="late-3")
        h.emu.advance(3.1)
        _, first_batch = await first
        _, third = await send(h, key="late-3")
        counters = h.emu.counters
    assert status == 201
    assert first_batch["id"] != second["id"]
    assert third["id"] == second["id"]  # the first stored batch owns the key
    assert (counters.batches_created, counters.client_ref_duplicates) == (2, 4)


async def test_wrong_ids_in_the_answer() -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("batch_create", Fault.reused_run_id())
        _, alone = await send(h)  # no previous batch: answered as usual
        h.emu.faults.next("batch_create", Fault.reused_run_id())
        _, reused = await send(h, body={"input": items(1, "two")})
        h.emu.faults.next("batch_create", Fault.bad_run_id(None))
        _, no_id = await send(h, body={"input": items(1, "three")})
        counters = h.emu.counters
    assert reused["id"] == alone["id"]
    assert "id" not in no_id
    assert counters.batches_created == 3


async def test_children_lag_in_lists_like_any_run() -> None:
    async with running(**FROZEN, list_lag=2.0) as h:
        _, batch = await send(h)
        lagging = await listed(h)
        read = await h.get(f"/v1/runs/{batch['items'][0]['run_id']}")
        h.emu.advance(2.1)
        shown = await listed(h)
    assert lagging == []
    assert read["batch_id"] == batch["id"]
    assert [run["id"] for run in shown] == [read["id"]]


async def test_credit_and_rate_limits_refuse_a_batch_before_anything_is_made() -> None:
    async with running(**FROZEN, max_in_flight_runs=4) as h:
        status, _ = await send(h)
        refused, answer = await send(h, body={"input": items(1, "more")})
        counters = h.emu.counters
    assert (status, refused, answer["code"]) == (201, 429, "RATE_LIMITED")
    assert (counters.batches_created, counters.rate_limited) == (1, 1)
    async with running(credit_usd=0) as h:
        status, answer = await send(h)
        assert (status, answer["code"]) == (402, "INSUFFICIENT_CREDIT")
        assert h.emu.counters.runs_created == 0


async def test_create_only_faults_are_refused_on_read_routes() -> None:
    async with running() as h:
        with pytest.raises(ValueError, match="only applies to the create routes"):
            h.emu.faults.next("get_batch", Fault.late_commit())
        h.emu.faults.next("get_batch", Fault.status(503))
        created = await h.post(BATCHES, BODY)
        await h.get(f"/v1/batches/{created['id']}", expect=503)
        assert (await h.get(f"/v1/batches/{created['id']}"))["id"] == created["id"]

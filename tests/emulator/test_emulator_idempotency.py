"""``Idempotency-Key`` on create: replay, conflict, and the mode that ignores it."""

from __future__ import annotations

import aiohttp

from runflow_async.emulator import Fault
from tests.emulator.emulator_support import AUTH, FROZEN, GENERATE, running


async def test_a_repeated_key_and_body_replays_the_first_201() -> None:
    async with running(**FROZEN) as h:
        key = {"Idempotency-Key": "key-1"}
        first = await h.create(headers=key, client_ref="rfa-1")
        h.emu.advance(500.0)
        url = f"/v1/models/{GENERATE}/runs"
        body = {"input": {"prompt": "a red fox"}, "client_ref": "rfa-1"}
        async with h.http.post(url, json=body, headers={**AUTH, **key}) as resp:
            assert resp.status == 201
            assert resp.headers["Idempotent-Replayed"] == "true"
            second = await resp.json()
        counters = h.emu.counters
    assert second == first
    assert counters.runs_created == 1
    assert counters.idempotent_replays == 1


async def test_a_repeated_key_with_another_body_is_409_conflict() -> None:
    async with running(**FROZEN) as h:
        await h.create("one", headers={"Idempotency-Key": "key-1"})
        answer = await h.create("two", headers={"Idempotency-Key": "key-1"}, expect=409)
        counters = h.emu.counters
    assert answer["code"] == "CONFLICT"
    assert counters.runs_created == 1


async def test_the_key_is_ignored_when_not_honoured() -> None:
    async with running(**FROZEN, honour_idempotency_key=False) as h:
        first = await h.create(headers={"Idempotency-Key": "key-1"})
        second = await h.create(headers={"Idempotency-Key": "key-1"})
        third = await h.create("other", headers={"Idempotency-Key": "key-1"})
        counters = h.emu.counters
    assert len({first["id"], second["id"], third["id"]}) == 3
    assert counters.idempotent_replays == 0


async def test_invalid_creates_are_not_remembered_under_their_key() -> None:
    async with running(**FROZEN) as h:
        await h.create("", headers={"Idempotency-Key": "key-1"}, expect=422)
        await h.create("fixed", headers={"Idempotency-Key": "key-1"})
        assert h.emu.counters.runs_created == 1


async def test_a_lost_create_retried_with_its_key_replays_the_stored_run() -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("create", Fault.lost_response(None))
        url = f"/v1/models/{GENERATE}/runs"
        headers = {**AUTH, "Idempotency-Key": "key-lost"}
        body = {"input": {"prompt": "a red fox"}}
        try:
            async with h.http.post(url, json=body, headers=headers) as resp:
                raise AssertionError(f"got an answer: {resp.status}")
        except aiohttp.ServerDisconnectedError:
            pass
        replay = await h.create(headers={"Idempotency-Key": "key-lost"})
        counters = h.emu.counters
    assert replay["id"] == h.emu.runs()[0]["id"]
    assert counters.runs_created == 1
    assert counters.idempotent_replays == 1

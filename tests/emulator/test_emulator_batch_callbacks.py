"""The batch callback: one signed POST when every child has ended, and its history."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from runflow_async import WebhookVerificationError
from runflow_async._webhooks import verify_signature
from runflow_async.emulator import Fault
from tests.emulator.callback_receiver import QUICK, receiving
from tests.emulator.emulator_support import FROZEN, Harness, running
from tests.emulator.test_emulator_batches import BATCHES, items


async def batch_history(h: Harness, batch_id: str, count: int = 1) -> list[dict[str, Any]]:
    """Poll the batch's delivery history until ``count`` deliveries exist, none pending."""
    with anyio.fail_after(5):
        while True:
            deliveries: Any = await h.get(f"/v1/batches/{batch_id}/callback")
            if len(deliveries) >= count and all(d["status_code"] != "pending" for d in deliveries):
                return list(deliveries)
            await asyncio.sleep(0.001)


async def test_a_batch_sends_one_signed_callback_when_every_item_has_ended() -> None:
    async with running(**QUICK, failure_rate=0.3, seed=5) as h, receiving() as rx:
        secret = await h.post("/v1/callback-secrets", {"label": "batches"})
        meta = {"job": "nightly"}
        body = {"input": items(20), "metadata": meta, "callback_url": rx.url}
        created = await h.post(BATCHES, body)
        (got,) = await rx.wait_for(1)
        (delivery,) = await batch_history(h, created["id"])
        report = h.emu.report()  # before any read: only the callback told
        batch = await h.get(f"/v1/batches/{created['id']}")
        runs = h.emu.runs()
        await rx.quiet()
        counters = h.emu.counters
    verify_signature(got.body, got.headers["Runflow-Signature"], [secret["plain_secret"]])
    with pytest.raises(WebhookVerificationError):
        verify_signature(
            got.body + b" ", got.headers["Runflow-Signature"], [secret["plain_secret"]]
        )
    payload = got.json
    assert list(payload) == [
        "event",
        "batch_id",
        "status",
        "output",
        "duration_ms",
        "created_at",
        "completed_at",
        "metadata",
    ]
    failed = sum(run["status_code"] == "failed" for run in runs)
    assert 0 < failed < 20
    assert payload["event"] == "batch.partial_succeeded"
    assert payload["status"] == batch["status_code"] == "partial_succeeded"
    assert payload["batch_id"] == created["id"]
    assert payload["metadata"] == meta
    output = payload["output"]
    assert (output["total"], output["failed"], output["cancelled"]) == (20, failed, 0)
    assert output["succeeded"] == 20 - failed
    assert output["items"] == batch["items"]
    assert (payload["created_at"], payload["completed_at"]) == (
        batch["created_at"],
        batch["completed_at"],
    )
    assert payload["duration_ms"] == batch["duration_ms"]
    assert all(run["callback_url"] is None for run in runs)
    assert counters.callbacks_sent == counters.callbacks_delivered == 1  # children send none
    assert delivery["batch_id"] == created["id"]
    assert "run_id" not in delivery
    assert delivery["event"] == "batch.partial_succeeded"
    assert delivery["signing_secret_id"] == secret["id"]
    assert all(row["noticed"] is not None for row in report["runs"])


async def test_a_batch_whose_items_all_succeed_or_fail_says_so() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        good = await h.post(BATCHES, {"input": items(3), "callback_url": rx.url})
        h.emu.faults.next("batch_create", Fault.fail_run())
        bad = await h.post(BATCHES, {"input": items(2, "bad"), "callback_url": rx.url})
        received = await rx.wait_for(2)
    events = {r.json["batch_id"]: (r.json["event"], r.json["output"]["failed"]) for r in received}
    assert events == {good["id"]: ("batch.succeeded", 0), bad["id"]: ("batch.failed", 2)}
    assert all("Runflow-Signature" not in r.headers for r in received)  # no secret yet


async def test_the_callback_waits_for_the_last_item() -> None:
    async with running(**FROZEN) as h, receiving() as rx:
        created = await h.post(BATCHES, {"input": items(2), "callback_url": rx.url})
        h.emu.advance(999.0)
        await rx.quiet()
        early = list(rx.received)
        h.emu.advance(2.0)
        (got,) = await rx.wait_for(1)
    assert early == []
    assert got.json["batch_id"] == created["id"]


async def test_a_failed_delivery_is_retried_like_a_run_callback() -> None:
    async with running(**QUICK) as h, receiving(answers=[503, 500]) as rx:
        created = await h.post(BATCHES, {"input": items(2), "callback_url": rx.url})
        received = await rx.wait_for(3)
        (delivery,) = await batch_history(h, created["id"])
    assert len({r.body for r in received}) == 1  # the same frozen body every time
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 500, 200]
    assert delivery["status_code"] == "delivered"


async def test_callback_faults_apply_to_batch_callbacks() -> None:
    async with running(**QUICK, callback_null_output_rate=1.0) as h, receiving() as rx:
        h.emu.faults.next("callback", Fault.duplicate())
        created = await h.post(BATCHES, {"input": items(2), "callback_url": rx.url})
        first, second = await rx.wait_for(2)
        deliveries = await batch_history(h, created["id"], count=2)
        h.emu.faults.next("callback", Fault.drop())
        dropped = await h.post(BATCHES, {"input": items(1, "d"), "callback_url": rx.url})
        with anyio.fail_after(5):
            while h.emu.counters.faults_injected.get("callback_drop", 0) < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        await rx.quiet()
        none: Any = await h.get(f"/v1/batches/{dropped['id']}/callback")
    assert first.body == second.body
    assert first.json["output"] is None
    assert len(deliveries) == 2
    assert none == []
    assert len(rx.received) == 2


async def test_a_batch_without_a_callback_url_sends_nothing() -> None:
    async with running(**QUICK) as h:
        created = await h.post(BATCHES, {"input": items(2)})
        await asyncio.sleep(0.01)
        history: Any = await h.get(f"/v1/batches/{created['id']}/callback")
        missing = await h.get("/v1/batches/nope/callback", expect=404)
        counters = h.emu.counters
    assert history == []
    assert missing["code"] == "BATCH_NOT_FOUND"
    assert counters.callbacks_sent == 0

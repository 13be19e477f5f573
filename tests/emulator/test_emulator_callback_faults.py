"""Callback faults, scripted and seeded: drop, duplicate, slow, reorder."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from runflow_async.emulator import CallbackFaults, Fault, FaultScript
from tests.emulator.callback_receiver import QUICK, Receiver, history, receiving
from tests.emulator.emulator_support import AUTH, FROZEN, Harness, running


async def _pending(h: Harness, run_id: str) -> dict[str, Any]:
    """Return the one delivery of ``run_id``, whatever its state."""
    async with h.http.get(f"/v1/runs/{run_id}/callback", headers=AUTH) as resp:
        (delivery,) = await resp.json()
    assert isinstance(delivery, dict)
    return delivery


def _due_after(delivery: dict[str, Any], run: dict[str, Any], seconds: float) -> bool:
    """Whether the next attempt is ``seconds`` (emulated) after the run ended, give or take 1 s."""
    due = datetime.fromisoformat(delivery["next_attempt_at"])
    ended = datetime.fromisoformat(run["created_at"]) + timedelta(seconds=1000)
    return abs(due - ended - timedelta(seconds=seconds)) < timedelta(seconds=1)


async def test_a_dropped_delivery_is_never_sent_and_redelivery_recovers_it() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        h.emu.faults.next("callback", Fault.drop())
        dropped = await h.create(callback_url=rx.url)
        await h.finish(dropped["id"])
        kept = await h.create(callback_url=rx.url)
        (got,) = await rx.wait_for(1)
        assert await history(h, dropped["id"], count=0) == []
        await h.post(f"/v1/runs/{dropped['id']}/callback-redeliveries", None, expect=202)
        _, redelivered = await rx.wait_for(2)
        await history(h, dropped["id"])
        counters = h.emu.counters
    assert got.json["run_id"] == kept["id"]
    assert redelivered.json["run_id"] == dropped["id"]
    assert counters.faults_injected == {"callback_drop": 1}
    assert counters.callbacks_delivered == 2


async def test_a_duplicated_delivery_arrives_twice_with_the_same_signed_body() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        await h.post("/v1/callback-secrets", {"label": "x"})
        h.emu.faults.next("callback", Fault.duplicate())
        created = await h.create(callback_url=rx.url)
        first, second = await rx.wait_for(2)
        deliveries = await history(h, created["id"], count=2)
        await rx.quiet()
        counters = h.emu.counters
    assert len(rx.received) == 2
    assert first.body == second.body
    assert first.headers["Runflow-Signature"] == second.headers["Runflow-Signature"]
    assert first.headers["Runflow-Request-Id"] != second.headers["Runflow-Request-Id"]
    assert [d["status_code"] for d in deliveries] == ["delivered", "delivered"]
    assert deliveries[0]["id"] != deliveries[1]["id"]
    assert counters.faults_injected == {"callback_duplicate": 1}
    assert (counters.callbacks_sent, counters.callbacks_delivered) == (2, 2)


async def test_a_slow_delivery_is_sent_late_in_emulated_time() -> None:
    async with running(**FROZEN) as h, receiving() as rx:
        h.emu.faults.next("callback", Fault.slow(100.0))
        created = await h.create(callback_url=rx.url)
        h.emu.advance(1000.0)  # the run has ended; its callback is due 100 s later
        await rx.quiet()
        assert rx.received == []
        pending = await _pending(h, created["id"])
        h.emu.advance(100.0)
        (got,) = await rx.wait_for(1)
        counters = h.emu.counters
    assert (pending["status_code"], pending["attempt_count"]) == ("pending", 0)
    assert _due_after(pending, created, 100.0)
    assert got.json["run_id"] == created["id"]
    assert counters.faults_injected == {"callback_slow": 1}


async def test_a_reordered_delivery_is_sent_after_the_next_one() -> None:
    async with running(**FROZEN) as h, receiving() as rx:
        h.emu.faults.next("callback", Fault.reorder(max_hold=1000.0))
        first = await h.create(callback_url=rx.url)
        h.emu.advance(500.0)
        second = await h.create(callback_url=rx.url)
        h.emu.advance(500.0)  # the first run ends: its callback is held for up to 1000 s
        await rx.quiet()
        assert rx.received == []
        held = await _pending(h, first["id"])
        h.emu.advance(500.0)  # the second run ends: its callback goes, then the held one
        await rx.wait_for(2)
        h.emu.advance(500.0)  # the hold's deadline passes: nothing more is sent
        await rx.quiet()
        counters = h.emu.counters
    assert [r.json["run_id"] for r in rx.received] == [second["id"], first["id"]]
    assert held["status_code"] == "pending"
    assert _due_after(held, first, 1000.0)
    assert counters.faults_injected == {"callback_reorder": 1}
    assert counters.callbacks_delivered == 2


async def test_a_held_delivery_goes_at_its_deadline_when_no_other_comes() -> None:
    async with running(**FROZEN) as h, receiving() as rx:
        h.emu.faults.next("callback", Fault.reorder(max_hold=50.0))
        created = await h.create(callback_url=rx.url)
        h.emu.advance(1000.0)
        await rx.quiet()
        assert rx.received == []
        h.emu.advance(50.0)
        (got,) = await rx.wait_for(1)
    assert got.json["run_id"] == created["id"]


async def _seeded_run(seed: int, count: int) -> tuple[dict[str, int], Receiver, set[str]]:
    faults = CallbackFaults(
        rate_drop=0.2,
        rate_duplicate=0.2,
        rate_slow=0.2,
        slow_seconds=1.0,
        rate_reorder=0.2,
        reorder_hold_seconds=2.0,
    )
    async with running(**QUICK, seed=seed, callback_faults=faults) as h, receiving() as rx:
        ids = {(await h.create(callback_url=rx.url))["id"] for _ in range(count)}
        for run_id in ids:
            await h.finish(run_id)
        injected = dict(h.emu.counters.faults_injected)
        expected = count - injected.get("callback_drop", 0) + injected.get("callback_duplicate", 0)
        await rx.wait_for(expected)
        await rx.quiet()
    return injected, rx, ids


async def test_seeded_callback_faults_are_drawn_per_delivery_and_repeat_with_the_seed() -> None:
    injected, rx, ids = await _seeded_run(seed=4, count=30)
    again, _, _ = await _seeded_run(seed=4, count=30)
    assert injected == again
    assert set(injected) == {
        "callback_drop",
        "callback_duplicate",
        "callback_slow",
        "callback_reorder",
    }
    assert sum(injected.values()) < 30  # some deliveries drew no fault
    sent = [r.json["run_id"] for r in rx.received]
    assert len(sent) == 30 - injected["callback_drop"] + injected["callback_duplicate"]
    assert len(ids - set(sent)) == injected["callback_drop"]


async def test_a_drop_rate_of_one_sends_nothing() -> None:
    faults = CallbackFaults(rate_drop=1.0)
    async with running(**QUICK, callback_faults=faults) as h, receiving() as rx:
        created = await h.create(callback_url=rx.url)
        await h.finish(created["id"])
        await rx.quiet()
        assert h.emu.counters.faults_injected == {"callback_drop": 1}
    assert rx.received == []


@pytest.mark.parametrize(
    ("route", "fault", "match"),
    [
        ("callback", Fault.status(503), "does not apply to callbacks"),
        ("callback", Fault.lost_response(), "does not apply to callbacks"),
        ("callback", Fault.fail_run(), "does not apply to callbacks"),
        ("create", Fault.duplicate(), "only applies to callbacks"),
        ("any", Fault.reorder(), "only applies to callbacks"),
        ("get_run", Fault.lost_response(), "only applies to the create route"),
        ("callbacks", Fault.drop(), "unknown route"),
    ],
)
def test_faults_are_refused_on_routes_they_cannot_apply_to(
    route: str, fault: Fault, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        FaultScript().next(route, fault)


def test_any_faults_never_touch_callbacks_and_callback_faults_never_touch_requests() -> None:
    script = FaultScript()
    script.next("any", Fault.slow(1.0))
    script.next("callback", Fault.drop())
    assert script.take("callback") == Fault.drop()
    assert script.take("callback") is None
    assert script.take("get_run") == Fault.slow(1.0)
    assert script.pending() == 0


def test_a_negative_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="hold"):
        Fault.reorder(-1.0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"rate_drop": 1.5}, "rate_drop"),
        ({"rate_reorder": -0.1}, "rate_reorder"),
        ({"rate_drop": 0.6, "rate_duplicate": 0.6}, "more than 1"),
        ({"slow_seconds": -1.0}, "slow_seconds"),
        ({"reorder_hold_seconds": float("nan")}, "reorder_hold_seconds"),
    ],
)
def test_invalid_callback_fault_rates_are_refused(fields: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CallbackFaults(**fields)

"""Callback deliveries: signed POSTs on terminal runs, retries, history, redelivery, shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import anyio
import pytest

from runflow_async.emulator import EmulatorConfig, EmulatorCounters
from tests.emulator.callback_receiver import QUICK, STALL, closed_port_url, history, receiving
from tests.emulator.emulator_support import FROZEN, Harness, running


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - the emulator has no event to wait on
            await asyncio.sleep(0.001)


def _callback_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of the emulator's callback machinery still alive in this loop."""
    names = {"Scheduler.run", "CallbackCenter._attempt"}
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ in names]  # type: ignore[union-attr]


async def new_secret(h: Harness, label: str = "production") -> dict[str, Any]:
    return await h.post("/v1/callback-secrets", {"label": label})


def _without_query(output: dict[str, Any]) -> dict[str, Any]:
    items = [{**item, "url": item["url"].split("?")[0]} for item in output["outputs"]]
    return {**output, "outputs": items}


async def test_a_run_with_a_callback_url_delivers_one_signed_post() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        secret = await new_secret(h)
        meta = {"order": 42, "tags": ["a", "b"]}
        created = await h.create(callback_url=rx.url, metadata=meta)
        (got,) = await rx.wait_for(1)
        (delivery,) = await history(h, created["id"])
        report = h.emu.report()  # before any read of the run: only the callback told
        run = await h.finish(created["id"])
        counters = h.emu.counters
        await rx.quiet()
    assert got.path == "/hook"
    assert got.headers["Content-Type"] == "application/json"
    assert got.signed_with(secret["plain_secret"])
    assert len(got.headers["Runflow-Signature"]) == 64
    assert got.headers["Runflow-Request-Id"]
    assert got.body == json.dumps(got.json, separators=(",", ":")).encode()  # compact, once
    body = got.json
    assert list(body) == [
        "event",
        "run_id",
        "status",
        "output",
        "duration_ms",
        "created_at",
        "completed_at",
        "metadata",
    ]
    assert (body["event"], body["run_id"], body["status"]) == (
        "run.completed",
        run["id"],
        "succeeded",
    )
    assert _without_query(body["output"]) == _without_query(run["output"])
    assert body["output"]["outputs"][0]["url"].startswith(h.emu.url)
    assert (body["duration_ms"], body["metadata"]) == (run["duration_ms"], meta)
    for name in ("created_at", "completed_at"):
        assert body[name] == run[name]
        assert body[name].endswith("+00:00")
        datetime.fromisoformat(body[name])
    assert delivery["status_code"] == "delivered"
    assert delivery["event"] == "run.completed"
    assert (delivery["attempt_count"], delivery["max_attempts"]) == (1, 3)
    assert delivery["next_attempt_at"] is None
    assert delivery["signing_secret_id"] == secret["id"]
    assert delivery["is_automatic"] is True
    assert delivery["failure_reason_code"] is None
    (attempt,) = delivery["attempts"]
    assert attempt["attempt_number"] == 1
    assert attempt["status_code"] == 200
    assert attempt["response_body"] == "ok"
    assert attempt["error_message"] is None
    assert attempt["request_id"] == got.headers["Runflow-Request-Id"]
    assert attempt["response_time_ms"] >= 0
    assert attempt["created_at"].endswith("+00:00")
    assert (counters.callbacks_sent, counters.callbacks_delivered, counters.callbacks_failed) == (
        1,
        1,
        0,
    )
    assert len(rx.received) == 1
    assert report["runs"][0]["noticed"] is not None  # a delivered callback notices the run


async def test_a_failed_run_delivers_run_failed_with_null_output() -> None:
    async with running(**QUICK, failure_rate=1.0) as h, receiving() as rx:
        created = await h.create(callback_url=rx.url)
        (got,) = await rx.wait_for(1)
        (delivery,) = await history(h, created["id"])
    body = got.json
    assert (body["event"], body["status"], body["output"]) == ("run.failed", "failed", None)
    assert body["metadata"] is None
    assert body["completed_at"].endswith("+00:00")
    assert delivery["event"] == "run.failed"


async def test_without_a_secret_no_signature_header_is_sent() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        created = await h.create(callback_url=rx.url)
        (got,) = await rx.wait_for(1)
        (delivery,) = await history(h, created["id"])
    assert "Runflow-Signature" not in got.headers
    assert got.headers["Runflow-Request-Id"]
    assert delivery["signing_secret_id"] is None


async def test_a_run_without_a_callback_url_sends_nothing_and_has_no_history() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        created = await h.create()
        await h.finish(created["id"])
        await rx.quiet()
        assert await history(h, created["id"], count=0) == []
        assert h.emu.counters.callbacks_sent == 0
    assert rx.received == []


async def test_a_receiver_answering_500_gets_three_attempts_then_failure() -> None:
    async with running(**QUICK) as h, receiving(default=500) as rx:
        created = await h.create(callback_url=rx.url)
        (delivery,) = await history(h, created["id"])
        await rx.quiet()
        counters = h.emu.counters
    assert len(rx.received) == 3
    assert len({r.headers["Runflow-Request-Id"] for r in rx.received}) == 3
    assert len({r.body for r in rx.received}) == 1  # the same frozen payload each time
    assert delivery["status_code"] == "failed"
    assert delivery["attempt_count"] == 3
    assert delivery["failure_reason_code"] == "HTTP_ERROR"
    assert "500" in delivery["failure_detail"]
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 500]
    assert [a["attempt_number"] for a in delivery["attempts"]] == [1, 2, 3]
    assert delivery["attempts"][0]["response_body"] == "nope"
    times = [datetime.fromisoformat(a["created_at"]) for a in delivery["attempts"]]
    assert (times[1] - times[0]).total_seconds() >= 1.0
    assert (times[2] - times[1]).total_seconds() >= 2.0
    assert (counters.callbacks_sent, counters.callbacks_delivered, counters.callbacks_failed) == (
        3,
        0,
        1,
    )


async def test_a_5xx_then_a_2xx_is_delivered_on_the_retry() -> None:
    async with running(**QUICK) as h, receiving([503]) as rx:
        created = await h.create(callback_url=rx.url)
        (delivery,) = await history(h, created["id"])
    assert delivery["status_code"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 200]
    assert len(rx.received) == 2


async def test_a_4xx_ends_the_delivery_at_once() -> None:
    async with running(**QUICK) as h, receiving([410]) as rx:
        created = await h.create(callback_url=rx.url)
        (delivery,) = await history(h, created["id"])
        await rx.quiet()
        counters = h.emu.counters
    assert len(rx.received) == 1
    assert delivery["status_code"] == "failed"
    assert delivery["attempt_count"] == 1
    assert delivery["next_attempt_at"] is None
    assert (counters.callbacks_sent, counters.callbacks_failed) == (1, 1)


async def test_a_receiver_that_does_not_answer_in_time_is_retried() -> None:
    # callback_timeout 10 emulated s = 10 ms, raised to a 300 ms floor: the first
    # attempt stalls and waits it out; the second must be answered within it, even on
    # a loaded machine (at 50 ms it failed once with helpers' suites running beside).
    async with running(**QUICK, callback_timeout_floor=0.3) as h, receiving([STALL]) as rx:
        created = await h.create(callback_url=rx.url)
        (delivery,) = await history(h, created["id"])
    first, second = delivery["attempts"]
    assert first["status_code"] is None
    assert first["error_message"] == "No answer within 10 s."
    assert first["response_body"] is None
    assert second["status_code"] == 200
    assert delivery["status_code"] == "delivered"


async def test_connection_errors_are_retried_then_given_up() -> None:
    async with running(**QUICK) as h:
        created = await h.create(callback_url=closed_port_url())
        (delivery,) = await history(h, created["id"])
    assert delivery["status_code"] == "failed"
    assert delivery["failure_reason_code"] == "CONNECTION_ERROR"
    assert delivery["failure_detail"]
    assert [a["status_code"] for a in delivery["attempts"]] == [None, None, None]
    assert all(a["error_message"] for a in delivery["attempts"])


async def test_redelivery_sends_a_fresh_payload_signed_with_the_current_secret() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        created = await h.create(callback_url=rx.url, metadata={"k": 1})
        (first,) = await rx.wait_for(1)
        await history(h, created["id"])
        secret = await new_secret(h)
        path = f"/v1/runs/{created['id']}/callback-redeliveries"
        answer = await h.post(path, None, expect=202)
        _, second = await rx.wait_for(2)
        deliveries = await history(h, created["id"], count=2)
    assert answer["is_automatic"] is False
    assert answer["status_code"] == "pending"
    assert answer["attempt_count"] == 0
    assert answer["signing_secret_id"] == secret["id"]
    assert "Runflow-Signature" not in first.headers
    assert second.signed_with(secret["plain_secret"])
    assert second.json["run_id"] == first.json["run_id"] == created["id"]
    assert second.json["metadata"] == {"k": 1}
    assert [d["is_automatic"] for d in deliveries] == [True, False]
    assert deliveries[1]["id"] == answer["id"]
    assert deliveries[1]["status_code"] == "delivered"


async def test_redelivery_and_history_refusals() -> None:
    async with running(**FROZEN) as h, receiving() as rx:
        plain = await h.create()
        pending = await h.create(callback_url=rx.url)
        redeliver = "/v1/runs/{}/callback-redeliveries"
        unknown = await h.post(redeliver.format("nope"), None, expect=404)
        no_url = await h.post(redeliver.format(plain["id"]), None, expect=409)
        early = await h.post(redeliver.format(pending["id"]), None, expect=409)
        missing = await h.get("/v1/runs/nope/callback", expect=404)
        async with h.http.get(f"/v1/runs/{pending['id']}/callback") as resp:
            assert resp.status == 401
        assert await history(h, pending["id"], count=0) == []
    assert (unknown["code"], missing["code"]) == ("RUN_NOT_FOUND", "RUN_NOT_FOUND")
    assert no_url["code"] == "NO_CALLBACK_URL"
    assert early["code"] == "RUN_NOT_TERMINAL"
    assert rx.received == []


async def test_advancing_the_clock_sends_the_callbacks_that_fell_due() -> None:
    async with running(**FROZEN) as h, receiving() as rx:
        created = await h.create(callback_url=rx.url)
        await rx.quiet()
        assert rx.received == []
        h.emu.advance(1000.0)
        (got,) = await rx.wait_for(1)
    assert got.json["run_id"] == created["id"]


async def test_aclose_cancels_pending_and_in_flight_deliveries_cleanly() -> None:
    async with receiving([STALL, 500, STALL]) as rx:
        async with running(**QUICK, callback_timeout=1e6) as h:
            await h.create(callback_url=rx.url)
            await rx.wait_for(1)  # its POST is in flight, never to be answered
            assert len(_callback_tasks()) == 2
        assert _callback_tasks() == []
        async with running(**FROZEN) as frozen:
            await frozen.create(callback_url=rx.url)
            await frozen.create(callback_url=rx.url)
            frozen.emu.advance(1000.0)
            await rx.wait_for(3)  # one 500 (a retry is then 1 real second away), one stalled
            await _until(lambda: frozen.emu._state.callbacks.pending == 1)
        assert _callback_tasks() == []
        async with running(**FROZEN) as idle:
            await idle.create(callback_url=rx.url)  # ends in 1000 s
            assert idle.emu._state.callbacks.pending == 1
        assert _callback_tasks() == []
        await rx.quiet()
    assert len(rx.received) == 3


async def test_two_hundred_runs_with_callbacks_deliver_two_hundred_times() -> None:
    async with running(**QUICK) as h, receiving() as rx:
        runs = await asyncio.gather(*(h.create(callback_url=rx.url) for _ in range(200)))
        received = await rx.wait_for(200)
        await _until(lambda: h.emu.counters.callbacks_delivered == 200)
        await rx.quiet()
        counters = h.emu.counters
    assert len(received) == 200
    assert {r.json["run_id"] for r in received} == {run["id"] for run in runs}
    assert (counters.callbacks_sent, counters.callbacks_failed) == (200, 0)


async def test_two_thousand_runs_created_200_at_a_time_are_each_called_back_once() -> None:
    # Durations spread log-normally, so runs end out of creation order.
    settings = {**QUICK, "median_duration": 5.0, "duration_sigma": 0.5}
    async with running(**settings) as h, receiving() as rx:
        gate = asyncio.Semaphore(200)

        async def create() -> str:
            async with gate:
                return str((await h.create(callback_url=rx.url))["id"])

        ids = await asyncio.gather(*(create() for _ in range(2000)))
        await rx.wait_for(2000, timeout=30)
        await _until(lambda: h.emu.counters.callbacks_delivered == 2000)
        await rx.quiet()
        counters = h.emu.counters
    assert sorted(r.json["run_id"] for r in rx.received) == sorted(ids)
    assert (counters.callbacks_sent, counters.callbacks_failed) == (2000, 0)


def test_the_callback_counters_survive_json_and_default_to_zero() -> None:
    counters = EmulatorCounters(
        runs_created=1,
        runs_billed=1,
        billed_usd=Decimal("0.01"),
        runs_failed=0,
        idempotent_replays=0,
        max_in_flight=1,
        in_flight=0,
        requests_by_route={},
        responses_by_status={},
        faults_injected={},
        callbacks_sent=4,
        callbacks_delivered=2,
        callbacks_failed=1,
    )
    data = counters.to_json()
    assert (data["callbacks_sent"], data["callbacks_delivered"], data["callbacks_failed"]) == (
        4,
        2,
        1,
    )
    assert EmulatorCounters.from_json(data) == counters
    older = {k: v for k, v in data.items() if not k.startswith("callbacks_")}
    assert EmulatorCounters.from_json(older).callbacks_sent == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("callback_timeout", 0.0),
        ("callback_timeout", -1.0),
        ("callback_timeout", float("nan")),
        ("callback_timeout", float("inf")),
        ("callback_timeout_floor", -0.1),
        ("callback_timeout_floor", float("inf")),
    ],
)
def test_an_invalid_callback_timeout_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        EmulatorConfig(**dict[str, Any]({field: value}))

"""Waiting by callback: batches and single runs settle on signed deliveries from the emulator.

Every test runs the emulator in-process, creates a signing secret through the
API, and waits with a real :class:`CallbackReceiver` on loopback. Costs are
checked against what the emulator billed, so a run settled twice, or settled
from a forged delivery, shows up as a wrong total.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from runflow_async import (
    SIGNATURE_HEADER,
    BatchEvent,
    CallbackReceiver,
    ConfigurationError,
    GenerateRequest,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
    RunTimeoutError,
    sign,
)
from runflow_async.emulator import CallbackFaults, Emulator
from tests.conftest import API_KEY, TIME_SCALE

pytestmark = pytest.mark.anyio

# Emulated seconds (a millisecond each): a run takes ~2 s; the fallback starts
# 200 s after the create, far beyond any callback even on a loaded machine.
AFTER, INTERVAL = 200.0, 50.0


def callback_client(url: str, receiver: CallbackReceiver | None = None) -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=TIME_SCALE),
        poll=PollPolicy(
            time_scale=TIME_SCALE,
            callback_fallback_after=AFTER,
            callback_fallback_interval=INTERVAL,
        ),
        callbacks=receiver,
    )


async def start_emulator(**config: Any) -> Emulator:
    emu = Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, seed=3, **config)
    await emu.start()
    return emu


async def new_secret(client: RunflowClient) -> str:
    return (await client.create_callback_secret("tests")).plain_secret.get_secret_value()


def prompts(n: int) -> list[GenerateRequest]:
    return [GenerateRequest(prompt=f"callback prompt {i}") for i in range(n)]


def routes(emu: Emulator) -> dict[str, int]:
    return dict(emu.counters.requests_by_route)


class Events:
    """A batch observer that remembers every event."""

    def __init__(self) -> None:
        self.events: list[BatchEvent] = []
        self._waiting: list[tuple[str, int, anyio.Event]] = []

    def __call__(self, event: BatchEvent) -> None:
        self.events.append(event)
        for kind, n, reached in self._waiting:
            if len(self.per_index(kind)) >= n:
                reached.set()

    async def until(self, kind: str, n: int) -> None:
        """Wait until ``n`` items have had a ``kind`` event."""
        if len(self.per_index(kind)) >= n:
            return
        reached = anyio.Event()
        self._waiting.append((kind, n, reached))
        await reached.wait()

    def per_index(self, kind: str) -> Counter[int | None]:
        return Counter(e.index for e in self.events if e.kind == kind)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = await start_emulator()
    try:
        yield emu
    finally:
        await emu.aclose()


async def test_a_batch_settles_on_callbacks_without_reading_runs() -> None:
    # Runs of ~50 s (50 ms), far below the 200 s fallback: long enough that any
    # polling would read each running run many times, so reads show how the
    # runs were noticed.
    emulator = await start_emulator(median_duration=50.0, duration_sigma=0.1)
    try:
        await settle_200_by_callback(emulator)
    finally:
        await emulator.aclose()


async def settle_200_by_callback(emulator: Emulator) -> None:
    events = Events()
    async with (
        callback_client(emulator.url) as client,
        CallbackReceiver([await new_secret(client)]) as rx,
    ):
        async with client.batch(max_concurrency=40, callbacks=rx, observer=events) as batch:
            batch.submit_many(prompts(200))
        outcomes = await batch.gather()
    assert all(o.ok for o in outcomes)
    assert rx.counters.accepted == 200
    seen = routes(emulator)
    assert seen["create"] == 200
    assert seen["get_run"] == 0  # every run settled from its callback
    # Not found by polling either: each run was named once at most, by the bulk
    # cost lookup (the list poller would name a running run at every tick).
    assert max(r["reads"] for r in emulator.report()["runs"]) <= 1
    # Costs are fetched in bulk: fewer lookups than runs even though these runs
    # end a few per emulated second (at benchmark rates it is ~1 per 60 runs).
    assert seen["list_runs"] < 200
    # The budget settled on what the emulator billed, to the cent.
    assert batch.billed_usd == emulator.counters.billed_usd
    assert sum(o.billed_usd or 0 for o in outcomes) == emulator.counters.billed_usd
    assert all(o.result and o.result.run.output and o.result.run.output.outputs for o in outcomes)
    assert set(events.per_index("succeeded").values()) == {1}


async def test_duplicate_and_reordered_deliveries_settle_each_run_once() -> None:
    faults = CallbackFaults(rate_duplicate=0.4, rate_reorder=0.3, reorder_hold_seconds=5.0)
    emu = await start_emulator(callback_faults=faults)
    events = Events()
    try:
        async with (
            callback_client(emu.url) as client,
            CallbackReceiver([await new_secret(client)]) as rx,
        ):
            async with client.batch(max_concurrency=30, callbacks=rx, observer=events) as b:
                b.submit_many(prompts(150))
            outcomes = await b.gather()
        assert all(o.ok for o in outcomes)
        assert rx.counters.duplicates > 10  # the fault really fired
        assert emu.counters.faults_injected["callback_reorder"] > 0
        assert events.per_index("succeeded") == Counter(range(150))
        assert events.per_index("cost_settled") == Counter(range(150))
        assert b.billed_usd == emu.counters.billed_usd
    finally:
        await emu.aclose()


async def test_forged_deliveries_cannot_settle_fail_or_alter_a_run() -> None:
    emu = await start_emulator(median_duration=300.0, duration_sigma=0.01)
    events = Events()
    forged_statuses: list[int] = []
    async with callback_client(emu.url) as client:
        secret = await new_secret(client)
        async with (
            CallbackReceiver([secret]) as rx,
            aiohttp.ClientSession() as http,
            client.batch(max_concurrency=4, callbacks=rx, observer=events) as batch,
        ):
            futures = batch.submit_many(prompts(4))
            await events.until("submitted", 4)
            run_ids = [e.run_id for e in events.events if e.kind == "submitted"]
            for run_id in run_ids:
                failed = json.dumps({"event": "run.failed", "run_id": run_id, "status": "failed"})
                genuine = json.dumps(
                    {"run_id": run_id, "status": "succeeded", "output": {"outputs": []}}
                ).encode()
                attempts: list[tuple[bytes, dict[str, str]]] = [
                    (failed.encode(), {}),  # unsigned
                    (failed.encode(), {SIGNATURE_HEADER: "nothex"}),  # malformed
                    (failed.encode(), {SIGNATURE_HEADER: sign(failed.encode(), "whsec_wrong")}),
                    # a signed body replayed with an altered body
                    (
                        genuine.replace(b"succeeded", b"failed"),
                        {SIGNATURE_HEADER: sign(genuine, secret)},
                    ),
                ]
                for body, headers in attempts:
                    async with http.post(rx.url, data=body, headers=headers) as response:
                        forged_statuses.append(response.status)
            assert rx.counters.rejected_signature == 16
            assert not any(f.done() for f in futures)  # nothing settled early
        outcomes = await batch.gather()
    await emu.aclose()
    assert forged_statuses == [401] * 16
    assert all(o.ok for o in outcomes)
    assert [o.run_id for o in outcomes] == run_ids
    assert batch.billed_usd == emu.counters.billed_usd


async def test_with_the_receiver_down_for_a_while_the_fallback_finishes_every_run() -> None:
    emu = await start_emulator()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    events = Events()
    async with callback_client(emu.url) as client:
        # The user's own aiohttp app serves the receiver; we take it down and up again.
        rx = CallbackReceiver(
            [await new_secret(client)], path="/hooks", public_url=f"http://127.0.0.1:{port}/hooks"
        )

        async def serve() -> web.AppRunner:
            app = web.Application()
            rx.add_routes(app)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            return runner

        runner = await serve()
        try:
            async with client.batch(max_concurrency=20, callbacks=rx, observer=events) as batch:
                batch.submit_many(prompts(160))
                await events.until("submitted", 40)
                await runner.cleanup()  # down: deliveries are refused, retried, given up
                await events.until("submitted", 100)
                runner = await serve()
            outcomes = await batch.gather()
        finally:
            await runner.cleanup()
    report = emu.report()
    await emu.aclose()
    assert all(o.ok for o in outcomes)
    assert emu.counters.callbacks_failed > 0  # some deliveries were given up
    by_callback = [r for r in report["runs"] if r["noticed"] < r["created"] + AFTER]
    by_fallback = [r for r in report["runs"] if r["noticed"] >= r["created"] + AFTER]
    assert by_callback
    assert by_fallback
    for row in by_callback:
        assert row["reads"] <= 1  # at most the bulk cost lookup named it
    for row in by_fallback:
        ticks = (row["noticed"] - row["created"] - AFTER) / INTERVAL
        assert row["reads"] <= 2 + ticks  # one read per tick of the fallback schedule
    assert batch.billed_usd == emu.counters.billed_usd


async def test_a_payload_without_output_costs_one_read_of_the_run() -> None:
    emu = await start_emulator(callback_null_output_rate=1.0)
    try:
        async with (
            callback_client(emu.url) as client,
            CallbackReceiver([await new_secret(client)]) as rx,
        ):
            async with client.batch(max_concurrency=10, callbacks=rx) as batch:
                batch.submit_many(prompts(30))
            outcomes = await batch.gather()
        assert all(o.ok and o.result and o.result.run.output for o in outcomes)
        assert routes(emu)["get_run"] == 30
        assert all(r["reads"] == 1 for r in emu.report()["runs"])
        assert batch.billed_usd == emu.counters.billed_usd
    finally:
        await emu.aclose()


async def test_a_failed_run_is_read_once_for_its_reason() -> None:
    emu = await start_emulator(failure_rate=1.0)
    try:
        async with (
            callback_client(emu.url) as client,
            CallbackReceiver([await new_secret(client)]) as rx,
        ):
            async with client.batch(max_concurrency=5, callbacks=rx) as batch:
                batch.submit_many(prompts(5))
            outcomes = await batch.gather()
        assert not any(o.ok for o in outcomes)
        assert all(getattr(o.error, "run", None) is not None for o in outcomes)
        assert all(o.error.run.failure_code for o in outcomes)  # type: ignore[union-attr]
        assert routes(emu)["get_run"] == 5
    finally:
        await emu.aclose()


async def test_a_receiver_closed_mid_batch_leaves_the_rest_to_the_fallback(
    emulator: Emulator,
) -> None:
    events = Events()
    async with callback_client(emulator.url) as client:
        rx = CallbackReceiver([await new_secret(client)])
        async with rx, client.batch(max_concurrency=10, callbacks=rx, observer=events) as batch:
            batch.submit_many(prompts(40))
            await events.until("submitted", 15)
            await rx.aclose()
        outcomes = await batch.gather()
    assert all(o.ok for o in outcomes)
    assert batch.billed_usd == emulator.counters.billed_usd


async def test_generate_waits_by_callback_and_reads_the_run_once(emulator: Emulator) -> None:
    async with (
        callback_client(emulator.url) as client,
        CallbackReceiver([await new_secret(client)]) as rx,
    ):
        client.callbacks = rx
        result = await client.generate("a lighthouse")
        assert rx.counters.accepted == 1
    assert result.run.cost is not None
    assert result.run.cost > 0
    assert result.run.callback_url == rx.url
    assert routes(emulator)["get_run"] == 1
    assert Decimal(result.run.cost) == emulator.counters.billed_usd


async def test_generate_by_callback_times_out_cleanly() -> None:
    emu = await start_emulator(median_duration=10_000.0, duration_sigma=0.01)
    try:
        async with (
            callback_client(emu.url) as client,
            CallbackReceiver([await new_secret(client)]) as rx,
        ):
            client.callbacks = rx
            with pytest.raises(RunTimeoutError) as caught:
                await client.generate("slow", timeout=0.05)
        assert caught.value.run is not None
    finally:
        await emu.aclose()


async def test_a_receiver_that_is_not_serving_is_refused_before_any_create(
    emulator: Emulator,
) -> None:
    rx = CallbackReceiver(["whsec_x"])
    async with callback_client(emulator.url, rx) as client:
        with pytest.raises(ConfigurationError, match="Start the CallbackReceiver"):
            client.batch()
        with pytest.raises(ConfigurationError, match="Start the CallbackReceiver"):
            await client.generate("never sent")
        await rx.aclose()
        with pytest.raises(ConfigurationError, match="closed"):
            client.batch()
    assert routes(emulator)["create"] == 0

"""CallbackReceiver over real loopback HTTP: verification, exactly-once delivery, limits."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from runflow_async import (
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    TERMINAL_STATUSES,
    CallbackPayload,
    CallbackReceiver,
    ClientClosedError,
    ConfigurationError,
    ReceiverCounters,
    RunStatus,
    sign,
)

SECRET = "whsec_receiver_test_secret"
NEW_SECRET = "whsec_receiver_rotated_secret"
RUN_ID = "0192f0e4-7c1a-7b7e-9a52-3f1f5e0c2d11"


def payload(run_id: object = RUN_ID, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "event": "run.completed",
        "run_id": run_id,
        "status": "succeeded",
        "output": {"outputs": [{"url": "https://files.example/a.png", "type": "image"}]},
        "duration_ms": 1234,
        "created_at": "2026-04-01T10:00:00.000000+00:00",
        "completed_at": "2026-04-01T10:00:01.234000+00:00",
        "metadata": {"job": 7},
    }
    body.update(fields)
    return json.dumps(body).encode()


class Sender:
    """POSTs raw bytes to a receiver URL with chosen headers."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def post(
        self,
        body: Any,
        *,
        secret: str | None = SECRET,
        signature: str | None = None,
    ) -> tuple[int, str]:
        sent = {"Content-Type": "application/json", REQUEST_ID_HEADER: "req-1"}
        if signature is None and secret is not None:
            signature = sign(body, secret)
        if signature is not None:
            sent[SIGNATURE_HEADER] = signature
        async with self.session.post(self.url, data=body, headers=sent) as response:
            return response.status, await response.text()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with CallbackReceiver([SECRET]) as rx:
        yield rx


@pytest.fixture
def sender(session: aiohttp.ClientSession, receiver: CallbackReceiver) -> Sender:
    return Sender(session, receiver.url)


def counts(receiver: CallbackReceiver, **expected: int) -> None:
    assert receiver.counters == ReceiverCounters(**expected)


async def test_a_signed_delivery_resolves_the_watch(
    receiver: CallbackReceiver, sender: Sender
) -> None:
    assert receiver.url.startswith("http://127.0.0.1:")
    assert receiver.url.endswith("/runflow/callbacks")
    watch = receiver.watch(RUN_ID)
    assert not watch.done()
    counts(receiver, watching=1)
    assert await sender.post(payload()) == (200, "accepted")
    assert watch.done()
    result = await watch.wait()
    assert isinstance(result, CallbackPayload)
    assert result.run_id == RUN_ID == watch.run_id
    assert result.run_status is RunStatus.SUCCEEDED
    assert result.metadata == {"job": 7}
    assert result.created_at is not None
    assert result.created_at.utcoffset() is not None
    counts(receiver, received=1, accepted=1)


async def test_duplicates_and_retries_resolve_the_watch_once(
    receiver: CallbackReceiver, sender: Sender
) -> None:
    watch = receiver.watch(RUN_ID)
    first = payload()
    assert await sender.post(first) == (200, "accepted")
    assert await sender.post(first) == (200, "duplicate")
    # A redelivery is a new payload (fresh state, new signature) for the same run.
    assert await sender.post(payload(status="failed")) == (200, "duplicate")
    assert (await watch.wait()).status == "succeeded"
    counts(receiver, received=3, accepted=1, duplicates=2)


async def test_a_delivery_before_the_watch_resolves_it_at_once(
    receiver: CallbackReceiver, sender: Sender
) -> None:
    assert await sender.post(payload()) == (200, "buffered")
    counts(receiver, received=1, accepted=1, unknown_run=1, buffered=1)
    watch = receiver.watch(RUN_ID)
    assert watch.done()
    assert (await watch.wait()).run_id == RUN_ID
    counts(receiver, received=1, accepted=1, unknown_run=1)
    assert await sender.post(payload()) == (200, "duplicate")
    # Watching again later still answers, with the same first delivery.
    assert await receiver.watch(RUN_ID).wait() == await watch.wait()


async def test_a_buffered_retry_is_a_duplicate(receiver: CallbackReceiver, sender: Sender) -> None:
    assert await sender.post(payload()) == (200, "buffered")
    assert await sender.post(payload()) == (200, "duplicate")
    counts(receiver, received=2, accepted=1, duplicates=1, unknown_run=1, buffered=1)


async def test_every_watcher_of_a_run_gets_the_payload(
    receiver: CallbackReceiver, sender: Sender
) -> None:
    watches = [receiver.watch(RUN_ID), receiver.watch(RUN_ID)]
    counts(receiver, watching=2)
    async with anyio.create_task_group() as tg:
        results: list[CallbackPayload] = []

        async def wait(index: int) -> None:
            results.append(await watches[index].wait())

        tg.start_soon(wait, 0)
        tg.start_soon(wait, 1)
        await anyio.sleep(0.001)
        assert await sender.post(payload()) == (200, "accepted")
    assert [r.run_id for r in results] == [RUN_ID, RUN_ID]
    counts(receiver, received=1, accepted=1)


async def test_cancel_frees_the_slot(receiver: CallbackReceiver, sender: Sender) -> None:
    watch = receiver.watch(RUN_ID)
    other = receiver.watch(RUN_ID)
    watch.cancel()
    assert watch.done()
    counts(receiver, watching=1)
    with pytest.raises(asyncio.CancelledError):
        await watch.wait()
    other.cancel()
    counts(receiver)
    # Nobody watches any more, so the delivery waits for the next watch.
    assert await sender.post(payload()) == (200, "buffered")
    with pytest.raises(asyncio.CancelledError):
        await other.wait()
    again = receiver.watch(RUN_ID)
    assert (await again.wait()).run_id == RUN_ID
    again.cancel()  # a no-op once settled
    assert (await again.wait()).run_id == RUN_ID


async def test_cancelling_the_waiting_task_keeps_the_watch(
    receiver: CallbackReceiver, sender: Sender
) -> None:
    watch = receiver.watch(RUN_ID)
    with anyio.move_on_after(0.005):
        await watch.wait()
    assert not watch.done()
    assert await sender.post(payload()) == (200, "accepted")
    assert (await watch.wait()).run_id == RUN_ID


@pytest.mark.parametrize(
    ("status", "event", "expected"),
    [
        ("canceled", "run.cancelled", RunStatus.CANCELED),
        ("cancelled", "run.cancelled", RunStatus.CANCELLED),
        (None, "run.cancelled", RunStatus.CANCELED),
        ("failed", "run.failed", RunStatus.FAILED),
        ("partial_succeeded", "run.partial_succeeded", RunStatus.PARTIAL_SUCCEEDED),
    ],
)
async def test_both_cancel_spellings_arrive_as_terminal_statuses(
    receiver: CallbackReceiver,
    sender: Sender,
    status: str | None,
    event: str,
    expected: RunStatus,
) -> None:
    watch = receiver.watch(RUN_ID)
    assert await sender.post(payload(status=status, event=event, output=None)) == (200, "accepted")
    result = await watch.wait()
    assert result.run_status is expected
    assert result.run_status in TERMINAL_STATUSES


async def test_both_rotating_secrets_are_accepted(session: aiohttp.ClientSession) -> None:
    async with CallbackReceiver([SECRET, NEW_SECRET]) as rx:
        sender = Sender(session, rx.url)
        old, new = rx.watch("run-old"), rx.watch("run-new")
        assert await sender.post(payload("run-old"), secret=SECRET) == (200, "accepted")
        assert await sender.post(payload("run-new"), secret=NEW_SECRET) == (200, "accepted")
        assert (await old.wait()).run_id == "run-old"
        assert (await new.wait()).run_id == "run-new"


def _forgeries() -> list[tuple[bytes, str | None, str]]:
    body = payload()
    good = sign(body, SECRET)
    return [
        (body, None, "missing"),
        (body, "not-hex", "malformed"),
        (body, f"sha256={good}", "malformed"),  # a prefix Runflow does not send
        (body, sign(body, "whsec_someone_else"), "mismatch"),
        (body, sign(body, SECRET.removeprefix("whsec_")), "mismatch"),  # key without prefix
        (payload(status="failed"), good, "mismatch"),  # body altered after signing
        (json.dumps(json.loads(body), indent=2).encode(), good, "mismatch"),  # re-serialised
    ]


@pytest.mark.parametrize(("body", "signature", "reason"), _forgeries())
async def test_forged_deliveries_get_401_and_change_nothing(
    receiver: CallbackReceiver, sender: Sender, body: bytes, signature: str | None, reason: str
) -> None:
    watch = receiver.watch(RUN_ID)
    reply = await sender.post(body, secret=None, signature=signature)
    assert reply == (401, f"invalid signature ({reason})")
    assert not watch.done()
    counts(receiver, received=1, rejected_signature=1, watching=1)
    # The genuine delivery still goes through afterwards.
    assert await sender.post(payload()) == (200, "accepted")
    assert (await watch.wait()).status == "succeeded"


async def test_a_forged_delivery_before_the_watch_is_not_buffered(
    receiver: CallbackReceiver, sender: Sender
) -> None:
    assert (await sender.post(payload(), secret="whsec_forger"))[0] == 401
    assert not receiver.watch(RUN_ID).done()
    counts(receiver, received=1, rejected_signature=1, watching=1)


async def test_rejections_are_logged_without_secrets(
    receiver: CallbackReceiver, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_async")
    body = payload()
    await sender.post(body, signature="0" * 64)
    await sender.post(body, secret=None)
    await sender.post(b"not json")
    assert "req-1" in caplog.text
    assert "mismatch" in caplog.text
    assert "missing" in caplog.text
    for hidden in (SECRET, sign(body, SECRET)):
        assert hidden not in caplog.text


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'"a string"',
        b"\xff\xfe{}",
        b"[" * 5000 + b"]" * 5000,
        payload(run_id=123),
        payload(duration_ms="slow"),
        payload(created_at="yesterday"),
    ],
)
async def test_signed_but_malformed_bodies_get_400(
    receiver: CallbackReceiver, sender: Sender, body: bytes
) -> None:
    watch = receiver.watch(RUN_ID)
    assert await sender.post(body) == (400, "invalid payload")
    assert not watch.done()
    counts(receiver, received=1, rejected_invalid=1, watching=1)


async def test_a_batch_callback_is_accepted_and_ignored(
    receiver: CallbackReceiver, sender: Sender
) -> None:
    body = payload(run_id=None, batch_id="b-1", event="batch.succeeded")
    assert await sender.post(body) == (200, "ignored")
    assert await sender.post(body) == (200, "ignored")
    counts(receiver, received=2, accepted=2)


async def test_other_methods_are_refused(
    receiver: CallbackReceiver, sender: Sender, session: aiohttp.ClientSession
) -> None:
    async with session.get(receiver.url) as response:
        assert response.status == 405
    watch = receiver.watch(RUN_ID)
    assert await sender.post(payload()) == (200, "accepted")
    assert watch.done()


async def until(condition: Callable[[], bool]) -> None:
    """Let the server catch up with what a raw socket did (a few ms at most)."""
    for _ in range(200):
        if condition():
            return
        await anyio.sleep(0.001)
    raise AssertionError("the server did not catch up")


async def test_a_body_cut_short_changes_nothing(receiver: CallbackReceiver, sender: Sender) -> None:
    host, port = receiver.url.split("//")[1].split("/")[0].split(":")
    body = payload()
    watch = receiver.watch(RUN_ID)
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(
            b"POST /runflow/callbacks HTTP/1.1\r\nHost: x\r\n"
            + f"{SIGNATURE_HEADER}: {sign(body, SECRET)}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:20]
        )
        await until(lambda: receiver.counters.received == 1)
    await until(lambda: receiver.counters.rejected_invalid == 1)
    counts(receiver, received=1, rejected_invalid=1, watching=1)
    assert not watch.done()
    assert await sender.post(body) == (200, "accepted")


async def test_oversized_bodies_get_413_unread_and_the_server_keeps_serving(
    session: aiohttp.ClientSession,
) -> None:
    limit = 1024
    body = payload(pad="x" * 2000)
    async with CallbackReceiver([SECRET], max_body_bytes=limit) as rx:
        sender = Sender(session, rx.url)
        assert await sender.post(body) == (413, "body too large")

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 300):
                yield body[start : start + 300]

        # Chunked: no Content-Length, so the bounded read has to stop it.
        assert await sender.post(chunks(), signature=sign(body, SECRET)) == (413, "body too large")
        counts(rx, received=2, rejected_oversized=2)
        exact = payload(pad="")
        exact = payload(pad="x" * (limit - len(exact)))
        assert len(exact) == limit
        watch = rx.watch(RUN_ID)
        assert await sender.post(exact) == (200, "accepted")
        assert watch.done()

        async def small_chunks() -> AsyncIterator[bytes]:
            yield exact[:10]
            yield exact[10:]

        assert await sender.post(small_chunks(), signature=sign(exact, SECRET)) == (
            200,
            "duplicate",
        )
        counts(rx, received=4, rejected_oversized=2, accepted=1, duplicates=1)


async def test_add_routes_mounts_into_a_user_app(session: aiohttp.ClientSession) -> None:
    receiver = CallbackReceiver(SECRET, path="/hooks/runflow", public_url="https://x.test/h")
    assert receiver.url == "https://x.test/h"

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    receiver.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        sender = Sender(session, f"{base}/hooks/runflow")
        watch = receiver.watch(RUN_ID)
        pending = receiver.watch("never-delivered")
        assert await sender.post(payload()) == (200, "accepted")
        assert (await watch.wait()).run_id == RUN_ID
        async with session.get(f"{base}/health") as response:
            assert await response.text() == "ok"
        await receiver.aclose()
        await receiver.aclose()
        with pytest.raises(ClientClosedError, match="never-delivered"):
            await pending.wait()
        with pytest.raises(ClientClosedError):
            receiver.watch(RUN_ID)
        # Once closed, nobody can collect a delivery: ask Runflow to retry later.
        assert await sender.post(payload("late")) == (503, "receiver closed")
        assert receiver.counters.received == 2
    finally:
        await runner.cleanup()


async def test_the_url_is_unknown_until_started() -> None:
    receiver = CallbackReceiver([SECRET])
    with pytest.raises(RuntimeError, match="started"):
        _ = receiver.url
    async with receiver:
        assert receiver.url.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError, match="already"):
            await receiver.__aenter__()
    with pytest.raises(ClientClosedError):
        await receiver.__aenter__()


async def test_a_busy_port_raises_and_leaves_nothing_open() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        receiver = CallbackReceiver([SECRET], port=port)
        with pytest.raises(OSError, match="in use"):
            await receiver.__aenter__()
        await receiver.aclose()


async def test_the_buffer_forgets_the_oldest_runs(session: aiohttp.ClientSession) -> None:
    async with CallbackReceiver([SECRET], buffer_size=2) as rx:
        sender = Sender(session, rx.url)
        for run_id in ("a", "b", "c"):
            assert await sender.post(payload(run_id)) == (200, "buffered")
        counts(rx, received=3, accepted=3, unknown_run=3, buffered=2)
        assert not rx.watch("a").done()
        assert rx.watch("b").done()
        assert rx.watch("c").done()
        # "a" was dropped unseen, so its retry is a first delivery.
        assert await sender.post(payload("a")) == (200, "accepted")
        # Handed-out deliveries are remembered up to buffer_size too: "b" is forgotten.
        assert await sender.post(payload("b")) == (200, "buffered")
        assert await sender.post(payload("c")) == (200, "duplicate")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secrets": []},
        {"secrets": [""]},
        {"secrets": ""},
        {"secrets": [SECRET], "path": "runflow"},
        {"secrets": [SECRET], "max_body_bytes": 0},
        {"secrets": [SECRET], "buffer_size": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        CallbackReceiver(**kwargs)

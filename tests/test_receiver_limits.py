"""CallbackReceiver limits over real loopback: a body-read deadline, and a dedupe store on disk.

A sender that opens a connection and then stalls or trickles its body is cut
off at ``body_timeout`` with a 408 (raw sockets play the sender, so nothing
hurries the body along); with ``dedupe_path`` a retry of a delivery taken
before a restart is still a duplicate after it.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.abc import SocketStream

from runflow_async import SIGNATURE_HEADER, CallbackReceiver, ConfigurationError, sign
from runflow_async._callbacks.store import DeliveryStore
from tests.test_receiver import RUN_ID, SECRET, Sender, counts, payload

DEADLINE = 0.05  # seconds: the test waits for it, so it is short


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _head(body: bytes, *, chunked: bool = False) -> bytes:
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    return (
        b"POST /runflow/callbacks HTTP/1.1\r\nHost: x\r\n"
        + f"{SIGNATURE_HEADER}: {sign(body, SECRET)}\r\n{length}\r\n\r\n".encode()
    )


async def _connect(rx: CallbackReceiver) -> SocketStream:
    host, port = rx.url.split("//")[1].split("/")[0].split(":")
    return await anyio.connect_tcp(host, int(port))


async def _answer(stream: SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    with anyio.fail_after(10):  # the old receiver never answers: fail, not hang
        while True:
            try:
                received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return received


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_sender_that_stalls_mid_body_gets_408_and_the_connection_closed(
    session: aiohttp.ClientSession, chunked: bool
) -> None:
    body = payload()
    async with CallbackReceiver([SECRET], body_timeout=DEADLINE) as rx:
        watch = rx.watch(RUN_ID)
        start = b"%x\r\n" % len(body) + body[:20] if chunked else body[:20]
        async with await _connect(rx) as stream:
            await stream.send(_head(body, chunked=chunked) + start)  # then nothing more
            answer = await _answer(stream)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert answer.endswith(b"body too slow")
        counts(rx, received=1, rejected_timeout=1, watching=1)
        assert not watch.done()
        # The receiver keeps serving, and the run's real delivery still counts.
        assert await Sender(session, rx.url).post(body) == (200, "accepted")
        assert watch.done()


async def test_a_trickling_body_is_cut_off_at_the_deadline_not_per_chunk() -> None:
    body = payload(pad="x" * 4000)
    async with CallbackReceiver([SECRET], body_timeout=DEADLINE) as rx:
        async with await _connect(rx) as stream:
            await stream.send(_head(body))
            answer = b""
            with anyio.fail_after(30):
                # A byte every 2 ms: every read is quick, but the body takes ~10 s.
                for byte in body:
                    try:
                        await stream.send(bytes([byte]))
                        with anyio.move_on_after(0.002):
                            answer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break  # closed on us
                    if answer:
                        break
                answer += await _answer(stream)
        counts(rx, received=1, rejected_timeout=1)
    # Cut off with the 408, or (a byte arriving as it closes turns the close into
    # a reset) without it; never the 200 a full read of the body would give.
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b""


async def test_a_delivery_seen_before_a_restart_is_a_duplicate_after_it(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    store = tmp_path / "deliveries.sqlite3"
    first = payload()
    async with CallbackReceiver([SECRET], dedupe_path=store) as rx:
        watch = rx.watch(RUN_ID)
        assert await Sender(session, rx.url).post(first) == (200, "accepted")
        assert (await watch.wait()).run_id == RUN_ID
    # A new process on the same file: Runflow retries the delivery it answered.
    async with CallbackReceiver([SECRET], dedupe_path=store) as rx:
        sender = Sender(session, rx.url)
        assert await sender.post(first) == (200, "duplicate")
        assert await sender.post(payload(status="failed")) == (200, "duplicate")  # a redelivery
        assert await sender.post(payload("another-run")) == (200, "buffered")
        counts(rx, received=3, duplicates=2, accepted=1, unknown_run=1, buffered=1)
        # A resumed batch watches the run again: settled at once, with the first payload.
        again = rx.watch(RUN_ID)
        assert again.done()
        assert (await again.wait()).status == "succeeded"
    # Without a store a restart forgets: the same retry is a first delivery.
    async with CallbackReceiver([SECRET]) as rx:
        assert await Sender(session, rx.url).post(first) == (200, "buffered")


async def test_the_store_remembers_what_memory_has_evicted(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with CallbackReceiver(
        [SECRET], buffer_size=1, dedupe_path=tmp_path / "seen.sqlite3"
    ) as rx:
        sender = Sender(session, rx.url)
        for run_id in ("a", "b"):
            rx.watch(run_id)
            assert await sender.post(payload(run_id)) == (200, "accepted")
        # "a" fell out of the in-memory history (size 1) but not out of the store.
        assert await sender.post(payload("a")) == (200, "duplicate")
        assert await sender.post(payload("b")) == (200, "duplicate")
        assert rx.watch("a").done()


async def test_a_store_mounted_with_add_routes_opens_at_once_and_closes_with_aclose(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mounted.sqlite3"
    rx = CallbackReceiver(SECRET, public_url="https://x.test/h", dedupe_path=path)
    assert not path.exists()
    rx.add_routes(aiohttp.web.Application())
    assert path.exists()
    await rx.aclose()
    await rx.aclose()
    rx.add_routes(aiohttp.web.Application())  # closed: the store stays closed


async def test_the_store_keeps_the_first_payload_and_the_newest_runs(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "s.sqlite3", retain=2)
    try:
        await store.add("a", b"first")
        await store.add("a", b"second")  # a retry never replaces what was delivered
        assert store.get("a") == b"first"
        await store.add("b", b"b")
        await store.add("c", b"c")
        assert [store.get(k) for k in "abc"] == [None, b"b", b"c"]
    finally:
        store.close()
        store.close()
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM deliveries").fetchone() == (2,)
    db.close()


@pytest.mark.parametrize("where", ["directory", "not-a-database", "missing-parent"])
async def test_an_unusable_store_is_refused_when_serving_starts(tmp_path: Path, where: str) -> None:
    path = {
        "directory": tmp_path,
        "not-a-database": tmp_path / "notes.txt",
        "missing-parent": tmp_path / "no" / "such" / "dir.sqlite3",
    }[where]
    if where == "not-a-database":
        path.write_text("these are not the deliveries you are looking for\n" * 100)
    rx = CallbackReceiver([SECRET], dedupe_path=path)
    with pytest.raises(ConfigurationError, match="delivery store"):
        await rx.__aenter__()
    await rx.aclose()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body_timeout": 0},
        {"body_timeout": -1.0},
        {"body_timeout": math.nan},
        {"body_timeout": math.inf},
    ],
)
def test_bad_deadlines_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="body_timeout"):
        CallbackReceiver([SECRET], **kwargs)


def test_a_store_must_retain_something(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="retain"):
        DeliveryStore(tmp_path / "s.sqlite3", retain=0)

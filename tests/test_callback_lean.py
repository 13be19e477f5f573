"""The lean callback path (issue 12): prepared HMAC keys, a body read without a
timer when it is all there, and no task per watched run until a fallback read
is due. Each keeps the safety rules the other receiver tests pin.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from runflow_async import (
    CallbackReceiver,
    NotFoundError,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
    WebhookVerificationError,
)
from runflow_async._callbacks.waiter import CallbackWaiter
from runflow_async._waiting.list_poller import DurationStats
from runflow_async._webhooks import SignatureVerifier, sign, verify_signature
from tests.conftest import API_KEY, TIME_SCALE
from tests.test_receiver import RUN_ID, SECRET, Sender, counts, payload
from tests.test_receiver_limits import _answer, _connect, _head

pytestmark = pytest.mark.anyio

OTHER = "whsec_lean_other_secret"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reason(verifier: SignatureVerifier, body: bytes, header: str | None) -> str:
    with pytest.raises(WebhookVerificationError) as info:
        verifier.verify(body, header)
    return info.value.reason


def test_one_verifier_checks_many_bodies_each_on_its_own() -> None:
    verifier = SignatureVerifier([SECRET, "", OTHER])
    bodies = [payload(job=i) for i in range(5)]
    for body in bodies:  # a prepared key carries nothing from one body to the next
        verifier.verify(body, sign(body, SECRET))
        verifier.verify(body, f"  {sign(body, OTHER).upper()} ")
        verify_signature(body, sign(body, OTHER), [SECRET, OTHER])
    assert reason(verifier, bodies[1], sign(bodies[0], SECRET)) == "mismatch"
    assert reason(verifier, bodies[0], sign(bodies[0], "whsec_unknown")) == "mismatch"
    assert reason(verifier, bodies[0], None) == "missing"
    assert reason(verifier, bodies[0], "abc") == "malformed"
    assert reason(SignatureVerifier(["", ""]), bodies[0], sign(bodies[0], SECRET)) == "no_secrets"
    # A single string is one secret, never one-letter secrets.
    SignatureVerifier(SECRET).verify(bodies[0], sign(bodies[0], SECRET))
    assert reason(SignatureVerifier(SECRET), bodies[0], sign(bodies[0], SECRET[0])) == "mismatch"


def test_a_verifier_never_shows_its_secrets() -> None:
    verifier = SignatureVerifier([SECRET, OTHER])
    assert repr(verifier) == "SignatureVerifier(<2 secret(s)>)"
    assert SECRET not in repr(verifier)
    assert OTHER not in repr(verifier)


def _closing(head: bytes) -> bytes:
    """``head`` asking the server to close after answering (so the whole answer is read)."""
    return head[:-2] + b"Connection: close\r\n\r\n"


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_sent_whole_or_after_its_head_is_read_and_bounded_alike(
    chunked: bool,
) -> None:
    body = payload()
    wire = _chunked(body) if chunked else body
    async with CallbackReceiver([SECRET], max_body_bytes=len(body)) as rx:
        watch = rx.watch(RUN_ID)
        async with await _connect(rx) as stream:  # the head, then the body later
            await stream.send(_closing(_head(body, chunked=chunked)))
            await anyio.sleep(0.01)
            await stream.send(wire)
            first = await _answer(stream)
        assert first.startswith(b"HTTP/1.1 200 ")
        assert first.endswith(b"accepted")
        assert watch.done()
        async with await _connect(rx) as stream:  # all in one write: a retry
            await stream.send(_closing(_head(body, chunked=chunked)) + wire)
            again = await _answer(stream)
        assert again.startswith(b"HTTP/1.1 200 ")
        assert again.endswith(b"duplicate")
        # One byte over the limit, sent whole and chunked (no Content-Length to
        # refuse it up front): still 413, and the connection closed.
        bigger = payload(pad="x")
        async with await _connect(rx) as stream:
            await stream.send(_head(bigger, chunked=True) + _chunked(bigger))
            refused = await _answer(stream)
        assert refused.startswith(b"HTTP/1.1 413 ")
        counts(rx, received=3, accepted=1, duplicates=1, rejected_oversized=1)


class _CountingAPI:
    """Answers ``GET /v1/runs/{id}`` from ``replies`` (the last repeats), and counts the reads."""

    def __init__(self) -> None:
        self.requests = 0
        self.asked = asyncio.Event()
        output = {"outputs": [{"url": "https://files.example/a.png"}]}
        self.replies: list[dict[str, Any] | int] = [
            {"id": RUN_ID, "status_code": "succeeded", "output": output}
        ]

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.asked.set()
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, int):
            return web.json_response({"code": "NOPE", "message": "scripted"}, status=reply)
        return web.json_response(reply)


@pytest.fixture
async def client_and_api(
    inline_server: Callable[[Handler], Awaitable[str]],
) -> AsyncIterator[tuple[RunflowClient, _CountingAPI]]:
    api = _CountingAPI()
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=2)  # the clock's scale
    async with RunflowClient(API_KEY, base_url=await inline_server(api), retry=retry) as client:
        yield client, api


async def test_a_watched_run_costs_no_task_until_its_first_fallback_read_is_due(
    client_and_api: tuple[RunflowClient, _CountingAPI],
) -> None:
    client, api = client_and_api
    policy = PollPolicy(time_scale=TIME_SCALE, callback_fallback_after=1e6)
    async with CallbackReceiver([SECRET]) as rx, aiohttp.ClientSession() as session:
        waiter = CallbackWaiter(client._transport, rx, DurationStats(), policy, shared=False)
        before = len(asyncio.all_tasks())
        waiting = [asyncio.ensure_future(waiter.wait(RUN_ID)) for _ in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert rx.counters.watching == 3
        # Only the three waits themselves: no callback/fallback pair per run.
        assert len(asyncio.all_tasks()) == before + 3
        assert await Sender(session, rx.url).post(payload()) == (200, "accepted")
        runs = await asyncio.gather(*waiting)
    assert {run.status_code for run in runs} == {"succeeded"}
    assert {run.id for run in runs} == {RUN_ID}
    assert api.requests == 3  # one read each after the callback (one run: no bulk costs)


def _racing_waiter(client: RunflowClient, rx: CallbackReceiver) -> CallbackWaiter:
    # The first fallback read at once, then every 5 emulated seconds (5 ms).
    policy = PollPolicy(
        time_scale=TIME_SCALE, callback_fallback_after=0.0, callback_fallback_interval=5.0
    )
    return CallbackWaiter(client._transport, rx, DurationStats(), policy, shared=False)


async def test_a_receiver_closing_once_reads_began_leaves_the_run_to_them(
    client_and_api: tuple[RunflowClient, _CountingAPI],
) -> None:
    client, api = client_and_api
    running: dict[str, Any] | int = {"id": RUN_ID, "status_code": "running"}
    api.replies = [running, running, running, *api.replies]
    rx = CallbackReceiver([SECRET])
    async with rx:
        waiter = _racing_waiter(client, rx)
        waiting = asyncio.ensure_future(waiter.wait(RUN_ID))
        await api.asked.wait()  # the fallback reads have begun
    run = await waiting  # the receiver closed: the reads go on to the end
    assert run.status_code == "succeeded"
    assert api.requests == 4


async def test_a_fallback_read_refused_for_good_is_raised_as_itself(
    client_and_api: tuple[RunflowClient, _CountingAPI],
) -> None:
    client, api = client_and_api
    api.replies = [404]
    async with CallbackReceiver([SECRET]) as rx:
        with pytest.raises(NotFoundError):
            await _racing_waiter(client, rx).wait(RUN_ID)
        assert rx.counters.watching == 0

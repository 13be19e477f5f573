"""A create and a poll do no avoidable work per request (issue 12); counted, never timed.

anyio looks the async backend up (sniffio, the running loop) on every
``anyio.current_time``, ``anyio.sleep`` and ``anyio.CancelScope(...)``. The
client runs on asyncio only (aiohttp does), so its clock reads the loop and
sleeps with asyncio directly and its shielded scope is built from the
backend's class: a successful create and every poll read look nothing up.
``json.dumps`` with ``separators`` builds an encoder per call; ``dump_json``
keeps one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import anyio
import pytest
from aiohttp import web
from anyio._core import _eventloop

from runflow_async import GenerateRequest, RunflowClient
from runflow_async._core.clock import Clock, shielded
from runflow_async._http.transport import dump_json
from tests.conftest import Handler, make_client

Start = Callable[[Handler], Awaitable[str]]


@contextmanager
def calls_of(function: Callable[..., Any]) -> Iterator[list[int]]:
    """Count the calls of ``function`` (whatever name it was imported under) while inside."""
    code = function.__code__
    calls = [0]

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code is code:
            calls[0] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(previous)


def _runs_server(reads_before_done: int) -> Handler:
    """Creates answer 201; each run reads ``running`` that many times, then succeeded."""
    reads: dict[str, int] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            body = await request.json()
            ref = body["client_ref"]
            run = {"id": f"run-{ref}", "status_code": "queued", "client_ref": ref}
            return web.json_response(run, status=201)
        run_id = request.path.rsplit("/", 1)[-1]
        reads[run_id] = reads.get(run_id, 0) + 1
        if reads[run_id] <= reads_before_done and not run_id.startswith("quick"):
            return web.json_response({"id": run_id, "status_code": "running"})
        output = {"images": [{"url": "https://cdn.example/x.png"}]}
        return web.json_response({"id": run_id, "status_code": "succeeded", "output": output})

    return handler


async def _warm(client: RunflowClient) -> None:
    """One create first: the client's session and its cached scope class are built once."""
    await client.submit(GenerateRequest(prompt="warm"))


async def test_a_successful_create_looks_the_async_backend_up_never(inline_server: Start) -> None:
    url = await inline_server(_runs_server(reads_before_done=0))
    async with make_client(url) as client:
        await _warm(client)
        with calls_of(_eventloop.get_async_backend) as lookups:
            for i in range(3):
                run = await client.submit(GenerateRequest(prompt=f"p {i}"))
                assert run.status_code == "queued"
    assert lookups[0] == 0


async def test_poll_reads_look_the_async_backend_up_once_per_wait_not_per_read(
    inline_server: Start,
) -> None:
    url = await inline_server(_runs_server(reads_before_done=6))
    async with make_client(url) as client:
        await _warm(client)
        with calls_of(_eventloop.get_async_backend) as one_read:
            assert (await client.wait("quick", timeout=30)).succeeded
        with calls_of(_eventloop.get_async_backend) as seven_reads:
            assert (await client.wait("slow", timeout=30)).succeeded
    # Each read comes after a Clock.sleep; only the wait's own deadline looks up.
    assert seven_reads[0] == one_read[0] <= 2


async def test_the_clock_reads_the_loop_and_its_sleep_is_still_a_checkpoint() -> None:
    clock = Clock(0.5)
    assert abs(clock.now() - anyio.current_time() / 0.5) < 1.0
    assert Clock(0).now() == pytest.approx(anyio.current_time(), abs=1.0)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await clock.sleep(0)  # a checkpoint: the cancellation is delivered here
        pytest.fail("Clock.sleep(0) let a cancelled scope run on")  # pragma: no cover
    assert scope.cancelled_caught
    with anyio.move_on_after(0.01) as timed:
        await clock.sleep(3600)
    assert timed.cancelled_caught


async def test_a_shielded_scope_lets_its_body_finish_under_cancellation() -> None:
    clock = Clock(0.001)
    finished = False
    with anyio.CancelScope() as outer:
        outer.cancel()
        with shielded() as inner:
            assert inner.shield
            await clock.sleep(1)  # a real wait, not cancelled by the outer scope
            finished = True
        await clock.sleep(0)
    assert finished
    assert outer.cancelled_caught


def test_dump_json_builds_no_encoder_per_body() -> None:
    values: list[Any] = [{"input": {"prompt": "é\u2028", "n": [1, 2.5, None, True]}}, "x", []]
    with calls_of(json.JSONEncoder.__init__) as built:
        bodies = [dump_json(value) for value in values]
    assert built[0] == 0
    assert bodies == [json.dumps(v, separators=(",", ":")).encode() for v in values]

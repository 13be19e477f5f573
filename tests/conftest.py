"""Shared fixtures: the in-process emulator on 127.0.0.1 port 0 and a client bound to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from runflow_async import PollPolicy, RetryPolicy, RunflowClient, Timeouts
from runflow_async._http.retry import RetryHook
from runflow_async.emulator import Emulator

API_KEY = "rf_test_key_0123456789"
# Emulated seconds last a millisecond; client waits are scaled to match.
TIME_SCALE = 0.001


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, seed=7) as emu:
        yield emu


def make_client(
    base_url: str,
    *,
    retry: RetryPolicy | None = None,
    timeouts: Timeouts | None = None,
    on_retry: RetryHook | None = None,
    api_key: str = API_KEY,
) -> RunflowClient:
    """A client whose retry and poll waits run at the emulator's time scale."""
    return RunflowClient(
        api_key,
        base_url=base_url,
        retry=retry or RetryPolicy(time_scale=TIME_SCALE),
        poll=PollPolicy(time_scale=TIME_SCALE),
        timeouts=timeouts,
        on_retry=on_retry,
    )


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[RunflowClient]:
    async with make_client(emulator.url) as c:
        yield c


def client_tasks() -> int:
    """Tasks alive now, leaving out the in-process emulator's own (its request handlers)."""
    return sum(
        "RequestHandler" not in t.get_coro().__qualname__  # type: ignore[union-attr]
        and not t.get_name().startswith("runflow-emulator")
        for t in asyncio.all_tasks()
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def inline_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a tiny aiohttp app with one catch-all handler; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        async def route(request: web.Request) -> web.StreamResponse:
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", route)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()

"""The API key is reachable from no exception: not its chain, not a frame local of our code.

Loggers such as loguru or Sentry and ``pytest -l`` record the locals of every
frame of a traceback, and ``repr`` every exception in its ``__cause__`` and
``__context__`` chain. Each odd server below makes the client raise; the whole
traceback, formatted with every frame's locals, must not contain the key.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from runflow_async import APIError, GenerateRequest, RetryPolicy, RunflowClient, RunflowError

KEY = "rf_live_EXC0a1b2c3d4e5f60718293a"


def chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        if isinstance(item, BaseExceptionGroup):
            todo += item.exceptions
        todo += [item.__cause__, item.__context__]
    return seen


def assert_no_key(exc: BaseException) -> None:
    for item in chain(exc):
        assert KEY not in repr(item), type(item)
        assert KEY not in str(item), type(item)
        formatted = "".join(
            traceback.TracebackException.from_exception(item, capture_locals=True).format()
        )
        assert KEY not in formatted, type(item)


def client(url: str) -> RunflowClient:
    return RunflowClient(KEY, base_url=url, retry=RetryPolicy(max_attempts=2, time_scale=0.001))


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[bytes], Awaitable[str]]]:
    """A TCP server that answers every request with the given raw bytes, then closes."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",  # a malformed status line
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",  # a malformed header
        b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"id":',  # cut off
        b"garbage\r\n\r\n",
    ],
    ids=["status line", "header", "cut off", "garbage"],
)
async def test_protocol_errors_carry_no_key(
    raw_server: Callable[[bytes], Awaitable[str]], answer: bytes
) -> None:
    url = await raw_server(answer)
    async with client(url) as c:
        for call in (c.get_run("run-1"), c.submit(GenerateRequest(prompt="p"))):
            with pytest.raises(RunflowError) as info:
                await call
            assert_no_key(info.value)


async def test_status_errors_and_refused_connections_carry_no_key(
    inline_server: Callable[..., Awaitable[str]],
) -> None:
    async def html_502(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")

    url = await inline_server(html_502)
    async with client(url) as c:
        with pytest.raises(APIError) as info:
            await c.get_run("run-1")
        assert_no_key(info.value)
    async with client("http://127.0.0.1:9") as c:  # nothing listens on the discard port
        with pytest.raises(APIError) as info:
            await c.get_run("run-1")
        assert_no_key(info.value)

"""Callback test helpers: a tiny aiohttp receiver that records POSTs and answers as told."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from aiohttp import web
from multidict import CIMultiDictProxy

from tests.emulator.emulator_support import AUTH, Harness

QUICK: dict[str, Any] = {"time_scale": 0.001, "median_duration": 1.0, "duration_sigma": 0.0}
"""Runs last 1 emulated second = 1 ms; retry waits of 1 s and 2 s are 1 ms and 2 ms."""

STALL = -1
"""An answer that never comes (until the receiver closes): the emulator times out."""


@dataclass(frozen=True)
class Received:
    """One POST the receiver got."""

    path: str
    body: bytes
    headers: CIMultiDictProxy[str]

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def signed_with(self, secret: str) -> bool:
        """Verify ``Runflow-Signature`` independently: hex HMAC-SHA256 of the raw body."""
        expected = hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("Runflow-Signature", ""))


class Receiver:
    """Answers each POST with the next of ``answers`` (then ``default``)."""

    def __init__(self, answers: list[int] | None = None, default: int = 200) -> None:
        self.answers = list(answers or [])
        self.default = default
        self.received: list[Received] = []
        self.url = ""
        self._arrived = asyncio.Event()
        self._closing = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, await request.read(), request.headers))
        self._arrived.set()
        status = self.answers.pop(0) if self.answers else self.default
        if status == STALL:
            await self._closing.wait()
            status = 503
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until ``count`` POSTs have arrived; return them all."""
        with anyio.fail_after(timeout):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.received

    async def quiet(self, seconds: float = 0.02) -> None:
        """Let a few real milliseconds pass (to show that nothing more arrives)."""
        await asyncio.sleep(seconds)


@asynccontextmanager
async def receiving(
    answers: list[int] | None = None, default: int = 200
) -> AsyncIterator[Receiver]:
    """Run a receiver on 127.0.0.1; its ``url`` is ``http://127.0.0.1:PORT/hook``."""
    receiver = Receiver(answers, default)
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield receiver
    finally:
        receiver._closing.set()
        await runner.cleanup()


def closed_port_url() -> str:
    """Return a loopback URL nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


async def history(h: Harness, run_id: str, count: int = 1) -> list[dict[str, Any]]:
    """Poll the delivery history until ``count`` deliveries exist and none is pending."""
    with anyio.fail_after(5):
        while True:
            async with h.http.get(f"/v1/runs/{run_id}/callback", headers=AUTH) as resp:
                assert resp.status == 200
                deliveries: list[dict[str, Any]] = await resp.json()
            if len(deliveries) >= count and all(d["status_code"] != "pending" for d in deliveries):
                return deliveries
            await asyncio.sleep(0.001)

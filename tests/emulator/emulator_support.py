"""Helpers shared by the emulator tests: a running emulator plus a plain aiohttp session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from runflow_async.emulator import Emulator

KEY = "rf_test_emulator"
AUTH = {"Authorization": f"Bearer {KEY}"}
GENERATE = "black-forest-labs/flux-2-klein-9b"
EDIT = "black-forest-labs/flux-2-klein-9b/edit"
TERMINAL = frozenset({"succeeded", "failed"})
FAST: Mapping[str, Any] = {"time_scale": 0.0001, "median_duration": 1.0, "duration_sigma": 0.0}
"""Every run lasts 1 emulated second = 0.1 ms of real time."""
FROZEN: Mapping[str, Any] = {"time_scale": 1.0, "median_duration": 1000.0, "duration_sigma": 0.0}
"""Runs last 1000 s of real time: nothing moves unless the test calls ``advance``."""


@dataclass
class Harness:
    """An emulator and a session bound to its URL."""

    emu: Emulator
    http: aiohttp.ClientSession

    async def create(
        self,
        prompt: str = "a red fox",
        *,
        model: str = GENERATE,
        headers: Mapping[str, str] | None = None,
        expect: int = 201,
        **fields: Any,
    ) -> dict[str, Any]:
        """Create a run with ``input = {prompt, **fields}`` and return the body."""
        body: dict[str, Any] = {"input": {"prompt": prompt, **fields.pop("input", {})}, **fields}
        return await self.post(f"/v1/models/{model}/runs", body, headers=headers, expect=expect)

    async def post(
        self,
        path: str,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        expect: int = 201,
    ) -> dict[str, Any]:
        """POST ``body`` as JSON and return the decoded answer, checking the status."""
        async with self.http.post(path, json=body, headers={**AUTH, **(headers or {})}) as resp:
            data: dict[str, Any] = await resp.json()
            assert resp.status == expect, data
            return data

    async def get(
        self, path: str, *, params: Mapping[str, str] | None = None, expect: int = 200
    ) -> dict[str, Any]:
        """GET ``path`` with auth and return the decoded answer, checking the status."""
        async with self.http.get(path, params=params, headers=AUTH) as resp:
            data: dict[str, Any] = await resp.json()
            assert resp.status == expect, data
            return data

    async def finish(self, run_id: str) -> dict[str, Any]:
        """Poll a run (1 ms apart) until it is terminal."""
        for _ in range(1000):
            run = await self.get(f"/v1/runs/{run_id}")
            if run["status_code"] in TERMINAL:
                return run
            await asyncio.sleep(0.001)
        raise AssertionError(f"run {run_id} never finished")


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Harness]:
    """Start an emulator with ``overrides`` (fast runs by default) and a session."""
    settings = {**FAST, **overrides}
    async with Emulator(**settings) as emu, aiohttp.ClientSession(emu.url) as http:
        yield Harness(emu, http)

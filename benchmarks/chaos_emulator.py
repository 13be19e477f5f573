"""The emulator side of the chaos benchmarks: the fault mix, the process, the ground truth.

Shared by ``chaos_soak.py`` (the library) and ``chaos_resume.py`` (the CLI under
``kill -9``). The emulator runs as ``runflow-async emulator`` in its own process;
what it created and billed is read back through its own run listing, paged and
retried through the very faults it injects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from runflow_async import GenerateRequest, PricingPolicy

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "chaos-key"


@dataclass(frozen=True)
class ChaosMix:
    """The fault mix of issue 6, as ``runflow-async emulator`` flags."""

    rate_429: float = 0.05
    rate_429_without_retry_after: float = 0.5
    rate_5xx_on_status_reads: float = 0.05
    rate_5xx_html: float = 0.5
    rate_lost_create: float = 0.02
    rate_drop: float = 0.01
    failure_rate: float = 0.02
    rate_late_commit: float = 0.0  # issue 11: creates stored 3 s late, answer dropped

    def flags(self) -> list[str]:
        """The emulator flags: one seeded draw per request, 5xx on status reads only."""
        return [
            "--rate-429", str(self.rate_429),
            "--rate-429-without-retry-after", str(self.rate_429_without_retry_after),
            "--rate-5xx", str(self.rate_5xx_on_status_reads),
            "--rate-5xx-html", str(self.rate_5xx_html),
            "--fault-only", "5xx=get_run,list_runs",
            "--rate-lost-create", str(self.rate_lost_create),
            "--rate-drop", str(self.rate_drop),
            "--rate-late-commit", str(self.rate_late_commit),
            "--failure-rate", str(self.failure_rate),
            "--fault-routes", "create,get_run,list_runs",
        ]  # fmt: skip


def total_price(requests: Iterable[GenerateRequest]) -> Decimal:
    """What the emulator bills if every request succeeds (its price is the estimate)."""
    policy = PricingPolicy()
    return sum((policy.generate_cost(r.size, r.images_per_run) for r in requests), Decimal(0))


@contextlib.asynccontextmanager
async def emulator_process(*flags: str) -> AsyncIterator[str]:
    """Run ``runflow-async emulator --port 0 FLAGS`` in its own process; yield its URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "runflow_async._cli.main", "emulator", "--port", "0", *flags]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        words = line.decode().split()  # "Runflow emulator on http://127.0.0.1:P (Ctrl-C ...)"
        if len(words) < 4:
            raise RuntimeError(f"the emulator did not start (exit status {await proc.wait()})")
        yield words[3]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def get_json(
    http: aiohttp.ClientSession, url: str, params: Mapping[str, str] | None = None
) -> Any:
    """GET JSON, trying again (up to 200 times) through injected faults."""
    for _ in range(200):
        try:
            async with http.get(url, params=params) as resp:
                if resp.status == 200:
                    return await resp.json()
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.002)
    raise RuntimeError(f"{url} kept failing")


async def post_json(url: str, body: Any) -> Any:
    """POST to the emulator's control plane (never faulted)."""
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def settled_counters(url: str, timeout: float = 60.0) -> dict[str, Any]:
    """The emulator's counters once no run is in flight (runs lost to a client still end)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            counters: dict[str, Any] = await get_json(http, url + "/_emulator/counters")
            if counters["in_flight"] == 0 or time.monotonic() > deadline:
                return counters
            await asyncio.sleep(0.01)


async def all_runs(url: str) -> list[dict[str, Any]]:
    """Every run the emulator holds, through its own listing (oldest first, 500 a page)."""
    params = {
        "limit": "500",
        "sort_by": "created_at:asc",
        "fields": "id,client_ref,status_code,cost,input",
    }
    runs: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            page = await get_json(http, url + "/v1/runs", params)
            runs.extend(page["items"])
            if not page["next_pq"]:
                return runs
            params["pq"] = page["next_pq"]


@dataclass
class Ledger:
    """What the emulator did, per item (by prompt) and per ``client_ref``."""

    created: Counter[str] = field(default_factory=Counter)
    billed: Counter[str] = field(default_factory=Counter)
    billed_by_ref: Counter[str] = field(default_factory=Counter)
    billed_run: dict[str, str] = field(default_factory=dict)
    billed_ref: dict[str, str] = field(default_factory=dict)
    cost: dict[str, Decimal] = field(default_factory=dict)
    billed_usd: Decimal = Decimal(0)
    runs: int = 0
    succeeded: int = 0
    failed: int = 0

    @classmethod
    def of(cls, runs: Sequence[Mapping[str, Any]]) -> Ledger:
        ledger = cls(runs=len(runs))
        for run in runs:
            prompt = run["input"]["prompt"]
            ledger.created[prompt] += 1
            if run["status_code"] == "succeeded":
                ledger.succeeded += 1
                ledger.billed[prompt] += 1
                ledger.billed_by_ref[run["client_ref"]] += 1
                ledger.billed_run[run["id"]] = prompt
                ledger.billed_ref[run["id"]] = run["client_ref"]
                ledger.cost[run["id"]] = Decimal(run["cost"])
                ledger.billed_usd += Decimal(run["cost"])
            elif run["status_code"] == "failed":
                ledger.failed += 1
        return ledger

    @property
    def duplicate_billed_runs(self) -> int:
        """Billed runs beyond the first, per item and per ``client_ref`` (the larger)."""
        by_item = sum(n - 1 for n in self.billed.values() if n > 1)
        by_ref = sum(n - 1 for n in self.billed_by_ref.values() if n > 1)
        return max(by_item, by_ref)

    @property
    def items_created_twice(self) -> int:
        """Items with more than one run, billed or not."""
        return sum(n > 1 for n in self.created.values())

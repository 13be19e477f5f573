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
    """Every fault the emulator knows, on together, as ``runflow-async emulator`` flags.

    Issue 6's mix (429s, 5xx on status reads, lost creates, drops, failed runs)
    plus issue 11's hostile server: a run list that lags 2 s behind creates;
    late commits (the run stored 3 s after the create, whose connection was
    dropped) with the ``Idempotency-Key`` ignored; creates answered with the
    previous create's run id; malformed status lines; status reads answered
    with an HTML 200, an over-cap body, a transient 404, or succeeded runs
    without outputs; downloads that are not images or 404; and a bill three
    times the estimate. ``hostile=False`` is issue 6's mix alone.
    """

    rate_429: float = 0.05
    rate_429_without_retry_after: float = 0.5
    rate_5xx_on_status_reads: float = 0.05
    rate_5xx_html: float = 0.5
    rate_lost_create: float = 0.02
    rate_drop: float = 0.01
    failure_rate: float = 0.02
    hostile: bool = True
    rate_late_commit: float = 0.01
    late_commit_seconds: float = 3.0
    idempotency_mode: str = "ignored"
    list_lag: float = 2.0
    rate_reused_run_id: float = 0.005
    rate_malformed: float = 0.005
    rate_html_ok: float = 0.01
    rate_null_output: float = 0.01
    rate_not_found: float = 0.01
    rate_oversized: float = 0.001
    rate_not_image: float = 0.01
    rate_download_404: float = 0.01
    cost_multiplier: str = "3"

    @property
    def billing(self) -> Decimal:
        """What the emulator bills per dollar of list price."""
        return Decimal(self.cost_multiplier) if self.hostile else Decimal(1)

    def flags(self) -> list[str]:
        """The emulator flags: one seeded draw per request, 5xx on status reads only."""
        flags = [
            "--rate-429", str(self.rate_429),
            "--rate-429-without-retry-after", str(self.rate_429_without_retry_after),
            "--rate-5xx", str(self.rate_5xx_on_status_reads),
            "--rate-5xx-html", str(self.rate_5xx_html),
            "--fault-only", "5xx=get_run,list_runs",
            "--rate-lost-create", str(self.rate_lost_create),
            "--rate-drop", str(self.rate_drop),
            "--failure-rate", str(self.failure_rate),
        ]  # fmt: skip
        if not self.hostile:
            return [*flags, "--fault-routes", "create,batch_create,get_run,list_runs"]
        return [
            *flags,
            "--rate-late-commit", str(self.rate_late_commit),
            "--late-commit-seconds", str(self.late_commit_seconds),
            "--idempotency-mode", self.idempotency_mode,
            "--list-lag", str(self.list_lag),
            "--rate-reused-run-id", str(self.rate_reused_run_id),
            "--rate-malformed", str(self.rate_malformed),
            "--rate-html-ok", str(self.rate_html_ok),
            "--rate-null-output", str(self.rate_null_output),
            "--rate-not-found", str(self.rate_not_found),
            "--rate-oversized", str(self.rate_oversized),
            "--rate-not-image", str(self.rate_not_image),
            "--rate-download-404", str(self.rate_download_404),
            "--cost-multiplier", self.cost_multiplier,
            "--fault-routes", "create,batch_create,get_run,list_runs,file",
        ]  # fmt: skip


def total_price(requests: Iterable[GenerateRequest]) -> Decimal:
    """What every request costs at the list price (the client's estimate)."""
    policy = PricingPolicy()
    return sum((policy.generate_cost(r.size, r.images_per_run) for r in requests), Decimal(0))


@contextlib.asynccontextmanager
async def emulator_process(*flags: str) -> AsyncIterator[str]:
    """Run ``runflow-async emulator --port 0 FLAGS`` in its own process; yield its URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "runflow_async", "emulator", "--port", "0", *flags]
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
    http: aiohttp.ClientSession,
    url: str,
    params: Mapping[str, str] | None = None,
    *,
    key: str | None = None,
) -> Any:
    """GET a JSON object (holding ``key``, if given), trying again through injected faults.

    Up to 500 tries: a 200 that is an HTML page, an over-sized pad or a body
    without ``key`` is a fault like a 5xx or a malformed answer.
    """
    for _ in range(500):
        try:
            async with http.get(url, params=params) as resp:
                if resp.status == 200:
                    data = await resp.json()
                    if isinstance(data, dict) and (key is None or key in data):
                        return data
        except (aiohttp.ClientError, ValueError):
            pass
        await asyncio.sleep(0.002)
    raise RuntimeError(f"{url} kept failing")


async def post_json(url: str, body: Any) -> Any:
    """POST to the emulator's control plane (never faulted)."""
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def settled_counters(url: str, timeout: float = 60.0, lag: float = 0.1) -> dict[str, Any]:
    """The emulator's counters once no run is in flight or waiting to be stored.

    Runs lost to a client still end; late commits are stored; then ``lag`` real
    seconds pass so that the list shows the newest runs too.
    """
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            counters: dict[str, Any] = await get_json(http, url + "/_emulator/counters")
            settled = counters["in_flight"] == 0 and not counters.get("commits_pending")
            if settled or time.monotonic() > deadline:
                await asyncio.sleep(lag)  # the newest runs' list lag (real seconds)
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
            page = await get_json(http, url + "/v1/runs", params, key="items")
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

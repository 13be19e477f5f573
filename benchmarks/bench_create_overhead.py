"""What the safe create costs: ``RunflowClient.submit`` vs a raw aiohttp POST.

The emulator runs in a separate process (so it does not share the client's
CPU). Both contenders create the same number of runs at the same concurrency
over loopback; the baseline is what a user writes by hand (aiohttp +
``asyncio.Semaphore`` + ``gather``, no validation, no idempotency, no retries).
Prints one JSON line per contender, plus one with the ratios. With
``--repeat N`` the pair is measured N times, interleaved (baseline, then the
SDK, N times over), and the lines give medians: the ratio line is the median
of the N per-pair ratios (a shared machine's load moves both of a pair alike).

    python benchmarks/bench_create_overhead.py --runs 2000 --concurrency 50 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from runflow_async import GenerateRequest, RunflowClient

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = "/v1/models/black-forest-labs/flux-2-klein-9b/runs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(2000):
            try:
                async with session.get(url + "/v1/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.005)
    raise RuntimeError("emulator did not start")


async def counters(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + "/_emulator/counters") as r:
        data: dict[str, Any] = await r.json()
        return data


async def measure(
    name: str, url: str, runs: int, work: Callable[[int], Awaitable[None]]
) -> dict[str, Any]:
    before = (await counters(url))["runs_created"]
    cpu, wall = time.process_time(), time.perf_counter()
    await work(runs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    created = (await counters(url))["runs_created"] - before
    assert created == runs, f"{name}: emulator created {created} runs, expected {runs}"
    return {
        "contender": name,
        "runs": runs,
        "wall_s": round(wall, 4),
        "creates_per_s": round(runs / wall, 1),
        "client_cpu_ms_per_create": round(cpu * 1000 / runs, 4),
    }


def medians(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One contender's figures over its repeats: the median of each."""
    line: dict[str, Any] = {"contender": name, "runs": rows[0]["runs"], "repeat": len(rows)}
    for key in ("wall_s", "creates_per_s", "client_cpu_ms_per_create"):
        line[key] = round(statistics.median(r[key] for r in rows), 4)
    return line


async def main(runs: int, concurrency: int, repeat: int = 1) -> list[dict[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A separate process on purpose; our own module and fixed arguments.
    proc = subprocess.Popen(  # noqa: ASYNC220, S603
        [sys.executable, "-m", "runflow_async", "emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    try:
        await wait_ready(url)

        async def baseline(n: int) -> None:
            sem = asyncio.Semaphore(concurrency)
            headers = {"Authorization": "Bearer bench-key"}
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency)
            ) as session:

                async def one(i: int) -> None:
                    async with sem:
                        body = {"input": {"prompt": f"prompt {i}", "image_size": "square"}}
                        async with session.post(url + MODEL_PATH, json=body, headers=headers) as r:
                            assert r.status == 201
                            await r.json()

                await asyncio.gather(*(one(i) for i in range(n)))

        async def sdk(n: int) -> None:
            sem = asyncio.Semaphore(concurrency)
            async with RunflowClient(
                "bench-key", base_url=url, max_connections=concurrency
            ) as client:

                async def one(i: int) -> None:
                    async with sem:
                        await client.submit(
                            GenerateRequest(prompt=f"prompt {i}", image_size="square")
                        )

                await asyncio.gather(*(one(i) for i in range(n)))

        await baseline(min(runs, 200))  # warm up both paths and the emulator
        await sdk(min(runs, 200))
        pairs = []
        for _ in range(repeat):
            pairs.append(
                (
                    await measure("baseline_raw_aiohttp", url, runs, baseline),
                    await measure("runflow_async_submit", url, runs, sdk),
                )
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    if repeat == 1:
        results = list(pairs[0])
    else:
        results = [
            medians("baseline_raw_aiohttp", [base for base, _ in pairs]),
            medians("runflow_async_submit", [ours for _, ours in pairs]),
        ]
    key = "client_cpu_ms_per_create"
    results.append(
        {
            "contender": "ratio_sdk_over_baseline",
            "repeat": repeat,
            "wall": round(statistics.median(o["wall_s"] / b["wall_s"] for b, o in pairs), 3),
            "client_cpu_per_create": round(statistics.median(o[key] / b[key] for b, o in pairs), 3),
            "client_cpu_per_create_each": [round(o[key] / b[key], 3) for b, o in pairs],
        }
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved pairs (medians)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    for line in asyncio.run(main(args.runs, args.concurrency, args.repeat)):
        print(json.dumps(line))

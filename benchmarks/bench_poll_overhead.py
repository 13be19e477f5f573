"""What one poll of a running run costs: the SDK's per-run read vs a raw aiohttp GET.

The per-run fallback (``wait_strategy="per_run"``, and ``client.wait``) reads
each run again and again until it ends; this measures one such read, *per
request*, not per run (the engine's per-run bookkeeping is what
``bench_batch.py``'s CPU/run shows). The emulator runs in a separate process
with runs that never end in the benchmark's time (``--median-duration``
huge), ``--runs`` runs are created once, then each is read ``--reads`` times,
``--concurrency`` runs at a time, by:

* ``baseline_raw_aiohttp``: ``session.get(url)``, ``await resp.json()``, a
  status check (what a user writes by hand);
* ``runflow_async_poll_read``: the read the per-run poll loop makes
  (:func:`runflow_async._http.runs.read_status`: the transport's retried GET
  with its timeouts, body-size limit and key handling, the dict status check;
  no model is built for a run that is not finished).

``--repeat N`` interleaves N pairs and prints medians; the ratio is the median
of the per-pair ratios (a shared machine's load moves both halves alike).

    python benchmarks/bench_poll_overhead.py --runs 200 --reads 20 --concurrency 50 --repeat 5
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
from runflow_async._http.runs import PollState

try:
    from runflow_async._http.runs import read_status
except ImportError:  # a tree from before it had this name (for a before/after figure)
    from runflow_async._http.runs import _read as read_status  # type: ignore[attr-defined,no-redef]

ROOT = Path(__file__).resolve().parent.parent
_NOT_DONE = frozenset({"queued", "running"})


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


Reader = Callable[[list[str], int], Awaitable[None]]


async def measure(name: str, ids: list[str], reads: int, work: Reader) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    await work(ids, reads)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = len(ids) * reads
    return {
        "contender": name,
        "requests": n,
        "wall_s": round(wall, 4),
        "requests_per_s": round(n / wall, 1),
        "client_cpu_ms_per_request": round(cpu * 1000 / n, 4),
    }


def medians(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One contender's figures over its repeats: the median of each."""
    line: dict[str, Any] = {"contender": name, "requests": rows[0]["requests"]}
    line["repeat"] = len(rows)
    for key in ("wall_s", "requests_per_s", "client_cpu_ms_per_request"):
        line[key] = round(statistics.median(r[key] for r in rows), 4)
    return line


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["emulator", "--port", str(port), "--median-duration", "1e9", "--duration-sigma", "0"]
    # A separate process on purpose; our own module and fixed arguments.
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "runflow_async", *args],
        stdout=subprocess.DEVNULL,
        env=env,
    )


async def main(runs: int, reads: int, concurrency: int, repeat: int = 1) -> list[dict[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_emulator(port)
    try:
        await wait_ready(url)
        async with RunflowClient("bench-key", base_url=url, max_connections=concurrency) as client:
            created = [
                await client.submit(GenerateRequest(prompt=f"p {i}", image_size="square"))
                for i in range(runs)
            ]
            ids = [run.id for run in created]
            transport = client._transport

            async def baseline(run_ids: list[str], k: int) -> None:
                sem = asyncio.Semaphore(concurrency)
                headers = {"Authorization": "Bearer bench-key"}
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=concurrency)
                ) as session:

                    async def one(run_id: str) -> None:
                        async with sem:
                            for _ in range(k):
                                async with session.get(
                                    f"{url}/v1/runs/{run_id}", headers=headers
                                ) as r:
                                    data = await r.json()
                                    assert r.status == 200
                                    assert data["status_code"] in _NOT_DONE

                    await asyncio.gather(*(one(i) for i in run_ids))

            async def sdk(run_ids: list[str], k: int) -> None:
                sem = asyncio.Semaphore(concurrency)

                async def one(run_id: str) -> None:
                    async with sem:
                        state = PollState()
                        path = f"/v1/runs/{run_id}"
                        for _ in range(k):
                            assert await read_status(transport, path, state) is None

                await asyncio.gather(*(one(i) for i in run_ids))

            await baseline(ids, 2)  # warm up both paths and the emulator
            await sdk(ids, 2)
            pairs = [
                (
                    await measure("baseline_raw_aiohttp", ids, reads, baseline),
                    await measure("runflow_async_poll_read", ids, reads, sdk),
                )
                for _ in range(repeat)
            ]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    results = (
        list(pairs[0])
        if repeat == 1
        else [
            medians("baseline_raw_aiohttp", [base for base, _ in pairs]),
            medians("runflow_async_poll_read", [ours for _, ours in pairs]),
        ]
    )
    key = "client_cpu_ms_per_request"
    results.append(
        {
            "contender": "ratio_sdk_over_baseline",
            "repeat": repeat,
            "client_cpu_per_request": round(
                statistics.median(o[key] / b[key] for b, o in pairs), 3
            ),
            "client_cpu_per_request_each": [round(o[key] / b[key], 3) for b, o in pairs],
        }
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--reads", type=int, default=20, help="reads of each run per round")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved pairs (medians)")
    args = parser.parse_args()
    if min(args.repeat, args.runs, args.reads, args.concurrency) < 1:
        parser.error("--runs, --reads, --concurrency and --repeat must be at least 1")
    for line in asyncio.run(main(args.runs, args.reads, args.concurrency, args.repeat)):
        print(json.dumps(line))

"""Batch waiting strategies against a hand-written baseline, on the emulator in another process.

Every contender runs the same number of runs at the same concurrency against one
emulator process (log-normal durations, median 2 s, sigma 0.5, no faults):

* ``baseline``: what a user writes without the SDK: aiohttp + ``asyncio.Semaphore``
  + ``gather``, each task creating its run and polling it every 1 s;
* ``sdk_auto``: ``client.batch`` with the default strategy (shared list poller);
* ``sdk_per_run``: ``client.batch`` with per-run polling that learns durations;
* ``sdk_batches``: ``client.batch`` with ``create_via="batches"`` (batch creates
  of up to 100 runs, status from the shared list poller), beside ``sdk_auto``'s
  one create per run (issue 13);
* ``sdk_callback``: ``client.batch(callbacks=receiver)``: the emulator POSTs each
  finished run to a local ``CallbackReceiver`` (signed with a secret created
  through the API), costs are looked up in bulk, slow polling is the safety net.

Each contender runs in its own process (clean CPU time and peak RSS). From the
emulator's own report we compute, per run, the delay between the server finishing
it and a response first telling a client so, and the *ideal* makespan: the same
durations, in the same order, scheduled at the same concurrency with zero client
delay. One JSON line per contender.

    python benchmarks/bench_batch.py --runs 2000 --concurrency 200
    python benchmarks/bench_batch.py --contenders baseline,sdk_callback   # callbacks
    python benchmarks/bench_batch.py --contenders sdk_auto,sdk_batches   # batch creates
    python benchmarks/bench_batch.py --map-items 1000000 --concurrency 100   # memory of map
    python benchmarks/bench_batch.py --contenders baseline,sdk_auto --list-filters none \
        --background-runs 0.5 --repeat 3   # the status chain, medians of 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import resource
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

from runflow_async import CallbackReceiver, GenerateRequest, RunflowClient

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = "/v1/models/black-forest-labs/flux-2-klein-9b/runs"
TERMINAL = {"succeeded", "partial_succeeded", "failed", "canceled", "cancelled", "errored"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()


async def wait_ready(url: str) -> None:
    for _ in range(2000):
        try:
            await get_json(url + "/v1/health")
            return
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.005)
    raise RuntimeError("emulator did not start")


SKIP_ROUTES = {"counters", "report", "health"}


async def request_count(url: str) -> int:
    """API requests the emulator has served (its own control routes left out)."""
    counters = await get_json(url + "/_emulator/counters")
    routes = counters["requests_by_route"]
    return sum(n for route, n in routes.items() if route not in SKIP_ROUTES)


def request_for(i: int) -> GenerateRequest:
    return GenerateRequest(prompt=f"benchmark prompt {i}", image_size="square")


# -- contenders (each runs in its own process) --------------------------------


async def baseline(url: str, runs: int, concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": "Bearer bench-key"}
    ok = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(i: int) -> None:
            nonlocal ok
            async with sem:
                body = {"input": request_for(i).input_payload()}
                async with session.post(url + MODEL_PATH, json=body) as resp:
                    run = await resp.json()
                while run["status_code"] not in TERMINAL:
                    await asyncio.sleep(1.0)
                    async with session.get(f"{url}/v1/runs/{run['id']}") as resp:
                        run = await resp.json()
                ok += run["status_code"] == "succeeded"

        await asyncio.gather(*(one(i) for i in range(runs)))
    return ok


async def sdk(
    url: str, runs: int, concurrency: int, strategy: str, create_via: str = "runs"
) -> int:
    async with (
        RunflowClient(
            "bench-key",
            base_url=url,
            max_connections=concurrency,
            wait_strategy=strategy,  # type: ignore[arg-type]
            create_via=create_via,  # type: ignore[arg-type]
        ) as client,
        client.batch(max_concurrency=concurrency) as batch,
    ):
        batch.submit_many(request_for(i) for i in range(runs))
    return sum(o.ok for o in await batch.gather())


async def sdk_callback(url: str, runs: int, concurrency: int) -> int:
    async with RunflowClient("bench-key", base_url=url, max_connections=concurrency) as client:
        secret = await client.create_callback_secret("bench")
        async with (
            CallbackReceiver([secret.plain_secret.get_secret_value()]) as rx,
            client.batch(max_concurrency=concurrency, callbacks=rx) as batch,
        ):
            batch.submit_many(request_for(i) for i in range(runs))
    return sum(o.ok for o in await batch.gather())


async def sdk_map(url: str, items: int, concurrency: int) -> int:
    ok = 0
    async with RunflowClient("bench-key", base_url=url, max_connections=concurrency) as client:
        source = (request_for(i) for i in range(items))  # lazy: never materialised
        async with client.map(source, max_concurrency=concurrency) as outcomes:
            async for outcome in outcomes:
                ok += outcome.ok
    return ok


WARMUP_RUNS = 20


def run_contender(args: argparse.Namespace) -> None:
    work: Callable[[str, int, int], Awaitable[int]]
    if args.contender == "baseline":
        work = baseline
    elif args.contender == "sdk_map":
        work = sdk_map
    elif args.contender == "sdk_callback":
        work = sdk_callback
    elif args.contender == "sdk_batches":

        async def work(url: str, runs: int, concurrency: int) -> int:
            return await sdk(url, runs, concurrency, "auto", create_via="batches")
    else:
        strategy = args.contender.removeprefix("sdk_")

        async def work(url: str, runs: int, concurrency: int) -> int:
            return await sdk(url, runs, concurrency, strategy)

    # Warm up (imports done lazily, schemas, TLS contexts) so both sides are
    # measured in steady state; the orchestrator skips these runs.
    asyncio.run(work(args.url, WARMUP_RUNS, WARMUP_RUNS))
    start_requests = asyncio.run(request_count(args.url))
    start_routes = asyncio.run(get_json(args.url + "/_emulator/counters"))["requests_by_route"]
    cpu, wall = time.process_time(), time.perf_counter()
    ok = asyncio.run(work(args.url, args.runs, args.concurrency))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "ok": ok,
                "client_cpu_s": time.process_time() - cpu,
                "wall_s": time.perf_counter() - wall,
                "peak_rss_mb": round(peak_kib / 1024, 1),
                "start_requests": start_requests,
                "start_routes": start_routes,
            }
        )
    )


# -- the orchestrator ---------------------------------------------------------


def ideal_makespan(durations: list[float], concurrency: int) -> float:
    """Greedy list scheduling of ``durations`` in order, zero client delay."""
    slots = [0.0] * concurrency
    end = 0.0
    for d in durations:
        start = heapq.heappop(slots)
        heapq.heappush(slots, start + d)
        end = max(end, start + d)
    return end


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


async def measure(url: str, name: str, runs: int, concurrency: int) -> dict[str, Any]:
    since = (await get_json(url + "/_emulator/report?since=0"))["total"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, __file__, "--contender", name, "--url", url]
    argv += ["--runs", str(runs), "--concurrency", str(concurrency)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, env=env)
    out, _ = await proc.communicate()
    client = json.loads(out.decode().strip().splitlines()[-1])
    # Rows are this client's runs only (another client's, with --background-runs,
    # are left out of the report), so the warm-up runs are skipped by position.
    report = await get_json(f"{url}/_emulator/report?since={since}")
    rows = report["runs"][WARMUP_RUNS:]
    requests = await request_count(url) - client["start_requests"]
    routes = (await get_json(url + "/_emulator/counters"))["requests_by_route"]
    creates = sum(
        routes.get(r, 0) - client["start_routes"].get(r, 0) for r in ("create", "batch_create")
    )
    delays = [r["noticed"] - r["end"] for r in rows if r["noticed"] is not None]
    first_create = min(r["created"] for r in rows)
    makespan = max(r["noticed"] for r in rows if r["noticed"] is not None) - first_create
    ideal = ideal_makespan([r["duration"] for r in rows], concurrency)
    median_duration = statistics.median(r["duration"] for r in rows)
    return {
        "contender": name,
        "runs": runs,
        "concurrency": concurrency,
        "succeeded": client["ok"],
        "makespan_s": round(makespan, 3),
        "ideal_makespan_s": round(ideal, 3),
        "makespan_over_ideal": round(makespan / ideal, 3),
        "requests_per_run": round(requests / runs, 3),
        "creates_per_run": round(creates / runs, 4),
        "status_requests_per_run": round((requests - creates) / runs, 4),
        "notice_delay_median_s": round(statistics.median(delays), 4),
        "notice_delay_p95_s": round(quantile(delays, 0.95), 4),
        "notice_delay_median_over_median_run": round(
            statistics.median(delays) / median_duration, 4
        ),
        "client_cpu_ms_per_run": round(client["client_cpu_s"] * 1000 / runs, 4),
        "client_cpu_ms_per_request": round(client["client_cpu_s"] * 1000 / max(1, requests), 4),
        "peak_rss_mb": client["peak_rss_mb"],
        "wall_s": round(client["wall_s"], 2),
    }


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each number over one contender's rounds (``repeats``: how many)."""
    first = rounds[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            median = statistics.median(r[key] for r in rounds)
            out[key] = int(median) if isinstance(value, int) else round(median, 4)
        else:
            out[key] = value
    out["repeats"] = len(rounds)
    return out


async def orchestrate(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "runflow_async", "emulator", "--port", str(port)]
    argv += ["--seed", "11", "--median-duration", str(args.median), "--duration-sigma", "0.5"]
    argv += ["--list-filters", args.list_filters, "--background-runs", str(args.background_runs)]
    if args.map_items:
        argv += ["--retain-runs", "10000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    emulator = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, env=env)
    try:
        await wait_ready(url)
        if args.map_items:
            line = await measure_map(url, args.map_items, args.concurrency)
            print(json.dumps(line), flush=True)
            return
        names = args.contenders.split(",")
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for rep in range(args.repeat):
            # Interleaved, in turn reversed: machine drift falls on every contender alike.
            for name in names if rep % 2 == 0 else names[::-1]:
                rounds[name].append(await measure(url, name, args.runs, args.concurrency))
                if args.repeat > 1:
                    print(json.dumps({"round": rep + 1, **rounds[name][-1]}), flush=True)
        results = [medians(rounds[name]) for name in names]
        for r in results:
            print(json.dumps(r), flush=True)
        base = next((r for r in results if r["contender"] == "baseline"), None)
        if base is not None:
            for r in results:
                if r is not base:
                    ratio = r["client_cpu_ms_per_run"] / base["client_cpu_ms_per_run"]
                    print(
                        json.dumps(
                            {
                                "contender": r["contender"] + "_vs_baseline",
                                "client_cpu_per_run_ratio": round(ratio, 3),
                                "client_cpu_per_request_ratio": round(
                                    r["client_cpu_ms_per_request"]
                                    / base["client_cpu_ms_per_request"],
                                    3,
                                ),
                                "makespan_ratio": round(r["makespan_s"] / base["makespan_s"], 3),
                                "requests_per_run_ratio": round(
                                    r["requests_per_run"] / base["requests_per_run"], 3
                                ),
                            }
                        ),
                        flush=True,
                    )
    finally:
        emulator.send_signal(signal.SIGTERM)
        await emulator.wait()


async def measure_map(url: str, items: int, concurrency: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, __file__, "--contender", "sdk_map", "--url", url]
    argv += ["--runs", str(items), "--concurrency", str(concurrency)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, env=env)
    out, _ = await proc.communicate()
    client = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "contender": "sdk_map_lazy",
        "items": items,
        "concurrency": concurrency,
        "succeeded": client["ok"],
        "peak_rss_mb": client["peak_rss_mb"],
        "wall_s": round(client["wall_s"], 1),
        "client_cpu_ms_per_run": round(client["client_cpu_s"] * 1000 / items, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--median", type=float, default=2.0, help="median run seconds")
    parser.add_argument("--contenders", default="baseline,sdk_auto,sdk_per_run,sdk_callback")
    parser.add_argument(
        "--map-items",
        type=int,
        default=0,
        help="instead: client.map over this many lazy requests (median 0.05 s)",
    )
    parser.add_argument(
        "--list-filters",
        choices=["all", "no-id", "none"],
        default="all",
        help="which run-list filters the emulator accepts (issue 12)",
    )
    parser.add_argument(
        "--background-runs",
        type=float,
        default=0.0,
        help="share of the organisation's runs made by another client",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every contender, interleaved; medians are reported",
    )
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        run_contender(args)
        return
    if args.map_items and args.median == 2.0:
        args.median = 0.05
    asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()

"""The budget under a server that bills N x the estimate: billed/cap and the probe's cost in time.

For each billing multiplier (the emulator's ``cost_multiplier``: it bills that
times the price the client estimates), one in-process emulator serves, in turn:

* ``capped``: ``client.batch(max_concurrency=C, max_cost_usd=cap)`` over N items,
  the cap chosen so that about half of them fit at the true price (``--fit``);
  billed is the emulator's own bill, never the client's view;
* ``baseline``: the same client and concurrency, no cap, over as many items as
  the capped batch ran: the same work, without the probe or any reservation.

Makespans are printed in emulated seconds (wall time / ``time_scale``), so a
median run lasts ``--median`` seconds whatever the scale. Each pair is
repeated ``--repeat`` times; the JSON line per multiplier gives the medians.

    python benchmarks/bench_budget.py                    # 3x and 10x, C=50, 200 items
    python benchmarks/bench_budget.py --cap 0.10         # the issue's $0.10 cap
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from decimal import Decimal
from typing import Any

from runflow_async import BatchEvent, GenerateRequest, PollPolicy, RetryPolicy, RunflowClient
from runflow_async.emulator import Emulator

ESTIMATE = Decimal("0.0015")  # one 512x512 text-to-image run


def request_for(i: int) -> GenerateRequest:
    return GenerateRequest(prompt=f"budget benchmark {i}", image_size="square")


async def one_batch(
    client: RunflowClient, emu: Emulator, items: int, concurrency: int, cap: Decimal | None
) -> dict[str, Any]:
    events: list[tuple[float, BatchEvent]] = []

    def observe(event: BatchEvent) -> None:
        events.append((time.perf_counter(), event))

    billed_before = emu.counters.billed_usd
    started = time.perf_counter()
    async with client.batch(
        max_concurrency=concurrency, max_cost_usd=cap, observer=observe
    ) as batch:
        for i in range(items):
            batch.submit(request_for(i))
    outcomes = await batch.gather()
    wall = time.perf_counter() - started
    return {
        "ok": sum(o.ok for o in outcomes),
        "billed": emu.counters.billed_usd - billed_before,
        "wall": wall,
        "first_settled": next(t for t, e in events if e.kind == "cost_settled") - started,
        "recalibrations": sum(e.kind == "budget_recalibrated" for _, e in events),
    }


async def measure(args: argparse.Namespace, multiplier: Decimal) -> dict[str, Any]:
    cap = args.cap if args.cap is not None else ESTIMATE * multiplier * int(args.items * args.fit)
    scale = args.time_scale
    capped: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    async with (
        Emulator(
            time_scale=scale, seed=args.seed, median_duration=args.median,
            cost_multiplier=multiplier,
        ) as emu,
        RunflowClient(
            "bench-key", base_url=emu.url, max_connections=args.concurrency,
            retry=RetryPolicy(time_scale=scale), poll=PollPolicy(time_scale=scale),
        ) as client,
    ):  # fmt: skip
        for _ in range(args.repeat):
            run = await one_batch(client, emu, args.items, args.concurrency, cap)
            capped.append(run)
            baseline.append(await one_batch(client, emu, run["ok"], args.concurrency, None))
    worst = max(r["billed"] for r in capped)
    capped_s = statistics.median(r["wall"] for r in capped) / scale
    baseline_s = statistics.median(r["wall"] for r in baseline) / scale
    return {
        "multiplier": str(multiplier),
        "concurrency": args.concurrency,
        "items": args.items,
        "cap_usd": str(cap),
        "runs_in_cap": [r["ok"] for r in capped],
        "worst_billed_usd": str(worst),
        "worst_billed_over_cap": round(float(worst / cap), 4),
        "recalibration_events": [r["recalibrations"] for r in capped],
        "makespan_capped_s": round(capped_s, 2),
        "makespan_baseline_s": round(baseline_s, 2),
        "overhead_s": round(capped_s - baseline_s, 2),
        "first_settled_capped_s": round(
            statistics.median(r["first_settled"] for r in capped) / scale, 2
        ),
        "first_settled_baseline_s": round(
            statistics.median(r["first_settled"] for r in baseline) / scale, 2
        ),
        "median_run_s": args.median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multipliers", default="3,10")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--fit", type=float, default=0.5, help="share of items the cap fits")
    parser.add_argument("--cap", type=Decimal, default=None, help="a fixed cap in USD instead")
    parser.add_argument("--median", type=float, default=2.0, help="median run, emulated s")
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for multiplier in args.multipliers.split(","):
        print(json.dumps(asyncio.run(measure(args, Decimal(multiplier)))), flush=True)


if __name__ == "__main__":
    main()

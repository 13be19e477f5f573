"""Chaos soak: thousands of runs through ``client.batch``/``client.map`` under a fault mix.

The emulator runs in its own process (``runflow-async emulator`` on a loopback
port) with every fault of issue 6 switched on together:

* 5% of requests answered 429, half of them without ``Retry-After``;
* 5% of status reads (``GET /v1/runs/{id}``, ``GET /v1/runs``) answered 5xx,
  half an HTML 502 page, half a JSON 503;
* 2% of creates ambiguous: the run is stored, the answer lost (a 502 page);
* 1% of requests dropped (connection closed, no answer);
* 2% of runs failing;
* a credit that runs out before the end (402 ``INSUFFICIENT_CREDIT``): 75% of
  what the whole list costs, under the batch's ``max_cost_usd`` (80%), so the
  402 stops the batch first (``--budget-fraction 0.5 --credit-fraction 0`` makes
  the budget stop it instead).

Afterwards the emulator's own run listing is the ground truth: every run it
created, billed or failed, by ``client_ref`` and by item (each item has its own
prompt). One JSON line: items submitted, succeeded, failed (by reason), not
submitted (by reason), runs created and billed, duplicate billed runs, paid
results the client never got, budget overshoot (against ``max_cost_usd`` and
against the credit), retries and 429s taken, items unaccounted for, wall time.
The exit status is 1 when a target is missed: 0 items unaccounted for, 0
duplicate billed runs, 0 overshoot of ``max_cost_usd``, 0 paid results lost (a
billed run the client neither delivered nor reported as uncertain: a
``CreateOutcomeUnknownError`` naming its ``client_ref``, counted apart as
``paid_results_uncertain``), and no hang.

    python benchmarks/chaos_soak.py --runs 10000
    python benchmarks/chaos_soak.py --runs 10000 --api map
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))
# The baseline: another checkout's client (e.g. the code before issue 11) against
# this checkout's emulator (which has every fault). The emulator always runs from ROOT.
CLIENT_ROOT = Path(os.environ.get("RUNFLOW_CHAOS_CLIENT", ROOT)).resolve()
if CLIENT_ROOT != ROOT:  # import its runflow_async first; `benchmarks` stays this one's
    sys.path.insert(0, str(CLIENT_ROOT))
    import runflow_async  # noqa: F401

    sys.path.remove(str(CLIENT_ROOT))

from benchmarks.chaos_emulator import (  # noqa: E402
    API_KEY,
    ChaosMix,
    Ledger,
    all_runs,
    emulator_process,
    settled_counters,
    total_price,
)
from runflow_async import (  # noqa: E402
    BatchEvent,
    BatchOptions,
    CreateOutcomeUnknownError,
    GenerateRequest,
    NotSubmittedError,
    Outcome,
    PollPolicy,
    RetryEvent,
    RetryPolicy,
    RunflowClient,
)

Preset = Literal["square", "landscape_4_3", "square_hd", "portrait_16_9"]
SIZES: tuple[Preset, ...] = ("square", "landscape_4_3", "square_hd", "portrait_16_9")


def request_for(i: int) -> GenerateRequest:
    """Item ``i``: its own prompt (so runs can be traced to items), a few sizes."""
    return GenerateRequest(prompt=f"chaos soak item {i}", image_size=SIZES[i % len(SIZES)])


# -- the soak -----------------------------------------------------------------


@dataclass
class Tally:
    """What the client saw: every outcome by index, retries and throttles."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    repeated: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    collected: set[str] = field(default_factory=set)

    def observe(self, event: BatchEvent) -> None:
        self.events[event.kind] += 1

    def on_retry(self, event: RetryEvent) -> None:
        self.retries[type(event.error).__name__] += 1

    def add(self, outcome: Outcome) -> None:
        self.repeated += outcome.index in self.outcomes
        self.outcomes[outcome.index] = outcome


@dataclass(frozen=True)
class SoakSettings:
    """One soak: how many items, through which API, under what limits."""

    runs: int = 10_000
    api: Literal["batch", "map"] = "batch"
    wait_strategy: Literal["auto", "list", "per_run"] = "auto"
    concurrency: int = 200
    time_scale: float = 0.01
    seed: int = 6
    credit_fraction: Decimal | None = Decimal("0.75")
    budget_fraction: Decimal = Decimal("0.80")
    timeout: float = 900.0
    list_filters: Literal["all", "no-id", "none"] = "all"
    create_via: Literal["runs", "batches", "auto"] = "runs"
    mix: ChaosMix = field(default_factory=ChaosMix)


def prices(settings: SoakSettings) -> tuple[Decimal | None, Decimal]:
    """The emulator's credit (``None``: unlimited) and the batch's ``max_cost_usd``."""
    # The bill is cost_multiplier x the list price: scale both, so that most
    # items still run before the credit and the budget stop them.
    total = total_price(request_for(i) for i in range(settings.runs)) * settings.mix.billing
    fraction = settings.credit_fraction
    return None if fraction is None else total * fraction, total * settings.budget_fraction


async def drive(url: str, settings: SoakSettings, cap: Decimal, tally: Tally) -> int:
    """Push every item through the library; return how many items it pulled."""
    scale = settings.time_scale
    pulled = 0

    def source() -> Iterator[GenerateRequest]:
        nonlocal pulled
        for i in range(settings.runs):
            pulled += 1
            yield request_for(i)

    async with RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=scale),
        poll=PollPolicy(time_scale=scale),
        max_connections=settings.concurrency,
        on_retry=tally.on_retry,
        wait_strategy=settings.wait_strategy,
        create_via=settings.create_via,
    ) as client:
        options: BatchOptions = {
            "max_concurrency": settings.concurrency,
            "max_cost_usd": cap,
            "observer": tally.observe,
        }
        if settings.api == "map":
            async with client.map(source(), **options) as outcomes:
                async for outcome in outcomes:
                    tally.add(outcome)
            return pulled
        async with client.batch(**options) as batch:
            for request in source():  # submit_many would refuse a list over the cap
                batch.submit(request)
            async for outcome in batch.as_completed():
                tally.add(outcome)
        return pulled


def reason(outcome: Outcome) -> str:
    error = outcome.error
    if isinstance(error, NotSubmittedError):
        return error.reason
    return type(error).__name__


async def soak(
    url: str, settings: SoakSettings, credit: Decimal | None, cap: Decimal
) -> dict[str, Any]:
    """Run one soak against the emulator at ``url`` and audit it from the emulator's side."""
    tally = Tally()
    started = time.perf_counter()
    hung = False
    pulled = 0
    try:
        pulled = await asyncio.wait_for(drive(url, settings, cap, tally), settings.timeout)
    except TimeoutError:
        hung = True
    wall = time.perf_counter() - started
    counters = await settled_counters(url)
    ledger = Ledger.of(await all_runs(url))
    tally.collected = await collect(url, settings, tally, ledger)
    return report(settings, tally, ledger, counters, pulled, credit, cap, wall, hung)


async def collect(url: str, settings: SoakSettings, tally: Tally, ledger: Ledger) -> set[str]:
    """The re-run a user makes: read again (never create) every billed run not delivered.

    A failed outcome that names a run the emulator billed (a succeeded run read
    without outputs past the re-reads, say) is collectable: one ``client.wait``
    per such run, through the same faults, on a fresh client. Returns the runs
    whose images that read delivered.
    """
    delivered = {o.run_id for o in tally.outcomes.values() if o.ok}
    wanted = sorted(
        o.run_id
        for o in tally.outcomes.values()
        if not o.ok and o.run_id in ledger.billed_run and o.run_id not in delivered
    )
    scale = settings.time_scale
    collected: set[str] = set()
    async with RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=scale),
        poll=PollPolicy(time_scale=scale),
    ) as client:
        for run_id in wanted:
            run = await client.wait(run_id)
            if run.images:
                collected.add(run_id)
    return collected


def report(
    settings: SoakSettings,
    tally: Tally,
    ledger: Ledger,
    counters: Mapping[str, Any],
    pulled: int,
    credit: Decimal | None,
    cap: Decimal,
    wall: float,
    hung: bool,
) -> dict[str, Any]:
    """The JSON line: what the client saw against what the emulator did."""
    outcomes = tally.outcomes.values()
    ok = [o for o in outcomes if o.ok]
    skipped = [o for o in outcomes if isinstance(o.error, NotSubmittedError)]
    failed = Counter(
        reason(o) for o in outcomes if not (o.ok or isinstance(o.error, NotSubmittedError))
    )
    not_submitted = Counter(reason(o) for o in skipped)
    if settings.runs > pulled:
        not_submitted["never_pulled_after_stop"] = settings.runs - pulled
    prompts = {o.request.prompt for o in outcomes}
    delivered = {o.run_id for o in ok}
    # A create whose outcome stayed unknown is reported with its client_ref (the
    # batch's uncertain_client_refs) for the caller to reconcile: not lost, but
    # not delivered either.
    uncertain = {
        o.error.client_ref for o in outcomes if isinstance(o.error, CreateOutcomeUnknownError)
    }
    undelivered = [rid for rid in ledger.billed_run if rid not in delivered | tally.collected]
    lost = [rid for rid in undelivered if ledger.billed_ref[rid] not in uncertain]
    unreported = sum(ledger.created[o.request.prompt] > 0 for o in skipped)
    strangers = sum(p not in prompts for p in ledger.created)
    cost_mismatches = sum(o.billed_usd != ledger.cost.get(o.run_id or "") for o in ok)
    accounted = len(ok) + sum(failed.values()) + sum(not_submitted.values())
    by_status = counters["responses_by_status"]
    result = {
        "benchmark": "chaos_soak",
        "client": str(CLIENT_ROOT),
        "api": settings.api,
        "wait_strategy": settings.wait_strategy,
        "items": settings.runs,
        "concurrency": settings.concurrency,
        "time_scale": settings.time_scale,
        "seed": settings.seed,
        "list_filters": settings.list_filters,
        "create_via": settings.create_via,
        "fault_mix": asdict(settings.mix),
        "submitted": pulled,
        "succeeded": len(ok),
        "failed": dict(failed),
        "not_submitted": dict(not_submitted),
        "unaccounted": settings.runs - accounted + tally.repeated,
        "emulator_runs_created": ledger.runs,
        "emulator_runs_billed": ledger.succeeded,
        "emulator_runs_failed": ledger.failed,
        "emulator_billed_usd": str(ledger.billed_usd),
        "client_billed_usd": str(sum((o.billed_usd or Decimal(0) for o in outcomes), Decimal(0))),
        "duplicate_billed_runs": ledger.duplicate_billed_runs,
        "items_with_two_runs": ledger.items_created_twice,
        "paid_results_lost": len(lost),
        "paid_results_uncertain": len(undelivered) - len(lost),
        "collectable_collected_by_rerun": len(tally.collected),
        "not_submitted_but_created": unreported,
        "runs_for_unknown_items": strangers,
        "cost_mismatches": cost_mismatches,
        "max_cost_usd": str(cap),
        "budget_overshoot_usd": str(max(Decimal(0), ledger.billed_usd - cap)),
        "credit_usd": None if credit is None else str(credit),
        # The emulator checks credit against what it has billed, so runs admitted
        # before it ran out still finish and bill: bounded by the runs in flight.
        "billed_beyond_credit_usd": (
            None if credit is None else str(max(Decimal(0), ledger.billed_usd - credit))
        ),
        "creates_refused_402": by_status.get("402", 0),
        "client_retries": dict(tally.retries),
        "create_retries": tally.events["retried"],
        "throttled_429": tally.events["throttled"],
        "emulator_429s": by_status.get("429", 0),
        "emulator_faults": counters["faults_injected"],
        "emulator_create_requests": {
            route: counters["requests_by_route"].get(route, 0)
            for route in ("create", "batch_create")
        },
        "emulator_requests": sum(
            n for route, n in counters["requests_by_route"].items() if route in API_ROUTES
        ),
        "hung": hung,
        "wall_s": round(wall, 2),
    }
    result["missed"] = missed_targets(result)
    return result


API_ROUTES = frozenset({"create", "get_run", "list_runs"})


def missed_targets(result: Mapping[str, Any]) -> list[str]:
    """The targets a result misses (empty: all met)."""
    zero = (
        "unaccounted",
        "duplicate_billed_runs",
        "paid_results_lost",
        "not_submitted_but_created",
        "runs_for_unknown_items",
        "cost_mismatches",
    )
    missed = [name for name in zero if result[name] != 0]
    if Decimal(result["budget_overshoot_usd"]) > 0:
        missed.append("budget_overshoot_usd")
    if result["hung"]:
        missed.append("hung")
    return missed


async def main_async(settings: SoakSettings) -> dict[str, Any]:
    credit, cap = prices(settings)
    flags = ["--seed", str(settings.seed), "--time-scale", str(settings.time_scale)]
    flags += ["--list-filters", settings.list_filters]
    flags += [*settings.mix.flags(), *([] if credit is None else ["--credit-usd", str(credit)])]
    async with emulator_process(*flags) as url:
        return await soak(url, settings, credit, cap)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--api", choices=["batch", "map"], default="batch")
    parser.add_argument("--wait-strategy", choices=["auto", "list", "per_run"], default="auto")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before 'hung'")
    parser.add_argument(
        "--credit-fraction", type=Decimal, default=Decimal("0.75"), help="0: unlimited credit"
    )
    parser.add_argument("--budget-fraction", type=Decimal, default=Decimal("0.80"))
    parser.add_argument(
        "--list-filters",
        choices=["all", "no-id", "none"],
        default="all",
        help="which list filters the emulator accepts (no-id: only the documented ones)",
    )
    parser.add_argument(
        "--create-via",
        choices=["runs", "batches", "auto"],
        default="runs",
        help="create runs one by one or up to 100 per batch create (the faults hit both routes)",
    )
    args = parser.parse_args(argv)
    settings = SoakSettings(
        create_via=args.create_via,
        credit_fraction=args.credit_fraction or None,
        budget_fraction=args.budget_fraction,
        runs=args.runs,
        api=args.api,
        wait_strategy=args.wait_strategy,
        concurrency=args.concurrency,
        time_scale=args.time_scale,
        seed=args.seed,
        timeout=args.timeout,
        list_filters=args.list_filters,
    )
    result = asyncio.run(main_async(settings))
    print(json.dumps(result), flush=True)
    return 1 if result["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())

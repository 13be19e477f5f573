"""The ``runflow-async`` command. The only module that prints."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from runflow_async._cli.dataset import add_dataset_commands, run_command
from runflow_async._version import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runflow-async",
        description="Runflow FLUX.2 [klein] 9B from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate a few images on the embedded emulator")
    demo.add_argument("--out", type=Path, default=Path("runflow-demo"), help="output folder")
    demo.add_argument("--count", type=int, default=4, help="how many images (1-100)")

    def amount(text: str) -> Decimal:
        try:
            return Decimal(text)
        except ArithmeticError as exc:  # decimal.InvalidOperation: argparse would not catch it
            raise argparse.ArgumentTypeError(f"not a decimal number: {text!r}") from exc

    add_dataset_commands(sub)

    emu = sub.add_parser("emulator", help="serve the local Runflow API emulator")
    emu.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    emu.add_argument("--port", type=int, default=8787)
    emu.add_argument("--seed", type=int, default=0)
    emu.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="real seconds per emulated second (0.01 makes runs 100x faster)",
    )
    emu.add_argument(
        "--median-duration", type=float, default=2.0, help="median run duration in emulated seconds"
    )
    emu.add_argument(
        "--duration-sigma", type=float, default=0.5, help="sigma of the log-normal run duration"
    )
    emu.add_argument("--failure-rate", type=float, default=0.0)
    emu.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="accept only this key (repeatable); default: any key",
    )
    emu.add_argument(
        "--cost-multiplier", type=amount, default=Decimal(1), help="bill this times the price"
    )
    emu.add_argument(
        "--credit-usd", type=amount, default=None, help="answer 402 once this much is billed"
    )
    emu.add_argument(
        "--max-in-flight-runs",
        type=int,
        default=None,
        help="answer creates 429 while this many runs are not finished",
    )
    emu.add_argument(
        "--create-rate",
        type=float,
        default=None,
        help="token bucket on creates: creates per emulated second (429 beyond)",
    )
    emu.add_argument(
        "--create-burst", type=int, default=1, help="token bucket capacity (default 1)"
    )
    emu.add_argument(
        "--rate-limit-retry-after",
        type=float,
        default=None,
        help="Retry-After seconds sent with rate-limit 429s (default: no header)",
    )
    emu.add_argument(
        "--retain-runs",
        type=int,
        default=None,
        help="keep only this many finished runs (bounded memory for millions of runs)",
    )
    emu.add_argument(
        "--callback-null-output-rate",
        type=float,
        default=0.0,
        help='fraction of automatic callbacks sent with "output": null (0-1)',
    )
    _add_fault_flags(emu)
    return parser


def _routes(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _scope(text: str) -> tuple[str, frozenset[str]]:
    kind, sep, routes = text.partition("=")
    if not (sep and kind.strip() and routes.strip()):
        raise argparse.ArgumentTypeError(f"expected KIND=ROUTE[,ROUTE...], got {text!r}")
    return kind.strip(), _routes(routes)


def _add_fault_flags(emu: argparse.ArgumentParser) -> None:
    """Seeded random faults (``FaultRates``): each rate is a fraction of requests, 0-1."""
    faults = emu.add_argument_group("random faults (seeded; one draw per request)")
    for flag, default, what in (
        ("--rate-429", 0.0, "answered 429 RATE_LIMITED"),
        ("--rate-429-without-retry-after", 0.5, "of those 429s, sent without Retry-After"),
        ("--rate-5xx", 0.0, "answered a server error (502 HTML or 503 JSON)"),
        ("--rate-5xx-html", 0.5, "of those server errors, an HTML 502 page"),
        ("--rate-drop", 0.0, "whose connection is closed without an answer"),
        ("--rate-lost-create", 0.0, "of creates: run stored, answer lost (a 502 page)"),
        ("--rate-slow", 0.0, "answered --slow-seconds late"),
    ):
        faults.add_argument(flag, type=float, default=default, help=f"fraction {what}")
    faults.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After seconds of a 429 (default 1)"
    )
    faults.add_argument(
        "--slow-seconds", type=float, default=1.0, help="delay of a slow answer (emulated s)"
    )
    faults.add_argument(
        "--fault-routes",
        type=_routes,
        default=frozenset({"create", "get_run", "list_runs"}),
        metavar="ROUTE[,ROUTE...]",
        help="routes that draw faults (default create,get_run,list_runs)",
    )
    faults.add_argument(
        "--fault-only",
        type=_scope,
        action="append",
        default=[],
        metavar="KIND=ROUTE[,ROUTE...]",
        help="confine a kind (429, 5xx, drop, slow) to some routes, e.g. 5xx=get_run,list_runs",
    )


def _money(value: Decimal) -> str:
    return f"${value:.6f}"


def _demo(args: argparse.Namespace) -> int:
    from runflow_async._dataset.demo import run_demo

    if not 1 <= args.count <= 100:
        print("runflow-async demo: --count must be between 1 and 100", file=sys.stderr)
        return 2
    report = asyncio.run(run_demo(args.out, count=args.count))
    print(f"Emulator: {report.emulator_url} (in-process, stopped)")
    for f in report.files:
        print(f"  {f.path}  {f.size} bytes  sha256 {f.sha256[:12]}")
    assert report.summary is not None  # noqa: S101 - set by run_demo
    print(f"Items: {report.summary.succeeded}/{report.summary.total}  images: {len(report.files)}")
    print(f"Manifest: {report.out_dir / 'metadata.jsonl'}")
    print(f"Estimated cost: {_money(report.estimated_usd)}")
    print(f"Billed cost:    {_money(report.billed_usd)}")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from runflow_async.emulator import Emulator, EmulatorConfig, FaultRates, serve

    try:
        faults = FaultRates(
            rate_429=args.rate_429,
            rate_429_without_retry_after=args.rate_429_without_retry_after,
            retry_after_seconds=args.retry_after,
            rate_5xx=args.rate_5xx,
            rate_5xx_html=args.rate_5xx_html,
            rate_drop=args.rate_drop,
            rate_lost_create=args.rate_lost_create,
            rate_slow=args.rate_slow,
            slow_seconds=args.slow_seconds,
            applies_to=args.fault_routes,
            only_on=dict(args.fault_only),
        )
        config = EmulatorConfig(
            host=args.host,
            port=args.port,
            seed=args.seed,
            time_scale=args.time_scale,
            median_duration=args.median_duration,
            duration_sigma=args.duration_sigma,
            failure_rate=args.failure_rate,
            api_keys=frozenset(args.api_keys) if args.api_keys else None,
            cost_multiplier=args.cost_multiplier,
            credit_usd=args.credit_usd,
            max_in_flight_runs=args.max_in_flight_runs,
            create_rate_per_second=args.create_rate,
            create_burst=args.create_burst,
            rate_limit_retry_after=args.rate_limit_retry_after,
            retain_runs=args.retain_runs,
            callback_null_output_rate=args.callback_null_output_rate,
            faults=faults,
        )
    except ValueError as exc:
        print(f"runflow-async emulator: {exc}", file=sys.stderr)
        return 2

    def ready(emu: Emulator) -> None:  # the bound port, even with --port 0
        print(f"Runflow emulator on {emu.url} (Ctrl-C stops it)", flush=True)

    async def run() -> None:
        # Handle Ctrl-C and SIGTERM ourselves: a process started in the background
        # by a shell inherits SIGINT as *ignored*, and Python then never raises
        # KeyboardInterrupt, so relying on it would leave the server unstoppable.
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - always inside asyncio.run
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(config, on_ready=ready)

    asyncio.run(run())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "emulator":
        return _emulator(args)
    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

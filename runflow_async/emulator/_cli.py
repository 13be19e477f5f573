"""``runflow-async emulator``: the emulator's own command-line flags, owned by the emulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from decimal import Decimal

from runflow_async.emulator._cli_fidelity import add_fidelity_flags, fidelity_options
from runflow_async.emulator._config import (
    BATCH_BODIES,
    BATCH_MODELS,
    DEFAULT_FAULT_ROUTES,
    IDEMPOTENCY_MODES,
    LIST_FILTER_MODES,
    REPORTED_COSTS,
    EmulatorConfig,
    FaultRates,
)
from runflow_async.emulator._server import Emulator, serve

__all__ = ["add_emulator_command", "run_emulator_command"]


def _amount(text: str) -> Decimal:
    try:
        return Decimal(text)
    except ArithmeticError as exc:  # decimal.InvalidOperation: argparse would not catch it
        raise argparse.ArgumentTypeError(f"not a decimal number: {text!r}") from exc


def add_emulator_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``emulator`` and its flags to the command's subparsers."""
    amount = _amount
    emu = sub.add_parser("emulator", help="serve the local Runflow API emulator")
    emu.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    emu.add_argument("--port", type=int, default=8787, help="TCP port (0: any free one)")
    emu.add_argument(
        "--seed", type=int, default=0, help="seed of run durations, failures and faults"
    )
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
    emu.add_argument(
        "--failure-rate", type=float, default=0.0, help="fraction of runs that fail (0-1)"
    )
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
    _add_server_fault_flags(emu)
    add_fidelity_flags(emu)
    _add_limit_flags(emu)
    _add_fault_flags(emu)


def _add_server_fault_flags(emu: argparse.ArgumentParser) -> None:
    """A server's standing misbehaviours (not drawn per request)."""
    emu.add_argument(
        "--list-lag",
        type=float,
        default=0.0,
        help="emulated seconds before a new run appears in run lists",
    )
    emu.add_argument(
        "--reported-cost",
        choices=REPORTED_COSTS,
        default="billed",
        help="what reads show as a run's cost (a fault; the bill stays true)",
    )
    emu.add_argument(
        "--cost-report-delay",
        type=float,
        default=0.0,
        help="emulated seconds after a run ends before reads show its cost (null until then)",
    )
    emu.add_argument(
        "--list-ignores-filter",
        action="store_true",
        help="run lists ignore q and list every run (a server without the filter, silent)",
    )
    emu.add_argument(
        "--list-filters",
        choices=LIST_FILTER_MODES,
        default="all",
        help="q filters run lists accept: all, no-id (status_code and created_at only) or "
        "none; others are refused 400 INVALID_QUERY (default all)",
    )
    emu.add_argument(
        "--background-runs",
        type=float,
        default=0.0,
        help="share of the organisation's runs made by another client, 0 <= x < 1 "
        "(0.5: one per create); listed, counted apart",
    )
    _add_batch_flags(emu)
    emu.add_argument(
        "--idempotency-mode",
        choices=IDEMPOTENCY_MODES,
        default="at_receipt",
        help="how Idempotency-Key is honoured while a late commit is pending (default at_receipt)",
    )


def _add_batch_flags(emu: argparse.ArgumentParser) -> None:
    """What the batch route takes and where its children's client_refs are kept."""
    emu.add_argument(
        "--batch-body",
        choices=BATCH_BODIES,
        default="openapi",
        help='body the batch route takes: openapi ({"input": [...]}), guide ({"items": '
        '[{"input": ...}]}, answered {id, status_code, items_total}) or either (default openapi)',
    )
    emu.add_argument(
        "--batch-models",
        choices=BATCH_MODELS,
        default="all",
        help="models that take batches: all, text-to-image or none; the others answer the "
        "batch route 422 BATCH_NOT_SUPPORTED (default all)",
    )
    emu.add_argument(
        "--batch-children-without-refs",
        action="store_true",
        help="a batch's child runs do not carry their item's client_ref (only the batch "
        "items show it), so q=client_ref: does not list them",
    )


def _add_limit_flags(emu: argparse.ArgumentParser) -> None:
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


def _routes(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _scope(text: str) -> tuple[str, frozenset[str]]:
    kind, sep, routes = text.partition("=")
    if not (sep and kind.strip() and routes.strip()):
        raise argparse.ArgumentTypeError(f"expected KIND=ROUTE[,ROUTE...], got {text!r}")
    return kind.strip(), _routes(routes)


_RATE_FLAGS: tuple[tuple[str, float, str], ...] = (
    ("--rate-429", 0.0, "answered 429 RATE_LIMITED"),
    ("--rate-429-without-retry-after", 0.5, "of those 429s, sent without Retry-After"),
    ("--rate-5xx", 0.0, "answered a server error (502 HTML or 503 JSON)"),
    ("--rate-5xx-html", 0.5, "of those server errors, an HTML 502 page"),
    ("--rate-drop", 0.0, "whose connection is closed without an answer"),
    ("--rate-lost-create", 0.0, "of creates: run stored, answer lost (a 502 page)"),
    ("--rate-slow", 0.0, "answered --slow-seconds late"),
    ("--rate-html-ok", 0.0, "of status reads: 200 OK with an HTML page"),
    ("--rate-null-output", 0.0, 'of status reads: succeeded runs shown with "output": null'),
    ("--rate-not-found", 0.0, "of run reads: a transient 404 for a run that exists"),
    ("--rate-not-image", 0.0, "of downloads: 200 with a JSON page claiming image/png"),
    (
        "--rate-oversized-image",
        0.0,
        "of downloads: the image padded to --oversized-image-bytes",
    ),
    ("--rate-download-404", 0.0, "of downloads: 404 FILE_NOT_FOUND"),
    ("--rate-late-commit", 0.0, "of creates: dropped, run stored --late-commit-seconds later"),
    ("--rate-reused-run-id", 0.0, "of creates: answered with the previous create's run id"),
    ("--rate-malformed", 0.0, "of creates and status reads: a malformed status line"),
    ("--rate-oversized", 0.0, "of status reads: a JSON body of --oversized-bytes"),
)
"""The ``FaultRates`` fraction flags: flag, default, what the fraction is of."""


def _add_fault_flags(emu: argparse.ArgumentParser) -> None:
    """Seeded random faults (``FaultRates``): each rate is a fraction of requests, 0-1."""
    faults = emu.add_argument_group("random faults (seeded; one draw per request)")
    for flag, default, what in _RATE_FLAGS:
        faults.add_argument(flag, type=float, default=default, help=f"fraction {what}")
    faults.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After seconds of a 429 (default 1)"
    )
    faults.add_argument(
        "--slow-seconds", type=float, default=1.0, help="delay of a slow answer (emulated s)"
    )
    faults.add_argument(
        "--oversized-image-bytes",
        type=int,
        default=65 * 1024 * 1024,
        help="size of an oversized download (default 65 MiB, over the client's 64 MiB cap)",
    )
    faults.add_argument(
        "--oversized-bytes",
        type=int,
        default=17 * 1024 * 1024,
        help="size of an oversized status read (default 17 MiB, over the client's 16 MiB cap)",
    )
    faults.add_argument(
        "--late-commit-seconds",
        type=float,
        default=3.0,
        help="delay from receipt to storage of a late commit (emulated s, default 3)",
    )
    faults.add_argument(
        "--fault-routes",
        type=_routes,
        default=DEFAULT_FAULT_ROUTES,
        metavar="ROUTE[,ROUTE...]",
        help="routes that draw faults (default create,get_run,list_runs and the batch routes "
        "batch_create,get_batch,batch_items,batch_item; add file for the download faults)",
    )
    faults.add_argument(
        "--fault-only",
        type=_scope,
        action="append",
        default=[],
        metavar="KIND=ROUTE[,ROUTE...]",
        help="confine a kind (429, 5xx, drop, slow) to some routes, e.g. 5xx=get_run,list_runs",
    )


def run_emulator_command(args: argparse.Namespace) -> int:
    """Serve the emulator as ``args`` say until Ctrl-C or SIGTERM; returns the exit status."""
    try:
        config = _config(args)
    except ValueError as exc:
        print(f"runflow-async emulator: {exc}", file=sys.stderr)
        return 2
    return _serve(config)


def _config(args: argparse.Namespace) -> EmulatorConfig:
    faults = FaultRates(
        rate_429=args.rate_429,
        rate_429_without_retry_after=args.rate_429_without_retry_after,
        retry_after_seconds=args.retry_after,
        rate_5xx=args.rate_5xx,
        rate_5xx_html=args.rate_5xx_html,
        rate_drop=args.rate_drop,
        rate_lost_create=args.rate_lost_create,
        rate_slow=args.rate_slow,
        rate_html_ok=args.rate_html_ok,
        rate_null_output=args.rate_null_output,
        rate_not_found=args.rate_not_found,
        slow_seconds=args.slow_seconds,
        rate_not_image=args.rate_not_image,
        rate_oversized_image=args.rate_oversized_image,
        oversized_image_bytes=args.oversized_image_bytes,
        rate_download_404=args.rate_download_404,
        rate_late_commit=args.rate_late_commit,
        late_commit_seconds=args.late_commit_seconds,
        rate_reused_run_id=args.rate_reused_run_id,
        rate_malformed=args.rate_malformed,
        rate_oversized=args.rate_oversized,
        oversized_bytes=args.oversized_bytes,
        applies_to=args.fault_routes,
        only_on=dict(args.fault_only),
    )
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        seed=args.seed,
        time_scale=args.time_scale,
        median_duration=args.median_duration,
        duration_sigma=args.duration_sigma,
        failure_rate=args.failure_rate,
        api_keys=frozenset(args.api_keys) if args.api_keys else None,
        cost_multiplier=args.cost_multiplier,
        reported_cost=args.reported_cost,
        cost_report_delay=args.cost_report_delay,
        list_lag=args.list_lag,
        idempotency_mode=args.idempotency_mode,
        list_ignores_filter=args.list_ignores_filter,
        list_filters=args.list_filters,
        background_runs=args.background_runs,
        credit_usd=args.credit_usd,
        max_in_flight_runs=args.max_in_flight_runs,
        create_rate_per_second=args.create_rate,
        create_burst=args.create_burst,
        rate_limit_retry_after=args.rate_limit_retry_after,
        retain_runs=args.retain_runs,
        callback_null_output_rate=args.callback_null_output_rate,
        batch_body=args.batch_body,
        batch_models=args.batch_models,
        batch_child_refs=not args.batch_children_without_refs,
        faults=faults,
        **fidelity_options(args),
    )


def _serve(config: EmulatorConfig) -> int:
    bound = False

    def ready(emu: Emulator) -> None:  # the bound port, even with --port 0
        nonlocal bound
        bound = True
        print(f"Runflow emulator on {emu.url} (Ctrl-C stops it)", flush=True)
        if emu.ca_file is not None:
            print(f"TLS CA certificate (trust it to connect): {emu.ca_file}", flush=True)

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

    try:
        asyncio.run(run())
    except OSError as exc:
        if bound:
            raise
        # A port in use (or not ours to bind): one line, the usage status.
        where = f"{config.host}:{config.port}"
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"runflow-async emulator: cannot listen on {where}: {why}", file=sys.stderr)
        return 2
    return 0

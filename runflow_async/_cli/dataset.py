"""``runflow-async generate | edit | estimate | status``: datasets from the command line.

Order of checks, so that nothing is billed by mistake: the input file is parsed
whole (a bad line is reported with its number and nothing is sent), the API
key is resolved, the estimate is shown and confirmed (``--yes``, or within
``--max-cost``, or an answer on a terminal; without a terminal and without
either flag the command refuses rather than hang), and only then does any run
start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from runflow_async._cli.options import IMAGE_SIZE_HELP, amount, ca_file, positive_int, time_scale
from runflow_async._cli.progress import ProgressPrinter
from runflow_async._client.client import RunflowClient
from runflow_async._core.config import ENV_API_KEY, PollPolicy, RetryPolicy, resolve_api_key
from runflow_async._core.errors import ConfigurationError, RunflowError
from runflow_async._core.estimate import Estimate
from runflow_async._dataset.card import CardSource, redact_command, sha256_of
from runflow_async._dataset.estimate import estimate_items
from runflow_async._dataset.input import (
    DatasetItem,
    Defaults,
    InputFileError,
    parse_size,
    read_edit_file,
    read_generate_file,
    sniff_kind,
)
from runflow_async._dataset.journal import Journal
from runflow_async._dataset.outputs import DatasetSummary, interrupted_summary, unfinished
from runflow_async._dataset.pipeline import run_dataset
from runflow_async._dataset.shards import DEFAULT_SHARD_SIZE, DatasetFormat
from runflow_async._pricing import PricingPolicy

__all__ = ["add_dataset_commands", "run_command"]

EMULATOR_TIME_SCALE = 0.01  # --emulator: a "2 s" run takes 20 ms


def _size(text: str) -> str | tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=_size, help=IMAGE_SIZE_HELP)
    parser.add_argument("--num-images", type=int, choices=range(1, 5), metavar="1-4")
    parser.add_argument("--output-format", choices=["jpeg", "png", "webp"])
    parser.add_argument(
        "--seed",
        type=int,
        help="base seed; each line's seed derives from it and the line's content",
    )


def add_dataset_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``generate``, ``edit``, ``estimate`` and ``status`` to the parser."""
    for name, what in (("generate", "PROMPTS (.txt, .jsonl or .csv)"), ("edit", "JOBS.jsonl")):
        cmd = sub.add_parser(name, help=f"{name} a dataset from {what}")
        cmd.add_argument("input", type=Path, metavar=what.split()[0])
        cmd.add_argument("--out", type=Path, required=True, help="output folder")
        cmd.add_argument("--concurrency", type=positive_int, default=16, help="runs at once")
        cmd.add_argument("--max-cost", type=amount, help="budget in USD")
        cmd.add_argument(
            "--create-via",
            choices=["runs", "batches", "auto"],
            default="runs",
            help="one create per run (default), batch creates of up to 100 runs, or auto "
            "(batches when 10 or more are ready, per run if the API refuses the batch route); "
            "another value is bad usage (exit 2)",
        )
        _request_options(cmd)
        cmd.add_argument(
            "--retry-failed",
            action="store_true",
            help="create the items that failed again (runs that failed server-side are not "
            "billed); without it a re-run leaves them failed",
        )
        cmd.add_argument(
            "--format",
            dest="dataset_format",
            type=DatasetFormat,
            choices=list(DatasetFormat),
            help="a new folder's layout (default imagefolder; a folder keeps its own)",
        )
        cmd.add_argument(
            "--shard-size",
            type=positive_int,
            help=f"images per subfolder or shard (default {DEFAULT_SHARD_SIZE:,})",
        )
        cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        cmd.add_argument("--json", action="store_true", help="print a JSON summary at the end")
        cmd.add_argument("--base-url", help="API root (default: RUNFLOW_BASE_URL or the API)")
        cmd.add_argument("--api-key", help=f"API key (default: {ENV_API_KEY})")
        cmd.add_argument(
            "--ca-file",
            type=ca_file,
            metavar="PEM",
            help="also trust the CAs in this PEM file (a private CA, the emulator's --tls)",
        )
        cmd.add_argument("--emulator", action="store_true", help="run on an in-process emulator")
        cmd.add_argument(
            "--time-scale",
            type=time_scale,
            default=None,
            help="scale client waits (retries, polls) to match an emulator started with "
            "--time-scale; default 1, or 0.01 with --emulator",
        )
    est = sub.add_parser("estimate", help="print the cost estimate of an input file")
    est.add_argument("input", type=Path, metavar="PROMPTS|JOBS")
    _request_options(est)
    est.add_argument("--json", action="store_true")
    status = sub.add_parser("status", help="summarise a dataset folder")
    status.add_argument("out", type=Path, metavar="DIR")
    status.add_argument("--json", action="store_true")


def _err(message: str) -> None:
    print(f"runflow-async: {message}", file=sys.stderr)


def _read(args: argparse.Namespace, kind: str) -> list[DatasetItem]:
    defaults = Defaults(
        image_size=args.image_size,
        num_images=args.num_images,
        output_format=args.output_format,
        base_seed=args.seed,
    )
    reader = read_edit_file if kind == "edit" else read_generate_file
    return reader(args.input, defaults)


def _show_estimate(estimate: Estimate, stream: TextIO) -> None:
    print(f"Estimate: {estimate.summary()}", file=stream)
    for assumption in estimate.assumptions:
        print(f"  assumes: {assumption}", file=stream)


def _confirmed(args: argparse.Namespace, estimate: Estimate, spent: Decimal) -> bool | None:
    """True to go, False if the user said no, None if we must refuse (no terminal)."""
    within = args.max_cost is not None and spent + estimate.total_usd <= args.max_cost
    if args.yes or within:
        return True
    if not sys.stdin.isatty():
        return None
    # On stderr, like the estimate: stdout stays for --json.
    try:
        print(f"Spend about ${estimate.total_usd}? [y/N] ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the prompt's line
        raise
    if not answer:  # end of input (Ctrl-D): no answer is a no
        print(file=sys.stderr)
    return answer.strip().lower() in {"y", "yes"}


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace, api_key: str) -> AsyncIterator[RunflowClient]:
    scale = args.time_scale or (EMULATOR_TIME_SCALE if args.emulator else 1.0)
    retry, poll = RetryPolicy(time_scale=scale), PollPolicy(time_scale=scale)
    how = {"retry": retry, "poll": poll, "create_via": args.create_via}
    if not args.emulator:
        async with RunflowClient(
            api_key, base_url=args.base_url, ssl_context=args.ca_file, **how
        ) as c:
            yield c
        return
    from runflow_async.emulator import Emulator  # only with --emulator

    async with (
        Emulator(time_scale=scale) as emu,
        RunflowClient(api_key, base_url=emu.url, **how) as client,
    ):
        yield client


LOG_PATH = Path(".runflow", "log.txt")
"""Where ``generate``/``edit`` append the library's log (retries, throttling, stops)."""


@contextlib.contextmanager
def _log_to_folder(out: Path) -> Iterator[None]:
    """Append ``runflow_async`` INFO records to ``DIR/.runflow/log.txt`` for the run."""
    path = out / LOG_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("runflow_async")
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


async def _run(
    args: argparse.Namespace,
    items: list[DatasetItem],
    api_key: str,
    estimates: dict[str, Decimal],
) -> int:
    printer = ProgressPrinter(sys.stderr, live=sys.stderr.isatty())
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - inside asyncio.run
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Handled ourselves: a background start inherits SIGINT as ignored. Only
        # possible in the main thread (tests call main() from a worker thread).
        with contextlib.suppress(RuntimeError, ValueError):
            loop.add_signal_handler(sig, task.cancel)
            handled.append(sig)
    try:
        async with _client(args, api_key) as client:
            card = _card_source(args, str(client.base_url), api_key)
            summary = await run_dataset(
                client,
                args.out,
                items,
                concurrency=args.concurrency,
                max_cost_usd=args.max_cost,
                on_progress=printer,
                estimates=estimates,
                retry_failed=args.retry_failed,
                dataset_format=args.dataset_format,
                shard_size=args.shard_size,
                card=card,
            )
    except asyncio.CancelledError:
        printer.close()
        summary = interrupted_summary(args.out, items)
    else:
        printer.close()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    print(
        f"{summary.succeeded}/{summary.total} done, {summary.failed} failed, "
        f"{summary.pending} not finished, spent ${summary.spent_usd}{_estimated(summary)} "
        f"-> {summary.out_dir}",
        file=sys.stderr,
    )
    for label, counts in (("not finished", summary.reasons), ("failed", summary.failures)):
        if counts:
            why = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
            print(f"  {label}: {why}", file=sys.stderr)
    for step in summary.next_steps:
        print(f"  next: {step}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_json()))
    return summary.exit_code


def _card_source(args: argparse.Namespace, endpoint: str, api_key: str) -> CardSource:
    """What the dataset card says made the folder: the command without its secrets."""
    try:
        digest: str | None = sha256_of(args.input)
    except OSError:
        digest = None
    argv = ["runflow-async", *getattr(args, "argv", [args.command])]
    command = redact_command(argv, (api_key, os.environ.get(ENV_API_KEY, "")))
    return CardSource(args.command, command, endpoint, digest)


def _estimated(summary: DatasetSummary) -> str:
    """What part of ``spent`` is an estimate: runs whose cost the API did not report."""
    if not summary.unknown_cost_runs:
        return ""
    return (
        f" (of which ${summary.unknown_cost_usd} estimated: the cost of "
        f"{summary.unknown_cost_runs} run(s) is unknown, counted as reserved)"
    )


def run_command(args: argparse.Namespace) -> int:
    """Run ``generate``/``edit``/``estimate``/``status``; returns the exit status."""
    if args.command == "status":
        return _status(args)
    kind = args.command if args.command != "estimate" else _sniff(args.input)
    try:
        items = _read(args, kind)
    except InputFileError as exc:
        _err(str(exc))
        return 2
    spent = Decimal(0)
    todo = items
    if args.command != "estimate":
        todo, spent = unfinished(args.out, items, retry_failed=args.retry_failed)
        if len(todo) < len(items):
            print(
                f"{len(items) - len(todo)} of {len(items)} items already finished in "
                f"{args.out} (spent ${spent}); estimating the rest",
                file=sys.stderr,
            )
    estimate = asyncio.run(estimate_items(todo, PricingPolicy()))
    if args.command == "estimate":
        if args.json:
            print(
                json.dumps(
                    {
                        "items": len(estimate),
                        "images": estimate.images,
                        "megapixels": str(estimate.megapixels),
                        "total_usd": str(estimate.total_usd),
                        "assumptions": list(estimate.assumptions),
                    }
                )
            )
        else:
            _show_estimate(estimate, sys.stdout)  # the command's result: `> file` keeps it
        return 0
    try:
        api_key = "emulator-key" if args.emulator else resolve_api_key(args.api_key)
    except ConfigurationError as exc:
        _err(str(exc))
        return 2
    _show_estimate(estimate, sys.stderr)
    go = _confirmed(args, estimate, spent)
    if go is None:
        _err("no terminal to confirm on: pass --yes or a --max-cost that covers the estimate")
        return 2
    if not go:
        _err("nothing submitted")
        return 1
    try:
        confirmed = _reservations(todo, estimate)
        del estimate, todo  # not kept for the run: the journal and the summary have what counts
        with _log_to_folder(args.out):
            return asyncio.run(_run(args, items, api_key, confirmed))
    except RunflowError as exc:
        _err(str(exc))
        return 1


def _reservations(items: list[DatasetItem], estimate: Estimate) -> dict[str, Decimal]:
    """Each item's confirmed estimate, by key; equal amounts share one ``Decimal``."""
    shared: dict[Decimal, Decimal] = {}
    return {
        item.key: shared.setdefault(each.usd, each.usd)
        for item, each in zip(items, estimate.items, strict=True)
    }


def _sniff(path: Path) -> str:
    try:
        return sniff_kind(path)
    except (OSError, ValueError):
        return "generate"  # reading it again reports the problem properly


def _status(args: argparse.Namespace) -> int:
    if not (args.out / ".runflow").is_dir():
        _err(f"{args.out} is not a dataset folder (no .runflow journal)")
        return 2
    with Journal.open(args.out) as journal:
        raw = journal.summary()
    counts = raw["counts"]
    status = {
        "total": raw["total"],
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "in_flight": counts["submitting"] + counts["created"],
        "not_submitted": counts["pending"] + counts["not_submitted"],
        "spent_usd": str(raw["spent_usd"]),
        "unknown_cost_runs": raw["unknown_cost_runs"],
        "unknown_cost_usd": str(raw["unknown_cost_usd"]),
        "remaining_estimate_usd": str(raw["estimated_usd"]),
    }
    if args.json:
        print(json.dumps(status))
    else:
        for name, value in status.items():
            print(f"{name.replace('_', ' ')}: {value}")
    return 0

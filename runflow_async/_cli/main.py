"""The ``runflow-async`` command. The only module that prints.

Exit statuses (README, "CLI"): 0 done; 1 some items failed or are unfinished,
or nothing was submitted because the confirmation was declined; 2 bad usage or
input, found before anything was sent; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from runflow_async._cli.dataset import add_dataset_commands, run_command
from runflow_async._cli.options import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    HelpFormatter,
    Parser,
    add_verbose,
    out_problem,
    verbose,
)
from runflow_async._cli.preview import add_preview_command, run_preview
from runflow_async._core.config import ENV_API_KEY
from runflow_async._version import __version__
from runflow_async.emulator._cli import add_emulator_command, run_emulator_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = Parser(  # its subcommands' parsers are Parsers too
        prog="runflow-async",
        description="Runflow FLUX.2 [klein] 9B from the command line.",
        epilog="exit status: 0 done, 1 items failed or unfinished (or declined), "
        "2 bad usage or input (nothing sent), 130 interrupted",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_verbose(parser, top=True)
    # Parsers made by `sub` are Parsers; the commands only need ArgumentParser's API.
    sub: argparse._SubParsersAction[argparse.ArgumentParser]
    sub = parser.add_subparsers(dest="command", required=True)  # type: ignore[assignment]

    demo = sub.add_parser("demo", help="generate a few images on the embedded emulator")
    demo.add_argument("--out", type=Path, default=Path("runflow-demo"), help="output folder")
    demo.add_argument("--count", type=int, default=4, help="how many images (1-100)")

    add_dataset_commands(sub)
    add_preview_command(sub)

    add_emulator_command(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter  # defaults in every command's --help
        add_verbose(command, top=False)
    return parser


def _money(value: Decimal) -> str:
    return f"${value:.6f}"


def _demo(args: argparse.Namespace) -> int:
    from runflow_async._dataset.demo import run_demo

    if not 1 <= args.count <= 100:
        print("runflow-async demo: --count must be between 1 and 100", file=sys.stderr)
        return EXIT_USAGE
    report = asyncio.run(run_demo(args.out, count=args.count))
    print(f"Emulator: {report.emulator_url} (in-process, stopped)")
    for f in report.files:
        print(f"  {f.path}  {f.size} bytes  sha256 {f.sha256[:12]}")
    assert report.summary is not None  # noqa: S101 - set by run_demo
    print(f"Items: {report.summary.succeeded}/{report.summary.total}  images: {len(report.files)}")
    print(f"Manifest: {report.out_dir / 'metadata.jsonl'}")
    print(f"Estimated cost: {_money(report.estimated_usd)}")
    print(f"Billed cost:    {_money(report.billed_usd)}")
    assert report.preview is not None  # noqa: S101 - set by run_demo
    print(f"Contact sheet: {report.preview.sheet}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the dataset card
    if args.command in {"demo", "generate", "edit"} and (problem := out_problem(args.out)):
        print(f"runflow-async {args.command}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    keys = (getattr(args, "api_key", None) or "", os.environ.get(ENV_API_KEY, ""))
    try:
        with verbose(args.verbose, keys):
            return _dispatch(args)
    except KeyboardInterrupt:
        # Outside a run (a run stops itself on Ctrl-C and says what it left):
        # at the confirmation, or while the input is read or estimated.
        print(f"runflow-async {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return _demo(args)
    if args.command == "preview":
        return run_preview(args)
    if args.command == "emulator":
        return run_emulator_command(args)
    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

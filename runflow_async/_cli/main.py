"""The ``runflow-async`` command. The only module that prints."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from runflow_async._cli.dataset import add_dataset_commands, run_command
from runflow_async._version import __version__
from runflow_async.emulator._cli import add_emulator_command, run_emulator_command

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

    add_dataset_commands(sub)

    add_emulator_command(sub)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "emulator":
        return run_emulator_command(args)
    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

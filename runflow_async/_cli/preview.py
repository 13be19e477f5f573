"""``runflow-async preview DIR``: a contact sheet and a gallery of a dataset folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runflow_async._cli.options import EXIT_USAGE, positive_int
from runflow_async._dataset.listing import NotADatasetError

__all__ = ["add_preview_command", "run_preview"]

MAX_COUNT = 1000


def add_preview_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``preview`` to the parser."""
    cmd = sub.add_parser(
        "preview",
        help="write DIR/.preview/contact-sheet.png and index.html (needs Pillow)",
        description="A contact sheet (the first images with their prompts) and an index.html "
        "gallery that opens from disk, in DIR/.preview/. Exit 2: DIR is not a dataset folder, "
        "has no images, or Pillow is missing.",
    )
    cmd.add_argument("out", type=Path, metavar="DIR")
    cmd.add_argument("--count", type=positive_int, default=24, help=f"images (1-{MAX_COUNT})")
    cmd.add_argument("--columns", type=positive_int, default=6, help="columns of the sheet")


def run_preview(args: argparse.Namespace) -> int:
    """Write the preview; print where; 2 for a folder that is not a dataset or no Pillow."""
    from runflow_async._dataset.preview import PillowMissingError, write_preview

    if args.count > MAX_COUNT:
        print(f"runflow-async preview: --count must be at most {MAX_COUNT}", file=sys.stderr)
        return EXIT_USAGE
    try:
        made = write_preview(args.out, count=args.count, columns=args.columns)
    except (NotADatasetError, PillowMissingError) as exc:
        print(f"runflow-async preview: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"Contact sheet: {made.sheet} ({made.images} images, {made.columns}x{made.rows})")
    print(f"Gallery:       {made.html}")
    return 0

"""What every command shares: help that shows defaults, ``-v`` logging, the ``--out`` check."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import ssl
import sys
from collections.abc import Iterable, Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import NoReturn

from runflow_async._core.requests import CUSTOM_SIZE_MAX, CUSTOM_SIZE_MIN
from runflow_async._pricing import PRESET_SIZES

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "IMAGE_SIZE_HELP",
    "HelpFormatter",
    "Parser",
    "add_verbose",
    "amount",
    "ca_file",
    "out_problem",
    "positive_int",
    "time_scale",
    "verbose",
]

IMAGE_SIZE_HELP = (
    "a preset ("
    + ", ".join(f"{name} {w}x{h}" for name, (w, h) in PRESET_SIZES.items())
    + f") or WxH, {CUSTOM_SIZE_MIN}-{CUSTOM_SIZE_MAX} a side; default: the model's "
    "(landscape_4_3 for generate; an edit follows its first input)"
)
"""``--image-size``: every preset with its pixel size."""

EXIT_USAGE = 2
"""Bad usage or input, found before anything was sent (argparse uses it too)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT, as shells report it)."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and exit with :data:`EXIT_USAGE`."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: ...)`` after each option's help, unless there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == []
        if unset or action.required or "default" in text.lower():
            return text  # nothing to show, or the help already says it
        return super()._get_help_string(action)


def amount(text: str) -> Decimal:
    """``--max-cost``: a finite amount of USD above 0."""
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}") from exc
    if not value.is_finite() or value <= 0:  # NaN would not even compare
        raise argparse.ArgumentTypeError(f"must be an amount above 0: {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (``--concurrency``)."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def time_scale(text: str) -> float:
    """A finite number above 0 (``--time-scale``)."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number above 0: {text!r}")
    return value


def ca_file(text: str) -> ssl.SSLContext:
    """A PEM file of CAs to trust besides the system's (``--ca-file``): a verifying context."""
    context = ssl.create_default_context()  # the system's CAs, verifying host names
    try:
        context.load_verify_locations(cafile=text)
    except FileNotFoundError as exc:
        raise argparse.ArgumentTypeError(f"no such file: {text!r}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise argparse.ArgumentTypeError(f"not a PEM file of certificates: {text!r}") from exc
    return context


def add_verbose(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v``/``--verbose``: the library's log on stderr (INFO, or DEBUG with ``-vv``)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        # A subcommand sets none: it would overwrite a `-v` given before its name.
        default=None if top else argparse.SUPPRESS,
        help="log what the library does to stderr (-vv: debug detail)",
    )


class _Redact(logging.Filter):
    """Blanks the API key out of a record, should any ever carry it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self._secrets):
            for secret in self._secrets:
                message = message.replace(secret, "[redacted]")
            record.msg, record.args = message, None
        return True


@contextlib.contextmanager
def verbose(level: int | None, secrets: Iterable[str]) -> Iterator[None]:
    """Log the ``runflow_async`` logger to stderr for ``-v`` (INFO) or ``-vv`` (DEBUG)."""
    if not level:
        yield
        return
    logger = logging.getLogger("runflow_async")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redact(secrets))
    old = logger.level
    logger.setLevel(logging.INFO if level == 1 else logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def out_problem(out: Path) -> str | None:
    """Why ``out`` cannot be the output folder (None: it is, or can be made, one).

    Nothing is created: the folder (or the nearest folder above it that exists)
    must be a folder this process may write into.
    """
    target = out
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        where = "" if target == out else f" ({target} is a file)"
        return f"--out {out} is not a folder{where}"
    if not os.access(target, os.W_OK | os.X_OK):
        where = "" if target == out else f" (cannot create it in {target})"
        return f"--out {out} is not a writable folder{where}"
    return None

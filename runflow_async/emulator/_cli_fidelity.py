"""The emulator command's fidelity switches: where the API is unknown or has changed.

Each flag picks one reading of the API; README.md ("The emulator's switches") says
which behaviour is documented and which is an assumption.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from runflow_async.emulator._config import ASSET_REF_MODES, FAILURE_SHAPES

__all__ = ["add_fidelity_flags", "fidelity_options"]


def _anchor(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    if moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"give a UTC offset, e.g. {text}+00:00")
    return moment


def add_fidelity_flags(emu: argparse.ArgumentParser) -> None:
    """Add the fidelity switches to the ``emulator`` command."""
    group = emu.add_argument_group("fidelity switches (README: the emulator's switches)")
    group.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a certificate made at start-up; prints the CA file to trust",
    )
    group.add_argument(
        "--clock-anchor",
        type=_anchor,
        default=None,
        metavar="ISO_TIME",
        help="wall time of the emulated start, e.g. 2026-01-01T00:00:00+00:00 (default: now)",
    )
    group.add_argument(
        "--reject-unknown-input-fields",
        action="store_true",
        help="answer 422 to input fields the model page does not list (default: accept them)",
    )
    group.add_argument(
        "--failure-shape",
        choices=FAILURE_SHAPES,
        default="documented",
        help="failed runs carry failure_code/failure_message (documented), also the older "
        "error {message, code} (both), or only error",
    )
    group.add_argument(
        "--asset-refs",
        choices=ASSET_REF_MODES,
        default="resolve",
        help="runflow://assets/{id} in image_urls: resolve to an uploaded asset, or refuse (422)",
    )
    group.add_argument(
        "--data-uri-max-bytes",
        type=int,
        default=1_048_576,
        help="largest decoded data: image accepted in image_urls (default 1 MiB; 0 refuses all)",
    )


def fidelity_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return the ``EmulatorConfig`` fields the fidelity flags set."""
    return {
        "tls": args.tls,
        "clock_anchor": args.clock_anchor,
        "reject_unknown_input_fields": args.reject_unknown_input_fields,
        "failure_shape": args.failure_shape,
        "asset_refs": args.asset_refs,
        "data_uri_max_bytes": args.data_uri_max_bytes,
    }

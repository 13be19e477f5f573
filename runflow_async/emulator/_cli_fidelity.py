"""The emulator command's fidelity switches: where the API is unknown or has changed.

Each flag picks one reading of the API; README.md ("The emulator's switches") says
which behaviour is documented and which is an assumption.
"""

from __future__ import annotations

import argparse
from typing import Any

from runflow_async.emulator._config import ASSET_REF_MODES

__all__ = ["add_fidelity_flags", "fidelity_options"]


def add_fidelity_flags(emu: argparse.ArgumentParser) -> None:
    """Add the fidelity switches to the ``emulator`` command."""
    group = emu.add_argument_group("fidelity switches (README: the emulator's switches)")
    group.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a certificate made at start-up; prints the CA file to trust",
    )
    group.add_argument(
        "--reject-unknown-input-fields",
        action="store_true",
        help="answer 422 to input fields the model page does not list (default: accept them)",
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
        "reject_unknown_input_fields": args.reject_unknown_input_fields,
        "asset_refs": args.asset_refs,
        "data_uri_max_bytes": args.data_uri_max_bytes,
    }

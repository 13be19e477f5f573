"""The emulator command's fidelity switches: where the API is unknown or has changed.

Each flag picks one reading of the API; README.md ("The emulator's switches") says
which behaviour is documented and which is an assumption.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_fidelity_flags", "fidelity_options"]


def add_fidelity_flags(emu: argparse.ArgumentParser) -> None:
    """Add the fidelity switches to the ``emulator`` command."""
    group = emu.add_argument_group("fidelity switches (README: the emulator's switches)")
    group.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a certificate made at start-up; prints the CA file to trust",
    )


def fidelity_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return the ``EmulatorConfig`` fields the fidelity flags set."""
    return {
        "tls": args.tls,
    }

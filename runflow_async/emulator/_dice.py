"""The seeded dice: one draw per request (``FaultDice``) or delivery (``CallbackDice``).

A draw falls on the edges of the primary rates in a fixed order (429, 5xx, drop,
lost create, slow, late commit, then the create, read or download faults of the route,
the kinds added later after the older ones), so adding a
new rate at the end leaves every existing seed's sequence as it was.
"""

from __future__ import annotations

import random

from runflow_async.emulator._config import (
    CREATE_ROUTES,
    DOWNLOAD_ROUTES,
    CallbackFaults,
    FaultRates,
)
from runflow_async.emulator._faults import Fault

__all__ = ["CallbackDice", "FaultDice"]


class FaultDice:
    """Seeded random faults: one draw per request of an applicable route."""

    __slots__ = ("_rates", "_rng")

    def __init__(self, rates: FaultRates, seed: int) -> None:
        self._rates = rates
        self._rng = random.Random(f"runflow-emulator-faults:{seed}")

    def roll(self, route: str) -> Fault | None:
        """Draw the fault (or none) for one request of ``route``."""
        rates = self._rates
        if route not in rates.applies_to or rates.total == 0:
            return None
        draw = self._rng.random()
        if draw < (edge := rates.rate_429):
            if not rates.applies("429", route):
                return None
            without = self._rng.random() < rates.rate_429_without_retry_after
            after = None if without else rates.retry_after_seconds
            return Fault.status(429, retry_after=after)
        if draw < (edge := edge + rates.rate_5xx):
            if not rates.applies("5xx", route):
                return None
            if self._rng.random() < rates.rate_5xx_html:
                return Fault.status(502, html=True)
            return Fault.status(503)
        if draw < (edge := edge + rates.rate_drop):
            return Fault.drop() if rates.applies("drop", route) else None
        if draw < (edge := edge + rates.rate_lost_create):
            return Fault.lost_response() if route in CREATE_ROUTES else None
        if draw < (edge := edge + rates.rate_slow):
            return Fault.slow(rates.slow_seconds) if rates.applies("slow", route) else None
        if draw < (edge := edge + rates.rate_late_commit):
            seconds = rates.late_commit_seconds
            return Fault.late_commit(seconds) if route in CREATE_ROUTES else None
        if route in CREATE_ROUTES:
            return _create_fault(rates, draw - edge)
        if route in DOWNLOAD_ROUTES:
            return _download_fault(rates, draw - edge)
        return _read_fault(rates, route, draw - edge)


def _create_fault(rates: FaultRates, draw: float) -> Fault | None:
    """The later create faults: the previous create's run id, a malformed answer."""
    if draw < (edge := rates.rate_reused_run_id):
        return Fault.reused_run_id()
    if draw < edge + rates.rate_malformed:
        return Fault.malformed()
    return None


_READS = frozenset({"get_run", "list_runs"})


def _read_fault(rates: FaultRates, route: str, draw: float) -> Fault | None:
    """The faults of status reads, drawn after the others (same draw, further edges)."""
    if route not in _READS:
        return None
    if draw < (edge := rates.rate_html_ok):
        return Fault.html_ok()
    if draw < (edge := edge + rates.rate_null_output):
        return Fault.null_output()
    if draw < (edge := edge + rates.rate_not_found):
        return Fault.status(404) if route == "get_run" else None
    if draw < (edge := edge + rates.rate_oversized):
        return Fault.oversized(rates.oversized_bytes, chunked=draw * 1e6 % 2 < 1)
    if draw < edge + rates.rate_malformed:
        return Fault.malformed()
    return None


def _download_fault(rates: FaultRates, draw: float) -> Fault | None:
    """The download fault of a draw past the other kinds' share, if any."""
    if draw < (edge := rates.rate_not_image):
        return Fault.not_image()
    if draw < (edge := edge + rates.rate_oversized_image):
        return Fault.oversized_image(rates.oversized_image_bytes)
    if draw < edge + rates.rate_download_404:
        return Fault.status(404, "FILE_NOT_FOUND")
    return None


class CallbackDice:
    """Seeded random callback faults: one draw per automatic delivery."""

    __slots__ = ("_rates", "_rng")

    def __init__(self, rates: CallbackFaults, seed: int) -> None:
        self._rates = rates
        self._rng = random.Random(f"runflow-emulator-callback-faults:{seed}")

    def roll(self) -> Fault | None:
        """Draw the fault (or none) for one delivery."""
        rates = self._rates
        if rates.total == 0:
            return None
        draw = self._rng.random()
        if draw < (edge := rates.rate_drop):
            return Fault.drop()
        if draw < (edge := edge + rates.rate_duplicate):
            return Fault.duplicate()
        if draw < (edge := edge + rates.rate_slow):
            return Fault.slow(rates.slow_seconds)
        if draw < edge + rates.rate_reorder:
            return Fault.reorder(rates.reorder_hold_seconds)
        return None

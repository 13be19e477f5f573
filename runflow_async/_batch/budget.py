"""The batch's money: reserve an estimate at submit, settle with the server's ``cost``.

The cap must hold even when Runflow bills more than we estimated (its megapixel
rules are undocumented). So every reservation is scaled by a *billing factor*,
and a run is started only if spent + scaled reservations + its own scaled
estimate stay within the cap:

* until a run has settled with a cost we can trust, the factor is only a guess
  (``initial_margin``), so at most ``probe_runs`` runs are in flight: the probe;
* a settlement calibrates it: the largest billed/estimated ratio seen (never
  below 1), times ``margin``;
* a settlement billed above its reservation (its estimate at the factor of the
  latest admission) recalibrates it and pauses admission until every run in
  flight has settled (they were admitted on the same wrong factor);
* a run whose cost is unknown or untrusted (``None``, negative) keeps its
  reservation, held for good: nothing the API reports lowers spending.

The guarantee this gives (``Settlement``, ``Recalibration`` tell when it was
broken): the API's total bill stays within the cap provided the probe runs'
bills fit in it and no later run bills more than the factor in force when it
was admitted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from decimal import Decimal

from runflow_async._batch.observe import BatchEvent

__all__ = ["BudgetLedger", "Recalibration", "Settlement", "recalibrated"]

logger = logging.getLogger("runflow_async")


@dataclass(frozen=True, slots=True)
class Recalibration:
    """A settlement billed more than its reservation, so the factor was raised.

    Attributes:
        previous_factor: The factor the run was admitted on.
        factor: The factor from now on.
        estimated_usd: The run's estimate.
        billed_usd: What it was billed.
        paused: Whether admission waits for runs in flight to settle first.
    """

    previous_factor: Decimal
    factor: Decimal
    estimated_usd: Decimal
    billed_usd: Decimal
    paused: bool


@dataclass(frozen=True, slots=True)
class Settlement:
    """What :meth:`BudgetLedger.settle` did.

    Attributes:
        billed_usd: The bill counted as spent, or ``None`` when the cost was
            unknown or untrusted (its reservation is then held).
        recalibration: Set when the bill exceeded the reservation.
    """

    billed_usd: Decimal | None
    recalibration: Recalibration | None = None


class BudgetLedger:
    """Spent and reserved money of one batch.

    Args:
        cap: ``max_cost_usd``, or ``None`` for no cap (everything is still
            tracked; no probe, no pause).
        initial_margin: Billing factor assumed before any run has settled.
        margin: Multiplies the largest billed/estimated ratio seen.
        probe_runs: Runs in flight at most while no run has settled.
    """

    def __init__(
        self,
        cap: Decimal | None,
        *,
        initial_margin: Decimal = Decimal("1.5"),
        margin: Decimal = Decimal("1.25"),
        probe_runs: int = 1,
    ) -> None:
        self.cap = cap
        self.spent = Decimal(0)
        self.reserved = Decimal(0)
        self.held = Decimal(0)
        self.estimated_total = Decimal(0)
        self.in_flight = 0
        self._factor = self._admitted_at = initial_margin
        self._margin = margin
        self._probe_runs = probe_runs
        self._observed: Decimal | None = None
        self._paused = False
        self._changed = asyncio.Event()  # anyio's looks the backend up each time

    @property
    def factor(self) -> Decimal:
        """The multiplier applied to reservations now."""
        return self._factor

    @property
    def calibrated(self) -> bool:
        """Whether a settlement has measured the billing factor."""
        return self._observed is not None

    @property
    def committed(self) -> Decimal:
        """Spent, plus reserved and held at the current factor."""
        return self.spent + (self.reserved + self.held) * self._factor

    def fits(self, estimate: Decimal) -> bool:
        """Whether ``estimate`` could start now without risking the cap."""
        if self.cap is None:
            return True
        if self._paused or (not self.calibrated and self.in_flight >= self._probe_runs):
            return False
        return self.committed + estimate * self._factor <= self.cap

    def try_reserve(self, estimate: Decimal) -> bool:
        """Reserve ``estimate`` if it fits now; return whether it did."""
        if not self.fits(estimate):
            return False
        self._admitted_at = self._factor
        self.reserve_unchecked(estimate)
        return True

    def reserve_unchecked(self, estimate: Decimal) -> None:
        """Reserve for a run that exists already (it bills whatever the cap says)."""
        self.reserved += estimate
        self.estimated_total += estimate
        self.in_flight += 1

    def add_spent(self, amount: Decimal) -> None:
        """Count money spent outside a reservation (earlier runs, a canceled run's bill).

        A negative amount is ignored: nothing the API reports lowers spending.
        """
        if amount <= 0:
            return
        self.spent += amount
        self._notify()

    async def reserve(self, estimate: Decimal) -> bool:
        """Reserve ``estimate``, waiting while runs in flight may settle or calibrate.

        Returns ``False`` only when it cannot fit and nothing in flight could
        free room (held reservations of timed-out runs never do).
        """
        while not self.try_reserve(estimate):
            if self.in_flight <= 0:
                return False
            await self._changed.wait()
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()  # anyio's looks the backend up each time

    def _land(self, estimate: Decimal) -> None:
        """A run in flight is over (settled, released or held)."""
        self.reserved -= estimate
        self.in_flight -= 1
        if self._paused and self.in_flight <= 0:
            self._paused = False
            logger.info(
                "Every run in flight has settled; admitting again at factor %s.", self._factor
            )

    def settle(self, estimate: Decimal, billed: Decimal | None) -> Settlement:
        """Replace a reservation by what was billed.

        ``billed=None`` (the run finished but its cost is unknown) or a
        negative or non-finite ``billed`` keeps the reservation, held: no bill
        lowers spending, and it does not calibrate the factor.
        """
        self._land(estimate)
        if billed is None or not billed.is_finite() or billed < 0:
            logger.warning(
                "The API reported no usable cost (%s) for a run estimated at $%s; "
                "its reservation stays held.",
                billed,
                estimate,
            )
            self.held += estimate
            self._notify()
            return Settlement(None)
        self.spent += billed
        reserved_at = self._admitted_at
        if estimate > 0:
            ratio = billed / estimate
            self._observed = ratio if self._observed is None else max(self._observed, ratio)
            self._factor = max(Decimal(1), self._observed) * self._margin
        recalibration = None
        if self.cap is not None and billed > estimate * reserved_at:
            self._paused = self.in_flight > 0
            recalibration = Recalibration(reserved_at, self._factor, estimate, billed, self._paused)
        self._notify()
        return Settlement(billed, recalibration)

    def release(self, estimate: Decimal) -> None:
        """Drop a reservation that will never be billed (a failed run is not billed)."""
        self._land(estimate)
        self._notify()

    def hold(self, estimate: Decimal) -> None:
        """Keep a reservation for a run whose bill may never be seen (timed out, abandoned)."""
        self._land(estimate)
        self.held += estimate
        self._notify()


def recalibrated(index: int, run_id: str, change: Recalibration) -> BatchEvent:
    """Say (a warning) that run ``run_id`` billed over its reservation; its event."""
    ratio = change.billed_usd / change.estimated_usd if change.estimated_usd else None
    logger.warning(
        "Run %s billed $%s, %sx its estimate of $%s, over the %sx reserved: the billing "
        "factor is now %s%s.",
        run_id,
        change.billed_usd,
        "?" if ratio is None else f"{ratio:.3g}",
        change.estimated_usd,
        change.previous_factor,
        change.factor,
        "; no new run starts until the runs in flight have settled" if change.paused else "",
    )
    return BatchEvent(
        "budget_recalibrated",
        index=index,
        run_id=run_id,
        estimated_usd=change.estimated_usd,
        billed_usd=change.billed_usd,
        previous_factor=change.previous_factor,
        factor=change.factor,
    )

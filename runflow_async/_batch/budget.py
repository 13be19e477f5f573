"""The batch's money: reserve an estimate at submit, settle with the server's ``cost``.

The cap must hold even when Runflow bills more than we estimated (its megapixel
rules are undocumented). So every reservation is scaled by a *billing factor*:
``initial_margin`` until the first run settles, then the largest billed/estimated
ratio seen (never below 1). A run is started only if spent + scaled reservations
+ its own scaled estimate stay within the cap.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import anyio

__all__ = ["BudgetLedger"]

logger = logging.getLogger("runflow_async")


class BudgetLedger:
    """Spent and reserved money of one batch.

    Args:
        cap: ``max_cost_usd``, or ``None`` for no cap (everything is still tracked).
        initial_margin: Billing factor assumed before any run has settled.
    """

    def __init__(self, cap: Decimal | None, *, initial_margin: Decimal = Decimal("1.5")) -> None:
        self.cap = cap
        self.spent = Decimal(0)
        self.reserved = Decimal(0)
        self.held = Decimal(0)
        self.estimated_total = Decimal(0)
        self._factor = initial_margin
        self._observed: Decimal | None = None
        self._changed = anyio.Event()

    @property
    def factor(self) -> Decimal:
        """The multiplier applied to reservations now."""
        return self._factor

    @property
    def committed(self) -> Decimal:
        """Spent, plus reserved and held at the current factor."""
        return self.spent + (self.reserved + self.held) * self._factor

    def fits(self, estimate: Decimal) -> bool:
        """Whether ``estimate`` could start now without risking the cap."""
        if self.cap is None:
            return True
        return self.committed + estimate * self._factor <= self.cap

    def try_reserve(self, estimate: Decimal) -> bool:
        """Reserve ``estimate`` if it fits now; return whether it did."""
        if not self.fits(estimate):
            return False
        self.reserved += estimate
        self.estimated_total += estimate
        return True

    def reserve_unchecked(self, estimate: Decimal) -> None:
        """Reserve for a run that exists already (it bills whatever the cap says)."""
        self.reserved += estimate
        self.estimated_total += estimate

    def add_spent(self, amount: Decimal) -> None:
        """Count money spent outside a reservation (earlier runs, a canceled run's bill).

        A negative amount is ignored: nothing the API reports lowers spending.
        """
        if amount <= 0:
            return
        self.spent += amount
        self._notify()

    async def reserve(self, estimate: Decimal) -> bool:
        """Reserve ``estimate``, waiting while runs in flight may still settle cheaper.

        Returns ``False`` only when it cannot fit and nothing in flight could
        free room (held reservations of timed-out runs never do).
        """
        while not self.try_reserve(estimate):
            if self.reserved <= 0:
                return False
            await self._changed.wait()
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def settle(self, estimate: Decimal, billed: Decimal | None) -> Decimal:
        """Replace a reservation by what was billed; return the amount counted as spent.

        ``billed=None`` (the run finished but its cost is unknown) or a
        negative ``billed`` (no bill lowers spending) counts the scaled
        estimate as spent, to stay on the safe side.
        """
        self.reserved -= estimate
        if billed is not None and billed < 0:
            logger.warning(
                "The API reported a negative cost (%s); counting the estimate instead.", billed
            )
            billed = None
        if billed is None:
            billed = estimate * self._factor
        elif estimate > 0:
            ratio = billed / estimate
            self._observed = ratio if self._observed is None else max(self._observed, ratio)
            self._factor = max(Decimal(1), self._observed)
        self.spent += billed
        self._notify()
        return billed

    def release(self, estimate: Decimal) -> None:
        """Drop a reservation that will never be billed (a failed run is not billed)."""
        self.reserved -= estimate
        self._notify()

    def hold(self, estimate: Decimal) -> None:
        """Keep a reservation for a run whose bill may never be seen (timed out, abandoned)."""
        self.reserved -= estimate
        self.held += estimate
        self._notify()

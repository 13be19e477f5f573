"""Runs whose cost the server did not report: counted as reserved, and read again later.

The engine's ledger holds a run of unknown cost at its estimate times the
billing factor it was admitted on, for good: nothing it cannot see lowers
spending. A dataset keeps that amount in the journal (``reserved_usd``), so a
resumed run counts it against ``--max-cost`` as well, instead of $0. Servers
may report a cost late: each run starts by reading those runs again
(:func:`refresh_unknown_costs`) and records every cost now reported, the
manifest rows with it.
"""

from __future__ import annotations

import json
import logging
from decimal import ROUND_UP, Decimal
from typing import TYPE_CHECKING

import anyio

from runflow_async._core.errors import APIError
from runflow_async._dataset.journal import ItemState, Journal, JournalItem
from runflow_async._dataset.outputs import split_cost

if TYPE_CHECKING:
    from runflow_async._client.client import RunflowClient

__all__ = ["as_reserved", "refresh_unknown_costs", "usable_cost"]

logger = logging.getLogger("runflow_async")

_NANO = Decimal("0.000000001")


def as_reserved(estimate: Decimal, factor: Decimal) -> Decimal:
    """What a run of unknown cost counts as: its estimate at the billing factor, rounded up."""
    return (estimate * factor).quantize(_NANO, rounding=ROUND_UP)


def usable_cost(cost: Decimal | None) -> Decimal | None:
    """``cost`` if it can be trusted as a bill (finite, not negative), else ``None``."""
    return cost if cost is not None and cost.is_finite() and cost >= 0 else None


async def refresh_unknown_costs(
    client: RunflowClient, journal: Journal, limiter: anyio.CapacityLimiter
) -> int:
    """Read again the succeeded runs of unknown cost; record each cost now reported.

    A read that fails, or still shows no usable cost, leaves the run as it
    was (counted as reserved). Returns how many costs were recorded.
    """
    unknown = [
        entry
        for entry in journal.iter_items(states=(ItemState.SUCCEEDED,))
        if entry.cost_unknown and entry.run_id is not None
    ]
    found: list[tuple[JournalItem, Decimal]] = []

    async def read(entry: JournalItem) -> None:
        assert entry.run_id is not None  # noqa: S101 - filtered above
        async with limiter:
            try:
                run = await client.get_run(entry.run_id)
            except APIError as exc:
                logger.info("run %s: its cost could not be read again: %s", entry.run_id, exc)
                return
        cost = usable_cost(run.cost)
        if cost is not None:
            found.append((entry, cost))

    async with anyio.create_task_group() as tg:
        for entry in unknown:
            tg.start_soon(read, entry)
    for entry, cost in found:
        journal.record_cost(entry.key, cost_usd=cost, files=_with_cost(entry.files, cost))
    if found:
        logger.info("%d run(s) of unknown cost now report their cost", len(found))
    return len(found)


def _with_cost(files: tuple[str, ...], cost: Decimal) -> list[str]:
    """The item's manifest rows with ``cost`` split over them (no estimate left)."""
    rows = [json.loads(line) for line in files]
    for row, share in zip(rows, split_cost(cost, max(1, len(rows))), strict=False):
        row["cost_usd"] = None if share is None else str(share)
        row["cost_estimated_usd"] = None
    return [json.dumps(row, sort_keys=True) for row in rows]

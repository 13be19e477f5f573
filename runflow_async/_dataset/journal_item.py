"""What the journal records per item: its state, and the money it counts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from enum import StrEnum
from typing import Any

__all__ = ["ItemState", "JournalItem", "item_from_row", "summarize_items"]


class ItemState(StrEnum):
    """Where an item stands."""

    PENDING = "pending"
    """Never sent."""
    SUBMITTING = "submitting"
    """A create is (or was) under way: a run may exist under the item's ``client_ref``."""
    CREATED = "created"
    """A run exists (``run_id``); it may not have finished."""
    SUCCEEDED = "succeeded"
    """Done, images saved."""
    FAILED = "failed"
    """Done without images."""
    NOT_SUBMITTED = "not_submitted"
    """Held back (budget, credit, stop); a re-run submits it."""


@dataclass(frozen=True, slots=True)
class JournalItem:
    """One item as the journal records it.

    Attributes:
        key: The item's stable key.
        ordinal: Its position in the input file.
        kind: ``"generate"`` or ``"edit"``.
        state: Where it stands.
        client_ref: Sent with its create; set once, kept for every later attempt.
        run_id: Its run, once created.
        estimate_usd: What it was estimated to cost.
        cost_usd: What its current run cost, once known.
        error_type: The error class name of a failure.
        error: Why it failed, or why it was not submitted.
        files: What the pipeline recorded on success (e.g. one JSON row per image).
        attempts: How many creates were started.
        updated_at: UTC ISO 8601 time of the last change.
        prior_cost_usd: What runs before a :meth:`Journal.reset_for_retry` cost.
        retries: How many failed runs :meth:`Journal.reset_for_retry` set aside;
            each retry creates under a new ``client_ref`` derived from it.
        reserved_usd: For a succeeded run whose cost is unknown: the estimate
            at the billing factor it was reserved at (what it counts as).
        batch_id: The batch its run was created in (``create_via``), if any.
        shard: The shard (subfolder, tar or Parquet file) holding its images, if any.
    """

    key: str
    ordinal: int
    kind: str
    state: ItemState
    client_ref: str | None
    run_id: str | None
    estimate_usd: Decimal | None
    cost_usd: Decimal | None
    error_type: str | None
    error: str | None
    files: tuple[str, ...]
    attempts: int
    updated_at: str
    prior_cost_usd: Decimal
    retries: int
    reserved_usd: Decimal | None = None
    batch_id: str | None = None
    shard: int | None = None

    @property
    def cost_unknown(self) -> bool:
        """Whether the run succeeded (so it was billed) with no cost known yet."""
        return self.state is ItemState.SUCCEEDED and self.cost_usd is None

    @property
    def spent_usd(self) -> Decimal:
        """What the item counts against a budget: known costs, else as it was reserved."""
        if self.cost_unknown:
            return self.prior_cost_usd + (self.reserved_usd or self.estimate_usd or Decimal(0))
        if self.state in (ItemState.SUCCEEDED, ItemState.FAILED):
            return self.prior_cost_usd + (self.cost_usd or Decimal(0))
        return self.prior_cost_usd


_FIELDS = [f.name for f in fields(JournalItem)]
_MONEY = frozenset({"estimate_usd", "cost_usd", "prior_cost_usd", "reserved_usd"})
_CONVERT = [
    (i, ItemState if name == "state" else Decimal)
    for i, name in enumerate(_FIELDS)
    if name == "state" or name in _MONEY
]
_FILES = _FIELDS.index("files")


def item_from_row(row: Sequence[Any]) -> JournalItem:
    """The item a row of the journal's ``SELECT`` of every field (in field order) holds."""
    values = list(row)  # in field order
    for i, convert in _CONVERT:
        if values[i] is not None:
            values[i] = convert(values[i])
    files = values[_FILES]
    values[_FILES] = () if files == "[]" else tuple(json.loads(files))
    return JournalItem(*values)


def summarize_items(items: Iterable[JournalItem]) -> dict[str, Any]:
    """Count ``items`` per state and add up the money (see :meth:`Journal.summary`)."""
    finished = (ItemState.SUCCEEDED, ItemState.FAILED)
    counts = dict.fromkeys(ItemState, 0)
    spent = estimated = unknown_usd = Decimal(0)
    unknown = 0
    for item in items:
        counts[item.state] += 1
        spent += item.spent_usd
        if item.cost_unknown:
            unknown += 1
            unknown_usd += item.spent_usd - item.prior_cost_usd
        elif item.state not in finished:
            estimated += item.estimate_usd or 0
    total = sum(counts.values())
    counts_out = {state.value: n for state, n in counts.items()}
    return {
        "total": total,
        "counts": counts_out,
        "spent_usd": spent,
        "unknown_cost_runs": unknown,
        "unknown_cost_usd": unknown_usd,
        "estimated_usd": estimated,
    }

"""Batches: one create of up to 100 runs, and its API views derived from its runs.

Follows https://docs.runflow.io/api-reference/batches (the OpenAPI reading of
``../shared/runflow-api.md`` §4). A batch is its child runs, which are ordinary
runs (``RunRecord.batch_id`` names their batch), plus one item per run; every
counter and status is derived from the runs at the time of the read:

* ``queued`` while no child has started ``running``, ``running`` once one has;
* once every child is terminal: ``succeeded`` (all succeeded), ``failed`` (none
  succeeded) or ``partial_succeeded`` (some of each). The emulator has no cancel,
  so ``cancelled`` (and ``items_cancelled`` above 0) never happens here.

``cost`` is the sum of what the children billed, shown once the batch is
terminal (``null`` before); ``output`` is then the callback's
``{items, succeeded, failed, cancelled, total}``. A batch is stored when its runs
are (a late commit stores them all at once): until then no read shows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from runflow_async.emulator._clock import EmulatedClock
from runflow_async.emulator._runs import RunRecord, UrlFor
from runflow_async.emulator._store import RunStore

if TYPE_CHECKING:
    from runflow_async.emulator._deliveries import Delivery

__all__ = [
    "BatchRecord",
    "BatchStore",
    "Tallies",
    "batch_payload",
    "full_item",
    "lean_item",
    "render_items",
]

_EVENTS = {
    "succeeded": "batch.succeeded",
    "partial_succeeded": "batch.partial_succeeded",
    "failed": "batch.failed",
    "cancelled": "batch.cancelled",
}


@dataclass(frozen=True, slots=True)
class Tallies:
    """Where a batch stands at one instant."""

    status: str
    succeeded: int
    failed: int
    cancelled: int
    total: int

    @property
    def done(self) -> bool:
        """Return whether every item is terminal."""
        return self.succeeded + self.failed + self.cancelled == self.total


@dataclass(slots=True, eq=False)
class BatchRecord:
    """A stored batch.

    Attributes:
        id: The batch id (a UUID string).
        model: Model slug, the batch's ``target_id``.
        org_id: UUID of the emulated organization.
        runs: Its child runs, in item order.
        item_ids: The id of each item, in the same order.
        metadata: Caller's metadata, echoed in the callback.
        callback_url: Where the batch's callback goes, if anywhere.
        created: Emulated creation time (its runs' commit time).
        request_id: ``X-Request-Id`` of the create.
        idempotency_key: The ``Idempotency-Key`` it was created with, if any.
        fingerprint: Digest of the create body, kept with its key.
        deliveries: Its callback deliveries, oldest first.
        item_refs: Each item's ``client_ref`` (its child run's too, unless
            ``EmulatorConfig.batch_child_refs`` is off).
    """

    id: str
    model: str
    org_id: str
    runs: list[RunRecord]
    item_ids: list[str]
    metadata: dict[str, Any] | None
    callback_url: str | None
    created: float
    request_id: str
    idempotency_key: str | None = None
    fingerprint: bytes = b""
    deliveries: list[Delivery] | None = None
    item_refs: list[str | None] | None = None

    def item_ref(self, index: int) -> str | None:
        """Item ``index``'s ``client_ref``: its own, whether or not its run carries it."""
        return (
            self.runs[index].request.client_ref if self.item_refs is None else self.item_refs[index]
        )

    @property
    def end(self) -> float:
        """Return the emulated time its last run ends."""
        return max(run.end for run in self.runs)

    @property
    def committed(self) -> bool:
        """Return whether its runs are stored (all are, or none: they commit together)."""
        return RunStore.committed(self.runs[-1])

    def tallies(self, now: float) -> Tallies:
        """Return the status and the item counts at ``now``."""
        succeeded = failed = 0
        started = False
        for run in self.runs:
            if now >= run.end:
                if run.failure is None:
                    succeeded += 1
                else:
                    failed += 1
            elif now >= run.started:
                started = True
        total = len(self.runs)
        if succeeded + failed == total:
            status = "failed" if succeeded == 0 else "succeeded"
            status = "partial_succeeded" if succeeded and failed else status
        else:
            status = "running" if started or succeeded + failed else "queued"
        return Tallies(status, succeeded, failed, 0, total)

    def lean_items(self, now: float) -> list[dict[str, Any]]:
        """Return the lean ``items[]`` of the batch object, in order."""
        return [lean_item(self, index, now) for index in range(len(self.runs))]

    def output(self, now: float, tallies: Tallies) -> dict[str, Any]:
        """Return ``{items, succeeded, failed, cancelled, total}`` (the callback's output)."""
        return {
            "items": self.lean_items(now),
            "succeeded": tallies.succeeded,
            "failed": tallies.failed,
            "cancelled": tallies.cancelled,
            "total": tallies.total,
        }

    def to_api(self, now: float) -> dict[str, Any]:
        """Return the batch object at ``now``, with live counters and lean items."""
        tallies = self.tallies(now)
        done = tallies.done
        starts = [run.started for run in self.runs if now >= run.started]
        end = self.end
        failed = tallies.status == "failed"
        return {
            "id": self.id,
            "org_id": self.org_id,
            "target_type": "model",
            "target_type_code": "model",
            "target_id": self.model,
            "status_code": tallies.status,
            "source_code": "api",
            "items_total": tallies.total,
            "items_succeeded": tallies.succeeded,
            "items_failed": tallies.failed,
            "items_cancelled": tallies.cancelled,
            "cost": str(self.cost()) if done else None,
            "output": self.output(now, tallies) if done else None,
            "metadata": self.metadata,
            "callback_url": self.callback_url,
            "duration_ms": round((end - self.created) * 1000) if done else None,
            "failure_code": "ALL_ITEMS_FAILED" if failed else None,
            "failure_message": f"All {tallies.total} items failed." if failed else None,
            "failure_stage_code": "execution" if failed else None,
            "request_id": self.request_id,
            "created_at": EmulatedClock.iso(self.created),
            "started_at": EmulatedClock.iso(min(starts)) if starts else None,
            "completed_at": EmulatedClock.iso(end) if done else None,
            "items": self.lean_items(now),
        }

    def to_guide(self, now: float) -> dict[str, Any]:
        """Return the guide's lean create answer ``{id, status_code, items_total}``."""
        return {
            "id": self.id,
            "status_code": self.tallies(now).status,
            "items_total": len(self.runs),
        }

    def cost(self) -> Decimal:
        """Return what its runs bill (the sum over those that succeed)."""
        return sum((run.cost for run in self.runs if run.failure is None), Decimal(0))


def lean_item(batch: BatchRecord, index: int, now: float) -> dict[str, Any]:
    """Return item ``index`` as the batch object's ``items[]`` shows it."""
    run = batch.runs[index]
    return {
        "id": batch.item_ids[index],
        "sequence_index": index,
        "run_id": run.id,
        "status_code": run.status(now),
        "client_ref": batch.item_ref(index),
    }


def full_item(batch: BatchRecord, index: int, view: dict[str, Any]) -> dict[str, Any]:
    """Return item ``index`` as the items endpoint shows it, ``view`` its run rendered now."""
    run = batch.runs[index]
    failure = view["failure_code"]
    error = None if failure is None else {"code": failure, "message": view["failure_message"]}
    return {
        "id": batch.item_ids[index],
        "batch_id": batch.id,
        "sequence_index": index,
        "run_id": run.id,
        "created_at": view["created_at"],
        "client_ref": batch.item_ref(index),
        "status_code": view["status_code"],
        "input": run.request.input,
        "cost": view["cost"],
        "output": view["output"],
        "error": error,
        "started_at": view["started_at"],
        "completed_at": view["completed_at"],
        "run": view,
    }


def batch_payload(batch: BatchRecord, now: float, *, with_output: bool = True) -> tuple[str, bytes]:
    """Return the event name and serialized body of a finished batch's callback.

    The run callback's envelope with ``batch_id`` for ``run_id``; ``output`` is
    ``{items, succeeded, failed, cancelled, total}`` (``null`` when ``with_output``
    is false, as a run's may be).
    """
    tallies = batch.tallies(now)
    event = _EVENTS[tallies.status]
    body = {
        "event": event,
        "batch_id": batch.id,
        "status": tallies.status,
        "output": batch.output(now, tallies) if with_output else None,
        "duration_ms": round((batch.end - batch.created) * 1000),
        "created_at": EmulatedClock.iso(batch.created),
        "completed_at": EmulatedClock.iso(batch.end),
        "metadata": batch.metadata,
    }
    return event, json.dumps(body, separators=(",", ":")).encode()


class BatchStore:
    """Every batch, by id and by ``Idempotency-Key``, and the batch counters.

    A batch received with a late commit waits in ``pending`` until its runs are
    stored; :meth:`settle` (after ``RunStore.settle``) then stores it.

    Attributes:
        by_id: Stored batches by id.
        items: ``(batch, index)`` of every stored item, by item id.
        idempotency: ``Idempotency-Key`` -> the first stored batch that carried it.
        pending_keys: ``Idempotency-Key`` -> a batch received but not stored yet.
        created: Batches stored.
        runs_created: Their child runs.
        last_id: Id of the batch the latest batch create made (``Fault.reused_run_id``).
    """

    __slots__ = (
        "by_id",
        "created",
        "idempotency",
        "items",
        "last_id",
        "pending",
        "pending_keys",
        "runs_created",
    )

    def __init__(self) -> None:
        self.by_id: dict[str, BatchRecord] = {}
        self.items: dict[str, tuple[BatchRecord, int]] = {}
        self.idempotency: dict[str, BatchRecord] = {}
        self.pending_keys: dict[str, BatchRecord] = {}
        self.pending: list[BatchRecord] = []
        self.created = 0
        self.runs_created = 0
        self.last_id: str | None = None

    def add(self, batch: BatchRecord) -> None:
        """Keep a batch just received: stored now if its runs are, else once they are."""
        self.last_id = batch.id
        if batch.committed:
            self._store(batch)
            return
        self.pending.append(batch)
        if batch.idempotency_key is not None:
            self.pending_keys.setdefault(batch.idempotency_key, batch)

    def settle(self) -> None:
        """Store the pending batches whose runs have been stored (call after the run store's)."""
        if not self.pending:
            return
        waiting = []
        for batch in self.pending:
            if batch.committed:
                self._store(batch)
            else:
                waiting.append(batch)
        self.pending = waiting

    def _store(self, batch: BatchRecord) -> None:
        self.by_id[batch.id] = batch
        for index, item_id in enumerate(batch.item_ids):
            self.items[item_id] = (batch, index)
        key = batch.idempotency_key
        if key is not None:
            self.idempotency.setdefault(key, batch)
            if self.pending_keys.get(key) is batch:
                del self.pending_keys[key]
        self.created += 1
        self.runs_created += len(batch.runs)

    def deliveries(self, batch: BatchRecord) -> list[dict[str, Any]]:
        """Return the batch's callback history, oldest first."""
        return [delivery.to_api() for delivery in batch.deliveries or ()]


def render_items(
    batch: BatchRecord, indexes: range, now: float, url_for: UrlFor
) -> list[dict[str, Any]]:
    """Return the items at ``indexes`` as the items endpoint shows them at ``now``."""
    return [full_item(batch, i, batch.runs[i].to_api(now, url_for)) for i in indexes]

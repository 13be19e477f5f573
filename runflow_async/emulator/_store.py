"""Run storage with the indexes and the settlement heap that keep every request cheap.

Runs are kept in insertion order (a list indexed by ``seq``) plus dicts by id and by
``client_ref``. A min-heap of terminal times settles runs lazily: whenever the
emulator looks at the time, runs that have ended are popped and billed (or counted
failed). The heap's length is then the exact number of runs in flight.
"""

from __future__ import annotations

import heapq
from decimal import Decimal

from runflow_async.emulator._runs import RunRecord

__all__ = ["RunStore"]


class RunStore:
    """Every run the emulator created, and the money and concurrency they add up to.

    Attributes:
        runs: Runs in creation order; ``runs[r.seq] is r``.
        by_id: Runs by id.
        by_client_ref: ``seq`` of the run carrying each ``client_ref``, or the ascending
            list of them when several do (one int per run keeps a million runs small).
        idempotency: ``Idempotency-Key`` -> (body fingerprint, ``seq`` of the run).
        runs_billed: Runs that have succeeded so far.
        billed_usd: Their total cost.
        runs_failed: Runs that have failed so far.
        max_in_flight: Highest number of runs in flight at once.
    """

    __slots__ = (
        "_pending",
        "billed_usd",
        "by_client_ref",
        "by_id",
        "idempotency",
        "max_in_flight",
        "runs",
        "runs_billed",
        "runs_failed",
    )

    def __init__(self) -> None:
        self.runs: list[RunRecord] = []
        self.by_id: dict[str, RunRecord] = {}
        self.by_client_ref: dict[str, int | list[int]] = {}
        self.idempotency: dict[str, tuple[bytes, int]] = {}
        self._pending: list[tuple[float, int]] = []
        self.runs_billed = 0
        self.billed_usd = Decimal(0)
        self.runs_failed = 0
        self.max_in_flight = 0

    def __len__(self) -> int:
        return len(self.runs)

    def add(self, run: RunRecord, now: float) -> None:
        """Store a run created at ``now`` and update the in-flight maximum."""
        self.settle(now)
        self.runs.append(run)
        self.by_id[run.id] = run
        client_ref = run.request.client_ref
        if client_ref is not None:
            seen = self.by_client_ref.get(client_ref)
            if seen is None:
                self.by_client_ref[client_ref] = run.seq
            elif isinstance(seen, int):
                self.by_client_ref[client_ref] = [seen, run.seq]
            else:
                seen.append(run.seq)
        heapq.heappush(self._pending, (run.end, run.seq))
        self.max_in_flight = max(self.max_in_flight, len(self._pending))

    def with_client_ref(self, client_ref: str) -> list[int]:
        """Return the ``seq`` of every run created with ``client_ref``, ascending."""
        seen = self.by_client_ref.get(client_ref)
        if seen is None:
            return []
        return [seen] if isinstance(seen, int) else seen

    def settle(self, now: float) -> None:
        """Bill or count as failed every run that has reached its terminal state by ``now``."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, seq = heapq.heappop(pending)
            run = self.runs[seq]
            if run.failure is None:
                self.runs_billed += 1
                self.billed_usd += run.cost
            else:
                self.runs_failed += 1

    def in_flight(self, now: float) -> int:
        """Return the number of runs created and not yet terminal at ``now``."""
        self.settle(now)
        return len(self._pending)

"""Run storage with the indexes and the settlement heap that keep every request cheap.

Runs are kept in creation order (parallel arrays of ``seq`` and run, so a cursor is
found by bisection) plus dicts by id, by ``client_ref`` and by ``Idempotency-Key``.
A min-heap of terminal times settles runs lazily: whenever the emulator looks at
the time, runs that have ended are popped and billed (or counted failed). The
heap's length is then the exact number of runs in flight.

A create received now and stored later (a late commit) waits in a second heap,
by its commit time: the same lazy settling stores it first (with that time as
its creation time, so lists and reads see it from then on), then bills.

With ``retain`` set, only the ``retain`` most recently ended runs are kept once
terminal; older ones are evicted from every index (their slot becomes a hole,
and holes are compacted away once they outnumber the runs). The money and
concurrency tallies, and the ledger, are never touched by eviction.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from decimal import Decimal

from runflow_async.emulator._ledger import RunLedger
from runflow_async.emulator._runs import RunRecord

__all__ = ["RunStore"]

_MIN_COMPACTION = 1024  # holes tolerated before any compaction

OnCommit = Callable[[RunRecord], None]
"""Called with a late-committed run once it is stored."""


class RunStore:
    """Every run the emulator keeps, and the money and concurrency they add up to.

    Attributes:
        by_id: Runs by id.
        by_client_ref: The run carrying each ``client_ref``, or the list of them
            (oldest first) when several do.
        idempotency: ``Idempotency-Key`` -> (body fingerprint, the first stored run
            that carried it).
        pending_keys: ``Idempotency-Key`` -> (body fingerprint, the run) of creates
            received but not yet stored (late commits).
        ledger: A few bytes about every run ever created, evicted or not.
        created: Runs ever created.
        runs_billed: Runs that have succeeded so far.
        billed_usd: Their total cost.
        runs_failed: Runs that have failed so far.
        max_in_flight: Highest number of runs in flight at once.
        background_created: Of ``created``, runs of another client
            (``RunRecord.background``); the billing, failure and in-flight
            tallies above leave them out and count them below.
        background_billed: Those that have succeeded so far.
        background_billed_usd: Their total cost.
        background_failed: Those that have failed so far.
        client_ref_duplicates: Runs stored with a ``client_ref`` a kept run of
            ours already carried.
    """

    __slots__ = (
        "_background_pending",
        "_commits",
        "_ended",
        "_holes",
        "_order",
        "_pending",
        "_retain",
        "_runs",
        "_seqs",
        "background_billed",
        "background_billed_usd",
        "background_created",
        "background_failed",
        "billed_usd",
        "by_client_ref",
        "by_id",
        "client_ref_duplicates",
        "created",
        "idempotency",
        "ledger",
        "max_in_flight",
        "pending_keys",
        "runs_billed",
        "runs_failed",
    )

    def __init__(self, retain: int | None = None) -> None:
        self._retain = retain
        self._seqs = array("q")
        self._runs: list[RunRecord | None] = []
        self._holes = 0
        self._ended: deque[RunRecord] = deque()
        self._pending: list[tuple[float, int, RunRecord]] = []
        self.by_id: dict[str, RunRecord] = {}
        self.by_client_ref: dict[str, RunRecord | list[RunRecord]] = {}
        self.idempotency: dict[str, tuple[bytes, RunRecord]] = {}
        self.pending_keys: dict[str, tuple[bytes, RunRecord]] = {}
        self._commits: list[tuple[float, int, RunRecord, bytes, OnCommit | None]] = []
        self._order = itertools.count()
        self.ledger = RunLedger()
        self.created = 0
        self.runs_billed = 0
        self.billed_usd = Decimal(0)
        self.runs_failed = 0
        self.max_in_flight = 0
        self.background_created = 0
        self.background_billed = 0
        self.background_billed_usd = Decimal(0)
        self.background_failed = 0
        self.client_ref_duplicates = 0
        self._background_pending = 0

    def add(self, run: RunRecord, now: float, fingerprint: bytes = b"") -> None:
        """Store a run created at ``now`` (its ``seq`` is ``created``) and index it.

        Args:
            run: The new run.
            now: Emulated creation time.
            fingerprint: Digest of the create body, kept with ``run.idempotency_key``.
        """
        self.settle(now)
        self._insert(run, fingerprint)

    def defer(self, run: RunRecord, fingerprint: bytes, on_commit: OnCommit | None) -> None:
        """Keep a received create to store at ``run.created`` (a late commit).

        Args:
            run: The run, drawn now; ``created`` is its commit time, ``seq`` is
                -1 until it is stored.
            fingerprint: Digest of the create body, kept with its key.
            on_commit: Called with the run once stored.
        """
        entry = (run.created, next(self._order), run, fingerprint, on_commit)
        heapq.heappush(self._commits, entry)
        if run.idempotency_key is not None:
            self.pending_keys.setdefault(run.idempotency_key, (fingerprint, run))

    @property
    def commits_pending(self) -> int:
        """Return how many received creates are not stored yet."""
        return len(self._commits)

    @staticmethod
    def committed(run: RunRecord) -> bool:
        """Return whether ``run`` is stored (a deferred one has ``seq`` -1 until then)."""
        return run.seq >= 0

    def _insert(self, run: RunRecord, fingerprint: bytes) -> None:
        run.seq = self.created
        self.created += 1
        self._seqs.append(run.seq)
        self._runs.append(run)
        self.by_id[run.id] = run
        self.ledger.add(run)
        client_ref = run.request.client_ref
        if client_ref is not None:
            seen = self.by_client_ref.get(client_ref)
            if seen is None:
                self.by_client_ref[client_ref] = run
            else:
                self.client_ref_duplicates += not run.background
                if isinstance(seen, RunRecord):
                    self.by_client_ref[client_ref] = [seen, run]
                else:
                    seen.append(run)
        key = run.idempotency_key
        if key is not None:
            self.idempotency.setdefault(key, (fingerprint, run))
            if self.pending_keys.get(key, (b"", None))[1] is run:
                del self.pending_keys[key]
        heapq.heappush(self._pending, (run.end, run.seq, run))
        if run.background:
            self.background_created += 1
            self._background_pending += 1
        else:
            self.max_in_flight = max(self.max_in_flight, self._ours_pending)

    def with_client_ref(self, client_ref: str) -> list[RunRecord]:
        """Return every kept run created with ``client_ref``, oldest first."""
        seen = self.by_client_ref.get(client_ref)
        if seen is None:
            return []
        return [seen] if isinstance(seen, RunRecord) else seen

    def scan(self, start: int, step: int) -> Iterator[RunRecord]:
        """Yield kept runs from ``seq`` ``start`` (inclusive) on, ``step`` +1 or -1."""
        seqs, runs = self._seqs, self._runs
        if step > 0:
            positions = range(bisect_left(seqs, start), len(runs))
        else:
            positions = range(bisect_right(seqs, start) - 1, -1, -1)
        for position in positions:
            run = runs[position]
            if run is not None:
                yield run

    def settle(self, now: float) -> None:
        """Store the late commits due, then bill or count as failed every ended run."""
        commits = self._commits
        while commits and commits[0][0] <= now:
            _, _, run, fingerprint, on_commit = heapq.heappop(commits)
            self._insert(run, fingerprint)
            if on_commit is not None:
                on_commit(run)
        pending = self._pending
        retain = self._retain
        while pending and pending[0][0] <= now:
            run = heapq.heappop(pending)[2]
            if run.background:
                self._settle_background(run)
            elif run.failure is None:
                self.runs_billed += 1
                self.billed_usd += run.cost
            else:
                self.runs_failed += 1
            if retain is not None:
                self._ended.append(run)
                if len(self._ended) > retain:
                    self._evict(self._ended.popleft())

    def _settle_background(self, run: RunRecord) -> None:
        self._background_pending -= 1
        if run.failure is None:
            self.background_billed += 1
            self.background_billed_usd += run.cost
        else:
            self.background_failed += 1

    @property
    def _ours_pending(self) -> int:
        return len(self._pending) - self._background_pending

    def in_flight(self, now: float) -> int:
        """Return the number of our client's runs created and not yet terminal at ``now``."""
        self.settle(now)
        return self._ours_pending

    def _evict(self, run: RunRecord) -> None:
        del self.by_id[run.id]
        client_ref = run.request.client_ref
        if client_ref is not None:
            seen = self.by_client_ref[client_ref]
            if isinstance(seen, RunRecord):
                del self.by_client_ref[client_ref]
            else:
                seen.remove(run)
                if len(seen) == 1:
                    self.by_client_ref[client_ref] = seen[0]
        key = run.idempotency_key
        # Two runs may carry one key (a repeat sent before a late commit): only
        # the one the key maps to takes it away.
        if key is not None and self.idempotency.get(key, (b"", None))[1] is run:
            del self.idempotency[key]
        self._runs[bisect_left(self._seqs, run.seq)] = None
        self._holes += 1
        if self._holes > max(_MIN_COMPACTION, len(self.by_id)):
            self._compact()

    def _compact(self) -> None:
        self._runs = [run for run in self._runs if run is not None]
        self._seqs = array("q", [run.seq for run in self._runs if run is not None])
        self._holes = 0

"""What the emulator saw and did: a mutable tally and the frozen snapshot handed out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from runflow_async.emulator._filters import FILTER_KINDS

__all__ = ["ROUTES", "EmulatorCounters", "Tally"]

ROUTES = (
    "create",
    "get_run",
    "list_runs",
    "health",
    "file",
    "counters",
    "report",
    "credit",
    "asset_upload",
    "upload_put",
    "asset_confirm",
    "get_asset",
    "asset_file",
    "callback_secret_create",
    "callback_secrets",
    "callback_secret_delete",
    "callback_history",
    "callback_redeliver",
    "batch_create",
    "get_batch",
    "batch_items",
    "batch_item",
    "batch_callback_history",
)
"""Named routes; any other path is counted as ``"other"``."""


_LIST_COUNTS = (
    "list_refused",
    "list_pages",
    "list_pages_continued",
    "listed_runs",
    "listed_background",
)
_BATCH_COUNTS = (
    "batch_create_requests",
    "batches_created",
    "batch_runs_created",
    "batch_replays",
    "client_ref_duplicates",
)


@dataclass(frozen=True, slots=True)
class EmulatorCounters:
    """A snapshot of the emulator's counters, computed when asked for.

    Attributes:
        runs_created: Runs stored (including those whose create response was lost).
        runs_billed: Runs that have succeeded as of the snapshot.
        billed_usd: Total cost of those runs.
        runs_failed: Runs that have failed as of the snapshot.
        idempotent_replays: Creates answered from the idempotency cache.
        max_in_flight: Most runs ever between create and terminal state at once.
        in_flight: Runs between create and terminal state now.
        requests_by_route: Requests received, by route name.
        responses_by_status: Responses sent, by HTTP status (dropped ones excluded).
        faults_injected: Faults injected, by kind (``status_429``, ``drop``, ...).
        rate_limited: Creates refused ``429`` by the configured rate limits
            (``max_in_flight_runs``, ``create_rate_per_second``); injected 429
            faults are counted in ``faults_injected`` instead.
        credentials_on_presigned: Requests to presigned URLs refused for carrying
            an ``Authorization`` header.
        callbacks_sent: Callback HTTP attempts made (every retry and duplicate).
        callbacks_delivered: Callback deliveries a receiver accepted with a 2xx.
        callbacks_failed: Callback deliveries given up (a 4xx, or 3 failed attempts).
        commits_pending: Creates received and not stored yet (late commits); each
            becomes a run, counted in ``runs_created`` once stored.
        background_created: Runs made by another client of the organisation
            (``EmulatorConfig.background_runs``); none of the counts above
            includes them.
        background_billed: Those runs that have succeeded (billed to the other client).
        background_billed_usd: Their total cost.
        background_failed: Those runs that have failed.
        list_requests_by_filter: ``GET /v1/runs`` requests the handler parsed
            (answered or refused by ``list_filters``; not those refused by auth,
            a bad parameter or an injected fault), by the kind of their ``q``:
            ``none``, ``id``, ``client_ref``, ``documented`` (``status_code`` and
            ``created_at`` only) or ``other``.
        list_refused: Of those, the ones refused ``400`` because the server does
            not accept their filter (``list_filters``).
        list_pages: List pages served (``200`` answers of ``GET /v1/runs``).
        list_pages_continued: Of those, pages asked for with a cursor (``pq``).
        listed_runs: Items in those pages, all pages summed.
        listed_background: Of those items, runs of another client: a benchmark
            gets the share of a list's work spent on other clients' runs.
        batch_create_requests: Requests to ``POST /v1/models/{model}/batches``
            (every one, faulted, refused or replayed included).
        batches_created: Batches stored (a late-committed one once stored).
        batch_runs_created: Their child runs (also counted in ``runs_created``).
        batch_replays: Batch creates answered from the idempotency cache (also
            counted in ``idempotent_replays``).
        client_ref_duplicates: Runs of ours stored with a ``client_ref`` an
            earlier kept run already carried: an item created twice.
    """

    runs_created: int
    runs_billed: int
    billed_usd: Decimal
    runs_failed: int
    idempotent_replays: int
    max_in_flight: int
    in_flight: int
    requests_by_route: Mapping[str, int]
    responses_by_status: Mapping[int, int]
    faults_injected: Mapping[str, int]
    rate_limited: int = 0
    credentials_on_presigned: int = 0
    callbacks_sent: int = 0
    callbacks_delivered: int = 0
    callbacks_failed: int = 0
    commits_pending: int = 0
    background_created: int = 0
    background_billed: int = 0
    background_billed_usd: Decimal = Decimal(0)
    background_failed: int = 0
    list_requests_by_filter: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    list_refused: int = 0
    list_pages: int = 0
    list_pages_continued: int = 0
    listed_runs: int = 0
    listed_background: int = 0
    batch_create_requests: int = 0
    batches_created: int = 0
    batch_runs_created: int = 0
    batch_replays: int = 0
    client_ref_duplicates: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``Decimal`` and status keys as strings)."""
        return {
            "runs_created": self.runs_created,
            "runs_billed": self.runs_billed,
            "billed_usd": str(self.billed_usd),
            "runs_failed": self.runs_failed,
            "idempotent_replays": self.idempotent_replays,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "requests_by_route": dict(self.requests_by_route),
            "responses_by_status": {str(k): v for k, v in self.responses_by_status.items()},
            "faults_injected": dict(self.faults_injected),
            "rate_limited": self.rate_limited,
            "credentials_on_presigned": self.credentials_on_presigned,
            "callbacks_sent": self.callbacks_sent,
            "callbacks_delivered": self.callbacks_delivered,
            "callbacks_failed": self.callbacks_failed,
            "commits_pending": self.commits_pending,
            "background_created": self.background_created,
            "background_billed": self.background_billed,
            "background_billed_usd": str(self.background_billed_usd),
            "background_failed": self.background_failed,
            "list_requests_by_filter": dict(self.list_requests_by_filter),
            **{name: getattr(self, name) for name in (*_LIST_COUNTS, *_BATCH_COUNTS)},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmulatorCounters:
        """Rebuild a snapshot from :meth:`to_json` output (e.g. ``GET /_emulator/counters``)."""
        return cls(
            runs_created=int(data["runs_created"]),
            runs_billed=int(data["runs_billed"]),
            billed_usd=Decimal(data["billed_usd"]),
            runs_failed=int(data["runs_failed"]),
            idempotent_replays=int(data["idempotent_replays"]),
            max_in_flight=int(data["max_in_flight"]),
            in_flight=int(data["in_flight"]),
            requests_by_route=MappingProxyType(dict(data["requests_by_route"])),
            responses_by_status=MappingProxyType(
                {int(k): int(v) for k, v in data["responses_by_status"].items()}
            ),
            faults_injected=MappingProxyType(dict(data["faults_injected"])),
            # Absent from the output of emulators older than these fields.
            rate_limited=int(data.get("rate_limited", 0)),
            credentials_on_presigned=int(data.get("credentials_on_presigned", 0)),
            callbacks_sent=int(data.get("callbacks_sent", 0)),
            callbacks_delivered=int(data.get("callbacks_delivered", 0)),
            callbacks_failed=int(data.get("callbacks_failed", 0)),
            commits_pending=int(data.get("commits_pending", 0)),
            background_created=int(data.get("background_created", 0)),
            background_billed=int(data.get("background_billed", 0)),
            background_billed_usd=Decimal(data.get("background_billed_usd", 0)),
            background_failed=int(data.get("background_failed", 0)),
            list_requests_by_filter=MappingProxyType(
                {str(k): int(v) for k, v in data.get("list_requests_by_filter", {}).items()}
            ),
            **{name: int(data.get(name, 0)) for name in (*_LIST_COUNTS, *_BATCH_COUNTS)},
        )


class Tally:
    """Mutable request, response, fault, replay, rate-limit, leak, callback and list counts."""

    __slots__ = (
        "batch_replays",
        "callbacks_delivered",
        "callbacks_failed",
        "callbacks_sent",
        "credentials_on_presigned",
        "faults",
        "idempotent_replays",
        "list_by_filter",
        "list_pages",
        "list_pages_continued",
        "list_refused",
        "listed_background",
        "listed_runs",
        "rate_limited",
        "requests",
        "responses",
    )

    def __init__(self) -> None:
        self.requests: dict[str, int] = dict.fromkeys(ROUTES, 0)
        self.responses: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        self.idempotent_replays = 0
        self.batch_replays = 0
        self.rate_limited = 0
        self.credentials_on_presigned = 0
        self.callbacks_sent = 0
        self.callbacks_delivered = 0
        self.callbacks_failed = 0
        self.list_by_filter: dict[str, int] = dict.fromkeys(FILTER_KINDS, 0)
        self.list_refused = 0
        self.list_pages = 0
        self.list_pages_continued = 0
        self.listed_runs = 0
        self.listed_background = 0

    def list_counts(self) -> dict[str, int]:
        """Return the list counters of :class:`EmulatorCounters` (but the by-filter map)."""
        return {name: getattr(self, name) for name in _LIST_COUNTS}

    def request(self, route: str) -> None:
        """Count one request of ``route``."""
        self.requests[route] = self.requests.get(route, 0) + 1

    def response(self, status: int) -> None:
        """Count one response of ``status``."""
        self.responses[status] = self.responses.get(status, 0) + 1

    def fault(self, key: str) -> None:
        """Count one injected fault of kind ``key``."""
        self.faults[key] = self.faults.get(key, 0) + 1

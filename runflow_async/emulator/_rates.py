"""The emulator's seeded random fault rates: ``FaultRates`` (requests), ``CallbackFaults``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from runflow_async._keywords import checked_fields
from runflow_async.emulator._counters import ROUTES

__all__ = [
    "CALLBACK",
    "CONTROL_ROUTES",
    "CREATE_ROUTES",
    "DEFAULT_FAULT_ROUTES",
    "DOWNLOAD_ROUTES",
    "FAULTABLE_ROUTES",
    "READ_FAULT_RATES",
    "SCOPED_FAULT_KINDS",
    "CallbackFaults",
    "FaultRates",
    "check_fraction",
]

CONTROL_ROUTES: frozenset[str] = frozenset({"counters", "report", "credit"})
"""The emulator's own ``/_emulator/*`` routes: never faulted."""

FAULTABLE_ROUTES: frozenset[str] = frozenset(ROUTES) - CONTROL_ROUTES
"""Routes a fault can target: every API route, none of the control plane."""

CREATE_ROUTES: frozenset[str] = frozenset({"create", "batch_create"})
"""Routes that create runs: the create-only faults (lost answers, late commits) apply to both."""

DEFAULT_FAULT_ROUTES: frozenset[str] = frozenset(
    {"create", "get_run", "list_runs", "batch_create", "get_batch", "batch_items", "batch_item"}
)
"""Routes that draw random faults unless ``FaultRates.applies_to`` says otherwise."""

DOWNLOAD_ROUTES: frozenset[str] = frozenset({"file", "asset_file"})
"""Routes that serve files (output images, uploaded assets): the download faults' targets."""

CALLBACK = "callback"
"""The pseudo-route of outgoing callback deliveries in a ``FaultScript``."""

SCOPED_FAULT_KINDS: frozenset[str] = frozenset({"429", "5xx", "drop", "slow"})
"""Kinds of random fault that ``FaultRates.only_on`` can confine to some routes."""


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


_DOWNLOAD_RATES = ("rate_not_image", "rate_oversized_image", "rate_download_404")


READ_FAULT_RATES = ("rate_html_ok", "rate_null_output", "rate_not_found")
"""Primary rates that only apply to status reads: a bad answer about a run that exists."""


@checked_fields()
@dataclass(frozen=True, slots=True)
class FaultRates:
    """Seeded random faults; every rate is a probability per request of an applicable route.

    The primary rates (``rate_429``, ``rate_5xx``, ``rate_drop``, ``rate_lost_create``,
    ``rate_slow``, ``rate_late_commit``, ``rate_reused_run_id``, the read faults ``rate_html_ok``,
    ``rate_null_output``, ``rate_not_found``, and the download faults ``rate_not_image``,
    ``rate_oversized_image``, ``rate_download_404``) are mutually exclusive outcomes
    of one draw, so their sum must not exceed 1. Each kind applies to every route of
    ``applies_to`` unless ``only_on``
    confines it: ``FaultRates(rate_429=0.05, rate_5xx=0.05, only_on={"5xx": frozenset(
    {"get_run", "list_runs"})})`` answers 5% of all requests 429 and 5% of status reads
    (only) 5xx. On a route a kind does not apply to, its share of the draw is no fault,
    so every kind keeps its own rate on the routes it does apply to.

    Attributes:
        rate_429: Fraction of requests answered ``429 RATE_LIMITED``.
        rate_429_without_retry_after: Fraction of those 429s sent without ``Retry-After``.
        retry_after_seconds: Value of the ``Retry-After`` header when one is sent. It is
            what the server says, not scaled by ``time_scale``.
        rate_5xx: Fraction of requests answered with a server error (502 HTML or 503 JSON).
        rate_5xx_html: Fraction of those server errors that are an HTML 502 page.
        rate_drop: Fraction of requests whose connection is closed without a response.
        rate_lost_create: Fraction of creates that store the run and then lose the
            response (a 502 page), the ambiguous case.
        rate_slow: Fraction of requests delayed by ``slow_seconds`` before answering.
        slow_seconds: Delay of a slow request, in emulated seconds.
        rate_late_commit: Fraction of creates that store their run only
            ``late_commit_seconds`` after receiving it, and drop the connection at
            once (``Fault.late_commit``): the client cannot know, and neither a read
            by id nor the list shows the run until then. How a repeat of its
            ``Idempotency-Key`` is treated meanwhile is ``EmulatorConfig.idempotency_mode``.
        late_commit_seconds: Emulated seconds from receipt to storage of a late commit.
        rate_reused_run_id: Fraction of creates that make (and bill) their run but
            answer with the previous create's run id (``Fault.reused_run_id``): two
            creates told they made one run.
        rate_html_ok: Fraction of status reads (``get_run``, ``list_runs``) answered
            ``200 OK`` with an HTML page (a proxy's splash page).
        rate_null_output: Fraction of status reads that show every succeeded run
            with ``"output": null`` (the run did succeed and was billed).
        rate_not_found: Fraction of ``get_run`` reads answered a transient ``404``
            although the run exists (a replica that has not seen it yet).
        rate_not_image: Fraction of downloads (``DOWNLOAD_ROUTES``) answered ``200``
            with a JSON error page that claims to be ``image/png``.
        rate_oversized_image: Fraction of downloads served padded to
            ``oversized_image_bytes`` (still an image by its magic bytes).
        oversized_image_bytes: Size of those bodies (default 65 MiB: just over the
            client's 64 MiB cap).
        rate_download_404: Fraction of downloads answered ``404 FILE_NOT_FOUND``.
        rate_malformed: Fraction of creates and status reads answered with a malformed
            status line after the request was handled (``Fault.malformed``): the run a
            create makes exists, the client cannot parse the answer.
        rate_oversized: Fraction of status reads answered ``200`` with a JSON body of
            ``oversized_bytes`` (``Fault.oversized``; about half of them chunked, by the draw).
        oversized_bytes: Size of those bodies (default 17 MiB: just over the
            client's default 16 MiB response cap).
        applies_to: Routes that draw (see ``FAULTABLE_ROUTES``); by default
            ``DEFAULT_FAULT_ROUTES``: the run create and reads, and the batch create and reads.
        only_on: Confines a kind of fault (``"429"``, ``"5xx"``, ``"drop"``, ``"slow"``)
            to these routes of ``applies_to``; a kind not named applies to all of them.
            A lost create or a late commit only ever happens on a create route
            (``CREATE_ROUTES``: ``create``, ``batch_create``), a download
            fault only on the ``DOWNLOAD_ROUTES`` (with a download rate set,
            ``applies_to`` must name one).
    """

    rate_429: float = 0.0
    rate_429_without_retry_after: float = 0.5
    retry_after_seconds: float = 1.0
    rate_5xx: float = 0.0
    rate_5xx_html: float = 0.5
    rate_drop: float = 0.0
    rate_lost_create: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 1.0
    rate_late_commit: float = 0.0
    late_commit_seconds: float = 3.0
    rate_reused_run_id: float = 0.0
    rate_html_ok: float = 0.0
    rate_null_output: float = 0.0
    rate_not_found: float = 0.0
    rate_not_image: float = 0.0
    rate_oversized_image: float = 0.0
    oversized_image_bytes: int = 65 * 1024 * 1024
    rate_malformed: float = 0.0
    rate_oversized: float = 0.0
    oversized_bytes: int = 17 * 1024 * 1024
    rate_download_404: float = 0.0
    applies_to: frozenset[str] = DEFAULT_FAULT_ROUTES
    only_on: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    def __post_init__(self) -> None:
        for name in (
            "rate_429",
            "rate_429_without_retry_after",
            "rate_5xx",
            "rate_5xx_html",
            "rate_drop",
            "rate_lost_create",
            "rate_slow",
            *READ_FAULT_RATES,
            *_DOWNLOAD_RATES,
            "rate_late_commit",
            "rate_reused_run_id",
            "rate_malformed",
            "rate_oversized",
        ):
            check_fraction(name, getattr(self, name))
        if self.total > 1.0:
            raise ValueError(f"the primary fault rates add up to {self.total}, more than 1")
        if self.retry_after_seconds < 0 or self.slow_seconds < 0:
            raise ValueError("retry_after_seconds and slow_seconds must not be negative")
        if not (math.isfinite(self.late_commit_seconds) and self.late_commit_seconds > 0):
            raise ValueError(
                f"late_commit_seconds must be positive, got {self.late_commit_seconds!r}"
            )
        unknown = self.applies_to - FAULTABLE_ROUTES
        if unknown:
            raise ValueError(f"unknown routes in applies_to: {sorted(unknown)}")
        if self.oversized_image_bytes < 0 or self.oversized_bytes < 0:
            raise ValueError("oversized_image_bytes and oversized_bytes must not be negative")
        downloads = any(getattr(self, name) for name in _DOWNLOAD_RATES)
        if downloads and not self.applies_to & DOWNLOAD_ROUTES:
            raise ValueError(
                f"download fault rates need a file route in applies_to: {sorted(DOWNLOAD_ROUTES)}"
            )
        self._check_only_on()

    def _check_only_on(self) -> None:
        scopes = {kind: frozenset(routes) for kind, routes in self.only_on.items()}
        unknown = set(scopes) - SCOPED_FAULT_KINDS
        if unknown:
            known = ", ".join(sorted(SCOPED_FAULT_KINDS))
            raise ValueError(f"only_on takes the kinds {known}, not {sorted(unknown)}")
        for kind, routes in scopes.items():
            outside = routes - self.applies_to
            if outside:
                raise ValueError(
                    f"only_on[{kind!r}] names routes not in applies_to: {sorted(outside)}"
                )
        # Frozen: keep a read-only copy, so the caller's dict cannot change the rates.
        object.__setattr__(self, "only_on", MappingProxyType(scopes))

    def applies(self, kind: str, route: str) -> bool:
        """Return whether a fault of ``kind`` (see ``only_on``) may hit ``route``."""
        routes = self.only_on.get(kind)
        return routes is None or route in routes

    @property
    def total(self) -> float:
        """Return the probability that a request draws any fault at all."""
        primary = self.rate_429 + self.rate_5xx + self.rate_drop + self.rate_lost_create
        creates = self.rate_slow + self.rate_late_commit
        reads = self.rate_html_ok + self.rate_null_output + self.rate_not_found
        downloads = self.rate_not_image + self.rate_oversized_image + self.rate_download_404
        later = self.rate_reused_run_id + self.rate_malformed + self.rate_oversized
        return primary + creates + reads + downloads + later


@checked_fields()
@dataclass(frozen=True, slots=True)
class CallbackFaults:
    """Seeded random faults of automatic callback deliveries; one draw per delivery.

    The rates are mutually exclusive outcomes of one draw, so their sum must not
    exceed 1. Redeliveries asked for through the API are never faulted.

    Attributes:
        rate_drop: Fraction of deliveries never sent (and never recorded).
        rate_duplicate: Fraction of deliveries sent twice (two delivery records,
            identical body and signature, distinct ``Runflow-Request-Id``).
        rate_slow: Fraction of deliveries sent ``slow_seconds`` late.
        slow_seconds: Extra emulated seconds of a slow delivery.
        rate_reorder: Fraction of deliveries held until the next delivery has been
            sent (at most ``reorder_hold_seconds``), so they arrive out of order.
        reorder_hold_seconds: Longest hold of a reordered delivery, in emulated seconds.
    """

    rate_drop: float = 0.0
    rate_duplicate: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 5.0
    rate_reorder: float = 0.0
    reorder_hold_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("rate_drop", "rate_duplicate", "rate_slow", "rate_reorder"):
            check_fraction(name, getattr(self, name))
        if self.total > 1.0:
            raise ValueError(f"the callback fault rates add up to {self.total}, more than 1")
        if not (self.slow_seconds >= 0 and self.reorder_hold_seconds >= 0):
            raise ValueError("slow_seconds and reorder_hold_seconds must not be negative")

    @property
    def total(self) -> float:
        """Return the probability that a delivery draws any fault at all."""
        return self.rate_drop + self.rate_duplicate + self.rate_slow + self.rate_reorder

"""Configuration of the emulator: frozen dataclasses for the server and its random faults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal

from runflow_async._keywords import checked_fields
from runflow_async._pricing import PricingPolicy
from runflow_async.emulator._batch_input import BATCH_BODIES, BATCH_MODELS
from runflow_async.emulator._filters import LIST_FILTER_MODES
from runflow_async.emulator._rates import (
    CALLBACK,
    CONTROL_ROUTES,
    CREATE_ROUTES,
    DEFAULT_FAULT_ROUTES,
    DOWNLOAD_ROUTES,
    FAULTABLE_ROUTES,
    SCOPED_FAULT_KINDS,
    CallbackFaults,
    FaultRates,
    check_fraction,
)

__all__ = [
    "ASSET_REF_MODES",
    "BATCH_BODIES",
    "BATCH_MODELS",
    "CALLBACK",
    "CONFIG_FIELDS",
    "CONTROL_ROUTES",
    "CREATE_ROUTES",
    "DEFAULT_FAULT_ROUTES",
    "DOWNLOAD_ROUTES",
    "FAILURE_SHAPES",
    "FAULTABLE_ROUTES",
    "IDEMPOTENCY_MODES",
    "LIST_FILTER_MODES",
    "SCOPED_FAULT_KINDS",
    "CallbackFaults",
    "EmulatorConfig",
    "FaultRates",
    "check_money",
]


def check_money(name: str, value: Decimal) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite amount, not negative."""
    amount = Decimal(value)  # also takes an int
    if not (amount.is_finite() and amount >= 0):
        raise ValueError(f"{name} must be a finite amount, not negative, got {value}")


REPORTED_COSTS = ("billed", "negative", "huge", "nan", "missing")
"""Values of ``EmulatorConfig.reported_cost``."""

IDEMPOTENCY_MODES = ("at_receipt", "at_commit", "ignored")
"""Values of ``EmulatorConfig.idempotency_mode``."""

FAILURE_SHAPES = ("documented", "both", "error")
"""Values of ``EmulatorConfig.failure_shape``."""

ASSET_REF_MODES = ("resolve", "refuse")
"""Values of ``EmulatorConfig.asset_refs``."""


@checked_fields()
@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything that shapes an emulator's behaviour; every field has a working default.

    An unknown field, or a value of the wrong type (a bool or a string for a
    number), raises ``TypeError`` naming it (``unknown option 'time_scael'; did you
    mean 'time_scale'?``); a value out of range raises ``ValueError``. So do
    :class:`FaultRates` and :class:`CallbackFaults`.

    Attributes:
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        api_keys: Bearer tokens accepted; ``None`` accepts any non-empty token.
        seed: Seed of every random draw (durations, failures, ids, faults).
        time_scale: Real seconds per emulated second; 0.001 makes a 10 s run take 10 ms.
        median_duration: Median run duration in emulated seconds (log-normal).
        duration_sigma: Sigma of the log-normal run duration.
        failure_rate: Fraction of runs that end ``failed``.
        honour_idempotency_key: Replay creates that repeat an ``Idempotency-Key``;
            ``False`` is ``idempotency_mode="ignored"``.
        idempotency_mode: How a key is honoured while a create is received but not
            yet stored (a late commit: ``Fault.late_commit``,
            ``FaultRates.rate_late_commit``): ``at_receipt`` (a repeat waits for
            the first to be stored and is answered with the same run),
            ``at_commit`` (a repeat is checked against stored runs only, so one
            sent before the first is stored makes a second run), or ``ignored``
            (every create makes a run). Stored runs are replayed in both first modes.
        url_ttl: Emulated seconds an output URL stays valid after a read signs it.
        pricing: The shared pricing policy that computes each run's cost.
        cost_multiplier: The emulator bills this times the policy price.
        list_lag: Emulated seconds before a new run appears in ``GET /v1/runs``
            (reads by id see it at once): an eventually consistent list index.
        list_ignores_filter: ``GET /v1/runs`` ignores ``q`` and lists every run (a
            server that does not support the filter, and says nothing): the silent
            form of ``list_filters="none"``; it contradicts ``"no-id"``.
        list_filters: Which ``q`` filters ``GET /v1/runs`` accepts: ``all`` (every
            field, ``id:`` and ``client_ref:`` included), ``no-id`` (only the
            documented fields ``status_code`` and ``created_at``; a term on any
            other field is refused) or ``none`` (any ``q`` is refused). A refusal
            is ``400 INVALID_QUERY`` with an ``errors`` entry on ``q``; ``limit``,
            ``sort_by``, ``fields`` and the cursor work in every mode.
        background_runs: Share of the organisation's runs made by another client,
            in ``[0, 1)``: after each create it answers, the emulator makes
            ``background_runs / (1 - background_runs)`` runs of its own on average
            (exactly, by a running balance: 0.5 is one per create), at the same
            instant, with their own ``client_ref`` (``other-client-<n>``), seeded
            durations and failures (drawn apart, so our runs' draws do not change).
            They are listed and readable like any run, but are not our client's:
            they are counted apart (``background_*`` counters), never in
            ``runs_created``/``runs_billed``/``billed_usd``, ``in_flight``, the
            rate limits or the credit, nor in :meth:`~runflow_async.emulator.Emulator.report`
            rows or ``Emulator.runs()`` by default.
        reported_cost: What reads show as a run's ``cost`` (the bill is the
            true one whatever this says): ``billed`` (the truth), ``negative``,
            ``huge`` ($1e9), ``nan`` or ``missing`` (null); a server fault.
        cost_report_delay: Emulated seconds after a run ends before reads show
            its ``cost`` (``null`` until then; the bill is made at the end): a
            server whose billing catches up late.
        credit_usd: Once the billed total reaches this, creates answer 402. Runs
            admitted before that still finish and bill (the check is on what has
            been billed, not on what runs in flight will cost). Change it while
            running with :meth:`~runflow_async.emulator.Emulator.set_credit` or
            ``POST /_emulator/credit`` (a top-up).
        faults: Seeded random fault rates.
        max_in_flight_runs: Per-organization concurrency cap: a create is answered
            ``429 RATE_LIMITED`` while this many runs are not terminal.
        create_rate_per_second: Refill rate of a token bucket on creates, in emulated
            time; a create finding no token is answered ``429 RATE_LIMITED``.
        create_burst: Capacity of that bucket (creates allowed at once); it starts full.
        rate_limit_retry_after: ``Retry-After`` seconds sent with those 429s (rounded
            up to an integer, not scaled by ``time_scale``); ``None`` sends no header.
        retain_runs: Keep at most this many terminal runs; older ones (in the order
            they ended) are forgotten: 404, gone from lists. Counters stay exact and
            :meth:`~runflow_async.emulator.Emulator.report` keeps every run.
        callback_timeout: Emulated seconds a callback receiver has to connect and to
            answer one attempt.
        callback_timeout_floor: The shortest real timeout of an attempt, whatever the
            time scale, so that a busy test machine is not taken for a dead receiver
            (at ``time_scale=0.001`` the 10 s default would be 10 ms); lower it to
            test timeouts quickly.
        callback_faults: Seeded random faults of callback deliveries.
        callback_null_output_rate: Fraction of automatic callback payloads sent with
            ``"output": null`` (the docs say it "may be null or trimmed"), drawn per
            delivery from the seed; a duplicate carries its original's body, and a
            redelivery asked for through the API always carries the full output.
        batch_body: The body ``POST /v1/models/{model}/batches`` takes: ``openapi``
            (``{"input": [item, ...]}``, the OpenAPI's), ``guide`` (``{"items":
            [{"input": {...}}, ...]}``, the batch guide's; its create is answered
            with the guide's lean ``{id, status_code, items_total}``) or ``either``
            (both; answered with the full batch object). A body in a shape the
            server does not take is refused ``422``, nothing created.
        batch_models: Which models take batches: ``all``, ``text-to-image`` (not
            the edit model) or ``none``; the others answer the batch route ``422
            BATCH_NOT_SUPPORTED`` ("only binding-capable models support batches"),
            nothing created.
        batch_child_refs: Whether a batch's child runs carry their item's
            ``client_ref`` (so ``q=client_ref:`` lists them), as the emulator
            assumes; off, only the batch items show it (the docs say the ref is
            "stripped before validation", not where it is kept).
        tls: Serve HTTPS with a certificate generated at start-up for 127.0.0.1,
            ::1 and localhost by a CA of its own (``Emulator.ca_file``, the path
            the CLI prints); ``url`` and every presigned URL are then ``https://``.
        clock_anchor: Wall time of the emulated instant 0 (an aware datetime);
            ``None`` (the default) anchors the clock to the real time at start, so
            ``created_at`` is near now and advances at ``time_scale``. Pass one
            (e.g. ``datetime(2026, 1, 1, tzinfo=UTC)``, the former fixed epoch)
            for deterministic timestamps.
        reject_unknown_input_fields: Refuse ``input`` fields the model page does
            not list (``422``, code ``unknown_field``), as the emulator did before;
            by default they are accepted, ignored for generation and kept in the
            run's ``input`` echo (no source says the real API refuses them).
        failure_shape: How a failed run states why: ``documented``
            (``failure_code``/``failure_message``, per the OpenAPI), ``both``
            (those plus the older ``error: {message, code}``, which the official
            JS SDK reads) or ``error`` (only ``error``; ``failure_*`` are null).
        asset_refs: ``resolve`` (default): ``runflow://assets/{id}`` in
            ``image_urls`` names a confirmed asset of the organisation, resolved
            when the run is created (an unknown or unconfirmed one is ``422``,
            nothing billed); ``refuse``: the older answer, ``422`` "media URL
            must use HTTP(S) or data URI, got 'runflow'".
        data_uri_max_bytes: Largest decoded ``data:`` image accepted in
            ``image_urls`` (default 1 MiB, from the docs' "< 1 MiB inline is
            fine"); a larger or undecodable one is ``422``; 0 refuses them all.
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: frozenset[str] | None = None
    seed: int = 0
    time_scale: float = 1.0
    median_duration: float = 2.0
    duration_sigma: float = 0.5
    failure_rate: float = 0.0
    honour_idempotency_key: bool = True
    idempotency_mode: str = "at_receipt"
    url_ttl: float = 3600.0
    pricing: PricingPolicy = field(default_factory=PricingPolicy)
    cost_multiplier: Decimal = Decimal(1)
    reported_cost: str = "billed"
    cost_report_delay: float = 0.0
    list_lag: float = 0.0
    list_ignores_filter: bool = False
    list_filters: str = "all"
    background_runs: float = 0.0
    credit_usd: Decimal | None = None
    faults: FaultRates = field(default_factory=FaultRates)
    max_in_flight_runs: int | None = None
    create_rate_per_second: float | None = None
    create_burst: int = 1
    rate_limit_retry_after: float | None = None
    retain_runs: int | None = None
    callback_timeout: float = 10.0
    callback_timeout_floor: float = 1.0
    callback_faults: CallbackFaults = field(default_factory=CallbackFaults)
    callback_null_output_rate: float = 0.0
    batch_body: str = "openapi"
    batch_models: str = "all"
    batch_child_refs: bool = True
    tls: bool = False
    clock_anchor: datetime | None = None
    reject_unknown_input_fields: bool = False
    failure_shape: str = "documented"
    asset_refs: str = "resolve"
    data_uri_max_bytes: int = 1_048_576

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")
        # Written as "not (x > 0)" so that NaN is refused too.
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time_scale must be positive, got {self.time_scale!r}")
        if not (self.median_duration > 0 and self.duration_sigma >= 0):
            raise ValueError("median_duration must be positive and duration_sigma not negative")
        check_fraction("failure_rate", self.failure_rate)
        check_fraction("callback_null_output_rate", self.callback_null_output_rate)
        if not self.url_ttl >= 0:
            raise ValueError(f"url_ttl must not be negative, got {self.url_ttl!r}")
        if not (math.isfinite(self.callback_timeout) and self.callback_timeout > 0):
            raise ValueError(f"callback_timeout must be positive, got {self.callback_timeout!r}")
        floor = self.callback_timeout_floor
        if not (math.isfinite(floor) and floor >= 0):
            raise ValueError(f"callback_timeout_floor must be finite, not negative, got {floor!r}")
        check_money("cost_multiplier", self.cost_multiplier)
        if not (math.isfinite(self.list_lag) and self.list_lag >= 0):
            raise ValueError(f"list_lag must be finite, not negative, got {self.list_lag!r}")
        delay = self.cost_report_delay
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"cost_report_delay must be finite, not negative, got {delay!r}")
        if self.reported_cost not in REPORTED_COSTS:
            raise ValueError(
                f"reported_cost must be one of {', '.join(REPORTED_COSTS)}, "
                f"got {self.reported_cost!r}"
            )
        if self.credit_usd is not None:
            check_money("credit_usd", self.credit_usd)
        self._check_idempotency()
        self._check_limits()
        self._check_lists()
        self._check_fidelity()

    def _check_fidelity(self) -> None:
        for name, value, choices in (
            ("failure_shape", self.failure_shape, FAILURE_SHAPES),
            ("asset_refs", self.asset_refs, ASSET_REF_MODES),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.data_uri_max_bytes < 0:
            raise ValueError(
                f"data_uri_max_bytes must not be negative, got {self.data_uri_max_bytes}"
            )
        anchor = self.clock_anchor
        if anchor is not None and anchor.utcoffset() is None:
            raise ValueError("clock_anchor must be an aware datetime (e.g. tzinfo=UTC)")

    def _check_lists(self) -> None:
        if self.list_filters not in LIST_FILTER_MODES:
            raise ValueError(
                f"list_filters must be one of {', '.join(LIST_FILTER_MODES)}, "
                f"got {self.list_filters!r}"
            )
        if self.list_ignores_filter and self.list_filters == "no-id":
            raise ValueError("list_ignores_filter=True contradicts list_filters='no-id'")
        if not 0.0 <= self.background_runs < 1.0:
            raise ValueError(f"background_runs must be in [0, 1), got {self.background_runs!r}")
        for name, values in (("batch_body", BATCH_BODIES), ("batch_models", BATCH_MODELS)):
            if getattr(self, name) not in values:
                raise ValueError(
                    f"{name} must be one of {', '.join(values)}, got {getattr(self, name)!r}"
                )

    def _check_idempotency(self) -> None:
        if self.idempotency_mode not in IDEMPOTENCY_MODES:
            raise ValueError(
                f"idempotency_mode must be one of {', '.join(IDEMPOTENCY_MODES)}, "
                f"got {self.idempotency_mode!r}"
            )
        if not self.honour_idempotency_key and self.idempotency_mode == "at_commit":
            raise ValueError(
                "honour_idempotency_key=False contradicts idempotency_mode='at_commit'"
            )

    @property
    def key_mode(self) -> str:
        """Return how ``Idempotency-Key`` is honoured, both fields taken into account."""
        return self.idempotency_mode if self.honour_idempotency_key else "ignored"

    def _check_limits(self) -> None:
        for name in ("max_in_flight_runs", "retain_runs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        if self.create_rate_per_second is not None and not self.create_rate_per_second > 0:
            raise ValueError(
                f"create_rate_per_second must be positive, got {self.create_rate_per_second!r}"
            )
        if self.create_burst < 1:
            raise ValueError(f"create_burst must be at least 1, got {self.create_burst!r}")
        after = self.rate_limit_retry_after
        if after is not None and not (math.isfinite(after) and after >= 0):
            raise ValueError(f"rate_limit_retry_after must be finite, not negative, got {after!r}")


CONFIG_FIELDS: frozenset[str] = frozenset(f.name for f in fields(EmulatorConfig))
"""The names :class:`EmulatorConfig` takes (and ``Emulator(**overrides)``)."""

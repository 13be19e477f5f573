"""The emulator's state: config, clock, store, tallies, faults, and the seeded draws."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import random
import uuid
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from aiohttp import web

from runflow_async._pricing import EDIT_MODEL, GENERATE_MODEL, PRESET_SIZES, Size
from runflow_async.emulator._assets import AssetRecord, AssetStore
from runflow_async.emulator._batches import BatchStore
from runflow_async.emulator._callbacks import CallbackCenter
from runflow_async.emulator._clock import EPOCH, EmulatedClock
from runflow_async.emulator._config import EmulatorConfig, check_money
from runflow_async.emulator._counters import EmulatorCounters, Tally
from runflow_async.emulator._dice import FaultDice
from runflow_async.emulator._faults import FaultScript
from runflow_async.emulator._images import ImageRenderer
from runflow_async.emulator._ratelimit import RateLimiter
from runflow_async.emulator._runs import RunRecord, UrlFor
from runflow_async.emulator._secrets import SecretStore
from runflow_async.emulator._signing import UrlSigner
from runflow_async.emulator._store import RunStore
from runflow_async.emulator._validation import CreateRequest

__all__ = ["STATE", "EmulatorState", "fingerprint"]

_ORG_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://api.runflow.io/emulator/org"))
_EPOCH_MS = int(EPOCH.timestamp() * 1000)
# The text-to-image default of fal and of Runflow's 4B page; also PricingPolicy's.
_DEFAULT_GENERATE_SIZE = PRESET_SIZES["landscape_4_3"]
_MAX_PRICES = 4096  # distinct (model, size, images, input sizes) shapes memoized
_DEFAULT_FAILURE = ("PROVIDER_ERROR", "The provider failed to generate the image.")


_PriceKey = tuple[str, Size | None, int, tuple[Size | None, ...]]


def _model_uuid(model: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://api.runflow.io/v1/models/{model}"))


def _uuid7(millis: int, rand: int) -> str:
    # RFC 9562 layout: 48-bit time, version 7, 12 random bits, variant 0b10, 62 random.
    value = (millis & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    return str(uuid.UUID(int=value))


def fingerprint(model: str, body: Any) -> bytes:
    """Return a digest of a create body, to compare bodies sent with one idempotency key."""
    canonical = json.dumps([model, body], sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


class EmulatorState:
    """Everything one emulator instance remembers; the app reaches it via ``STATE``.

    Attributes:
        config: The configuration.
        credit_usd: The credit now (``config.credit_usd`` until topped up); ``None``
            for no limit.
        clock: The scaled clock.
        store: The runs.
        assets: Upload sessions and the assets they became.
        tally: Request, response, fault and rate-limit counts.
        limiter: Rate limits on creates.
        script: Scripted faults.
        dice: Seeded random faults.
        signer: Output URL signer.
        images: Image renderer and cache.
        model_ids: UUID of each served model, by slug.
        secrets: Callback signing secrets.
        callbacks: Callback deliveries.
        last_run_id: Id of the run the latest create made (for ``Fault.reused_run_id``).
        batches: The batches.
        batch_rng: Draws batch and item ids (its own stream: runs draw as without it).
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.credit_usd = config.credit_usd
        self.clock = EmulatedClock(config.time_scale)
        self.store = RunStore(config.retain_runs)
        self.assets = AssetStore(config.seed)
        self.tally = Tally()
        self.limiter = RateLimiter(config)
        self.script = FaultScript()
        self.dice = FaultDice(config.faults, config.seed)
        self.signer = UrlSigner(config.seed)
        self.images = ImageRenderer()
        self.model_ids = {model: _model_uuid(model) for model in (GENERATE_MODEL, EDIT_MODEL)}
        self.secrets = SecretStore(_ORG_ID, config.seed)
        ledger = self.store.ledger
        self.callbacks = CallbackCenter(
            config, self.clock, self.tally, self.script, ledger, self.secrets, self.render
        )
        self._rng = random.Random(config.seed)
        # Another client's runs draw from their own stream: ours stay as without them.
        self._background_rng = random.Random(f"runflow-emulator-background:{config.seed}")
        self._background_balance = 0.0
        share = config.background_runs
        self._background_per_create = share / (1.0 - share)
        self._prices: dict[_PriceKey, tuple[Size, Decimal]] = {}
        prefix = random.Random(f"runflow-emulator-requests:{config.seed}").getrandbits(24)
        self._request_ids = (f"req_{prefix:06x}{n:010x}" for n in itertools.count(1))
        self.last_run_id: str | None = None
        self.batches = BatchStore()
        self.batch_rng = random.Random(f"runflow-emulator-batches:{config.seed}")

    def set_credit(self, credit_usd: Decimal | None) -> None:
        """Replace the credit: a top-up, or ``None`` to lift the limit.

        Raises:
            ValueError: If the amount is not finite or is negative.
        """
        if credit_usd is not None:
            check_money("credit_usd", credit_usd)
        self.credit_usd = None if credit_usd is None else Decimal(credit_usd)

    def next_request_id(self) -> str:
        """Return a new unique ``X-Request-Id``."""
        return next(self._request_ids)

    def create_run(
        self,
        request: CreateRequest,
        request_id: str,
        *,
        forced_failure: tuple[str, str] | None = None,
        inputs: tuple[Size | None, ...] = (),
        idempotency: tuple[str, bytes] | None = None,
        base: str = "",
        commit_after: float = 0.0,
    ) -> RunRecord:
        """Draw a run's fate from the seeded RNG, store it, and return it.

        A run with a ``callback_url`` gets its callback scheduled for when it ends.

        Args:
            request: The validated create.
            request_id: ``X-Request-Id`` of the create.
            forced_failure: ``(code, message)`` the run must fail with, if any.
            inputs: Known size (or ``None``) of each edit input.
            idempotency: ``(Idempotency-Key, body fingerprint)`` to remember, if any.
            base: Scheme and host the client reached us by, for the callback's URLs.
            commit_after: Store it only this many emulated seconds from now (a
                late commit; ``seq`` stays -1 until then).
        """
        now = self.clock.now()
        key, digest = idempotency or (None, b"")
        run = self._draw(request, request_id, forced_failure, inputs, now + commit_after, self._rng)
        run.idempotency_key = key
        self.last_run_id = run.id
        url = request.callback_url
        if commit_after > 0:
            run.seq = -1
            on_commit = None if url is None else functools.partial(self._ends, url=url, base=base)
            self.store.defer(run, digest, on_commit)
            self._background_runs(now)
            return run
        self.store.add(run, now, digest)
        if url is not None:
            self.callbacks.schedule(run, url, base)
        self._background_runs(now)
        return run

    def _background_runs(self, now: float) -> None:
        """Make another client's runs at ``now``, as many as ``background_runs`` says are due."""
        self._background_balance += self._background_per_create
        while self._background_balance >= 1.0 - 1e-9:  # 1/3 + 1/3 + 1/3 is one run
            self._background_balance -= 1.0
            number = self.store.background_created + 1
            request = CreateRequest(
                model=GENERATE_MODEL,
                input={"prompt": f"another client's run {number}"},
                client_ref=f"other-client-{number}",
                metadata=None,
                callback_url=None,
                size=None,
                num_images=1,
                output_format="png",
                seed=None,
                num_inputs=0,
            )
            request_id = f"req_other{number:010x}"
            run = self._draw(request, request_id, None, (), now, self._background_rng)
            run.background = True
            self.store.add(run, now)

    def _ends(self, run: RunRecord, *, url: str, base: str) -> None:
        self.callbacks.schedule(run, url, base)

    def _draw(
        self,
        request: CreateRequest,
        request_id: str,
        forced_failure: tuple[str, str] | None,
        inputs: tuple[Size | None, ...],
        created: float,
        rng: random.Random,
    ) -> RunRecord:
        config = self.config
        # Always draw the same four numbers, so one run's inputs never shift another's.
        duration = config.median_duration * math.exp(config.duration_sigma * rng.gauss(0.0, 1.0))
        fails = rng.random() < config.failure_rate
        seq = self.store.created
        run_id = _uuid7(_EPOCH_MS + seq, rng.getrandbits(74))
        drawn_seed = rng.randrange(2**31)
        size, cost = self._price(request, inputs)
        return RunRecord(
            seq=seq,
            id=run_id,
            model_id=self.model_ids[request.model],
            org_id=_ORG_ID,
            request=request,
            request_id=request_id,
            created=created,
            duration=max(duration, 1e-6),
            failure=forced_failure or (_DEFAULT_FAILURE if fails else None),
            seed=drawn_seed if request.seed is None else request.seed,
            size=size,
            cost=cost,
            reported_cost=_reported(config.reported_cost, cost),
            cost_delay=config.cost_report_delay,
        )

    def _price(
        self, request: CreateRequest, inputs: tuple[Size | None, ...]
    ) -> tuple[Size, Decimal]:
        """Return the output size and billed cost of ``request``, memoized.

        The cache keeps one ``Decimal`` per distinct shape instead of one per run.
        """
        inputs = inputs or (None,) * request.num_inputs  # unknown sizes unless told
        key = (request.model, request.size, request.num_images, inputs)
        cached = self._prices.get(key)
        if cached is not None:
            return cached
        policy = self.config.pricing
        if request.model == EDIT_MODEL:
            size = request.size or policy.default_edit_output_size(inputs[0])
            price = policy.edit_cost(inputs, size, request.num_images)
        else:
            size = request.size or _DEFAULT_GENERATE_SIZE
            price = policy.generate_cost(size, request.num_images)
        result = (size, policy.quantize(price * self.config.cost_multiplier))
        if len(self._prices) < _MAX_PRICES:
            self._prices[key] = result
        return result

    def url_for(self, base: str, now: float) -> UrlFor:
        """Return a signer of file paths under ``base`` valid for ``url_ttl`` from ``now``."""
        expires_at = self.clock.epoch_seconds(now + self.config.url_ttl)
        signer = self.signer
        return lambda path: signer.sign(base, path, expires_at)

    def render(
        self,
        run: RunRecord,
        base: str,
        now: float,
        fields: frozenset[str] | None = None,
    ) -> dict[str, Any]:
        """Return ``run`` as the API shows it at ``now``."""
        return run.to_api(now, self.url_for(base, now), fields)

    def render_asset(self, record: AssetRecord, base: str, now: float) -> dict[str, Any]:
        """Return a confirmed asset as the API shows it at ``now`` (its ``url`` freshly signed)."""
        return record.to_api(_ORG_ID, self.url_for(base, now))

    def counters(self) -> EmulatorCounters:
        """Return a fresh snapshot of the counters."""
        store = self.store
        in_flight = store.in_flight(self.clock.now())
        tally = self.tally
        return EmulatorCounters(
            runs_created=store.created - store.background_created,
            runs_billed=store.runs_billed,
            billed_usd=store.billed_usd,
            runs_failed=store.runs_failed,
            idempotent_replays=tally.idempotent_replays,
            max_in_flight=store.max_in_flight,
            in_flight=in_flight,
            requests_by_route=MappingProxyType(dict(tally.requests)),
            responses_by_status=MappingProxyType(dict(tally.responses)),
            faults_injected=MappingProxyType(dict(tally.faults)),
            rate_limited=tally.rate_limited,
            credentials_on_presigned=tally.credentials_on_presigned,
            callbacks_sent=tally.callbacks_sent,
            callbacks_delivered=tally.callbacks_delivered,
            callbacks_failed=tally.callbacks_failed,
            commits_pending=store.commits_pending,
            background_created=store.background_created,
            background_billed=store.background_billed,
            background_billed_usd=store.background_billed_usd,
            background_failed=store.background_failed,
            list_requests_by_filter=MappingProxyType(dict(tally.list_by_filter)),
            **tally.list_counts(),
            **self._batch_counts(),
        )

    def _batch_counts(self) -> dict[str, int]:
        self.batches.settle()  # after ``in_flight`` settled the runs
        return {
            "batch_create_requests": self.tally.requests.get("batch_create", 0),
            "batches_created": self.batches.created,
            "batch_runs_created": self.batches.runs_created,
            "batch_replays": self.tally.batch_replays,
            "client_ref_duplicates": self.store.client_ref_duplicates,
        }

    def report(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """Return the benchmark report: runs from creation index ``since`` on.

        See :meth:`runflow_async.emulator.Emulator.report` for the format.
        """
        now = self.clock.now()
        self.store.settle(now)
        return {
            "time_scale": self.config.time_scale,
            "now": now,
            "since": max(since, 0),
            "total": self.store.created,
            "runs": self.store.ledger.rows(now, since, limit),
        }


STATE = web.AppKey("runflow_emulator_state", EmulatorState)
"""Where the application keeps its ``EmulatorState``."""


def _reported(mode: str, cost: Decimal) -> str | None:
    """What reads show as the cost of a run billed ``cost`` (``EmulatorConfig.reported_cost``)."""
    return {
        "billed": None,
        "negative": str(-cost),
        "huge": "1000000000",
        "nan": "NaN",
        "missing": "missing",
    }[mode]

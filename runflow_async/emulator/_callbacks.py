"""Callback deliveries: when a run with a ``callback_url`` ends, POST its signed payload.

The schedule follows the model pages: 3 attempts, waiting 1 s then 2 s (emulated)
after a 5xx, a timeout or a connection error; a 2xx ends the delivery, and so does
any other status (given up at once). The payload is built when the delivery is
created, frozen, and sent byte for byte on every attempt with a fresh
``Runflow-Request-Id``; ``Runflow-Signature`` is sent when a signing secret exists.
A seeded fraction (``callback_null_output_rate``) of automatic payloads has ``"output": null``.

Every wait (the run's end, a retry, a ``slow`` or ``reorder`` fault) is an entry in
one :class:`~runflow_async.emulator._scheduler.Scheduler`; a task exists only while
an attempt's POST is in flight. Both are owned here: :meth:`CallbackCenter.running`
starts them and, on exit, cancels and awaits every one and closes the session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from runflow_async._webhooks import sign
from runflow_async.emulator._batches import BatchRecord, batch_payload
from runflow_async.emulator._clock import EmulatedClock
from runflow_async.emulator._config import CALLBACK, EmulatorConfig
from runflow_async.emulator._counters import Tally
from runflow_async.emulator._deliveries import (
    MAX_ATTEMPTS,
    PAYLOAD_FIELDS,
    RETRY_WAITS,
    Attempt,
    Delivery,
    payload,
)
from runflow_async.emulator._dice import CallbackDice
from runflow_async.emulator._faults import Fault, FaultScript
from runflow_async.emulator._ledger import RunLedger
from runflow_async.emulator._runs import RunRecord
from runflow_async.emulator._scheduler import Scheduler
from runflow_async.emulator._secrets import SecretStore, seeded_uuid

__all__ = ["CallbackCenter", "Render"]

Render = Callable[[RunRecord, str, float, frozenset[str]], dict[str, Any]]
"""``(run, base URL, now, fields)`` -> those fields of the run as the API shows it."""

_Owner = RunRecord | BatchRecord
"""What a delivery reports on, and keeps it in its ``deliveries``."""
_USER_AGENT = "Runflow-Emulator-Callbacks"
_KEPT_BYTES = 1024


class CallbackCenter:
    """Schedules, sends, retries and records the callbacks of one emulator.

    Args:
        config: The emulator's configuration.
        clock: Its clock.
        tally: Where ``callbacks_*`` and callback faults are counted.
        script: Scripted faults (the ``"callback"`` queue is used here).
        ledger: Marks a run noticed when its callback is delivered.
        secrets: The signing secrets.
        render: Renders a run, for the payload.
    """

    __slots__ = (
        "_clock",
        "_dice",
        "_held",
        "_ledger",
        "_null_output_rate",
        "_output_rng",
        "_render",
        "_request_ids",
        "_rng",
        "_scheduler",
        "_script",
        "_secrets",
        "_session",
        "_tally",
        "_tasks",
        "_tickets",
        "_timeout",
        "_timeout_text",
    )

    _session: aiohttp.ClientSession  # set by ``running``, before anything is sent

    def __init__(
        self,
        config: EmulatorConfig,
        clock: EmulatedClock,
        tally: Tally,
        script: FaultScript,
        ledger: RunLedger,
        secrets: SecretStore,
        render: Render,
    ) -> None:
        self._clock = clock
        self._tally = tally
        self._script = script
        self._dice = CallbackDice(config.callback_faults, config.seed)
        self._null_output_rate = config.callback_null_output_rate
        # Its own stream, so that turning the rate on shifts no id and no fault.
        self._output_rng = random.Random(f"runflow-emulator-callback-output:{config.seed}")
        self._ledger = ledger
        self._secrets = secrets
        self._render = render
        self._scheduler = Scheduler(clock)
        real_timeout = clock.real_seconds(config.callback_timeout)
        self._timeout = max(real_timeout, config.callback_timeout_floor)
        self._timeout_text = f"No answer within {config.callback_timeout:g} s."
        self._rng = random.Random(f"runflow-emulator-callbacks:{config.seed}")
        prefix = self._rng.getrandbits(24)
        self._request_ids = (f"req_cb{prefix:06x}{n:08x}" for n in itertools.count(1))
        self._tasks: set[asyncio.Task[None]] = set()
        self._tickets = itertools.count()
        self._held: list[tuple[int, Delivery]] = []

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Send callbacks while inside; on exit, cancel whatever is pending or in flight."""
        self._session = aiohttp.ClientSession(
            # Time the receiver takes, not time spent waiting for a pooled connection.
            timeout=aiohttp.ClientTimeout(sock_connect=self._timeout, sock_read=self._timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": _USER_AGENT},
        )
        scheduler = asyncio.create_task(self._scheduler.run(), name="runflow-emulator-callbacks")
        try:
            yield
        finally:
            tasks = [scheduler, *self._tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._session.close()

    def wake(self) -> None:
        """Look at the clock again (it was moved forward)."""
        self._scheduler.wake()

    @property
    def pending(self) -> int:
        """Return the number of waits (run ends, retries, holds) not yet due."""
        return len(self._scheduler)

    def schedule(self, run: RunRecord, url: str, base: str) -> None:
        """Deliver ``run``'s callback to ``url`` when it ends; output URLs under ``base``."""
        new = functools.partial(self._new, run, url, base)
        self._scheduler.at(run.end, functools.partial(self._ended, run, new))

    def schedule_batch(self, batch: BatchRecord) -> None:
        """Deliver ``batch``'s one callback to its ``callback_url`` when its last run ends."""
        new = functools.partial(self._new_batch, batch)
        self._scheduler.at(batch.end, functools.partial(self._ended, batch, new))

    def redeliver(self, run: RunRecord, url: str, base: str) -> Delivery:
        """Send a fresh payload of terminal ``run`` now, never faulted; return its record."""
        delivery = self._new(run, url, base, automatic=False)
        self._due(delivery, delivery.created)
        return delivery

    def _ended(self, owner: _Owner, new: Callable[..., Delivery]) -> None:
        """The subject of a callback ended: make its delivery (``new``), faulted or not."""
        scripted = self._script.take(CALLBACK)
        rolled = self._dice.roll()  # drawn even when scripted, so the sequence never shifts
        fault = scripted or rolled
        if fault is None:
            delivery = new(automatic=True)
            self._due(delivery, delivery.created)
            return
        self._tally.fault(f"callback_{fault.kind}")
        if fault.kind != "drop":
            self._faulted(new(automatic=True), owner, fault)

    def _faulted(self, delivery: Delivery, run: _Owner, fault: Fault) -> None:
        now = delivery.created
        if fault.kind == "slow":
            self._due(delivery, now + fault.seconds)
        elif fault.kind == "duplicate":
            twin = dataclasses.replace(delivery, id=seeded_uuid(self._rng), attempts=[])
            self._add(run, twin)
            self._due(delivery, now)
            self._due(twin, now)
        else:  # reorder: released by the next attempt to complete, or at the deadline
            delivery.held = True
            delivery.next_at = now + fault.seconds
            self._held.append((next(self._tickets), delivery))
            self._scheduler.at(delivery.next_at, functools.partial(self._release, delivery))

    def _null_output(self, automatic: bool) -> bool:
        rate = self._null_output_rate
        return automatic and rate > 0 and self._output_rng.random() < rate

    def _new(self, run: RunRecord, url: str, base: str, *, automatic: bool) -> Delivery:
        now = self._clock.now()
        null_output = self._null_output(automatic)
        view = self._render(run, base, now, PAYLOAD_FIELDS)
        event, body = payload(run.id, view, run.request.metadata, with_output=not null_output)
        return self._record(run, (run.id, run.seq), url, (event, body), automatic, now)

    def _new_batch(self, batch: BatchRecord, *, automatic: bool) -> Delivery:
        now = self._clock.now()
        null_output = self._null_output(automatic)
        event, body = batch_payload(batch, now, with_output=not null_output)
        url = batch.callback_url or ""
        delivery = self._record(batch, (batch.id, -1), url, (event, body), automatic, now)
        delivery.subject = "batch_id"
        delivery.also_notices = tuple(run.seq for run in batch.runs)
        return delivery

    def _record(
        self,
        owner: _Owner,
        subject: tuple[str, int],
        url: str,
        message: tuple[str, bytes],
        automatic: bool,
        now: float,
    ) -> Delivery:
        event, body = message
        secret = self._secrets.current()
        if secret is not None:
            secret.last_used = now
        delivery = Delivery(
            id=seeded_uuid(self._rng),
            run_id=subject[0],
            run_seq=subject[1],
            url=url,
            event=event,
            body=body,
            signature=None if secret is None else sign(body, secret.plain),
            secret_id=None if secret is None else secret.id,
            automatic=automatic,
            created=now,
        )
        self._add(owner, delivery)
        return delivery

    @staticmethod
    def _add(run: _Owner, delivery: Delivery) -> None:
        if run.deliveries is None:
            run.deliveries = []
        run.deliveries.append(delivery)

    def _due(self, delivery: Delivery, at: float) -> None:
        delivery.next_at = at
        self._scheduler.at(at, functools.partial(self._spawn, delivery))

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._attempt(delivery, next(self._tickets)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release(self, delivery: Delivery) -> None:
        if not delivery.held:
            return  # released already, by a later delivery
        self._held = [(t, held) for t, held in self._held if held is not delivery]
        delivery.held = False
        delivery.next_at = self._clock.now()
        self._spawn(delivery)

    def _release_before(self, ticket: int) -> None:
        """Send every delivery held before the attempt ``ticket`` was started."""
        while self._held and self._held[0][0] < ticket:
            self._release(self._held[0][1])

    async def _attempt(self, delivery: Delivery, ticket: int) -> None:
        clock = self._clock
        number = len(delivery.attempts) + 1
        request_id = next(self._request_ids)
        started = clock.now()
        status: int | None = None
        text = error = reason = None
        self._tally.callbacks_sent += 1
        try:
            async with self._session.post(
                delivery.url,
                data=delivery.body,
                headers=delivery.headers(request_id),
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read()
                text = Delivery.kept_body(raw[:_KEPT_BYTES].decode("utf-8", "replace"))
        except TimeoutError:
            reason, error = "TIMEOUT", self._timeout_text
        except aiohttp.ClientError as exc:
            reason, error = "CONNECTION_ERROR", f"{type(exc).__name__}: {exc}"
        now = clock.now()
        attempt = Attempt(number, request_id, started, now - started, status, text, error, reason)
        retry = (status is None or status >= 500) and number < MAX_ATTEMPTS
        delivery.record(attempt, now + RETRY_WAITS[number - 1] if retry else None)
        if delivery.next_at is not None:
            self._scheduler.at(delivery.next_at, functools.partial(self._spawn, delivery))
        elif delivery.status == "delivered":
            self._tally.callbacks_delivered += 1
            for seq in (delivery.run_seq, *delivery.also_notices):
                if seq >= 0:
                    self._ledger.notice(seq, now)
        else:
            self._tally.callbacks_failed += 1
        self._release_before(ticket)

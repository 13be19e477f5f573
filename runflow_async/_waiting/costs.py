"""The cost of runs that finished by callback, fetched many at a time.

A callback carries the output but not ``cost`` (not in the documented payload),
yet a budget must settle on what the API billed. Reading each run again would
double the requests of a callback-driven batch, so :class:`CostLookup` gathers
the runs that need a cost for a moment (``linger``, or until ``chunk_size`` are
waiting) and asks ``GET /v1/runs?q=id:a OR id:b ...&fields=id,cost,status_code``
once for all of them. The run's batch slot is already free by then, so the
wait costs no throughput, only a later ``cost_settled``.

The filter grammar is documented but this use of it is not: a run the answer
leaves out, or an answer that fails, makes :meth:`CostLookup.cost` return
``None`` ("read the run yourself"), and an answer naming runs it was not asked
about turns the lookup off for good.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal, InvalidOperation
from typing import Any

import anyio

from runflow_async._core.errors import APIError
from runflow_async._core.filters import any_of
from runflow_async._http.transport import Transport

__all__ = ["CostLookup"]

logger = logging.getLogger("runflow_async")


class _Pending:
    __slots__ = ("cost", "done", "found")

    def __init__(self) -> None:
        self.done = asyncio.Event()  # asyncio only: anyio's Event looks its backend up
        self.found = False
        self.cost: Decimal | None = None


class CostLookup:
    """Batches cost reads of finished runs into list requests.

    Args:
        transport: The HTTP layer (the list read is retried there).
        linger: Seconds the first waiting run waits for others to join it.
        chunk_size: Runs named per request.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        linger: float = 1.0,
        chunk_size: int = 100,
    ) -> None:
        self._transport = transport
        self._linger = transport.clock.real(linger)
        self._chunk_size = chunk_size
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self.usable = True

    async def cost(self, run_id: str) -> tuple[bool, Decimal | None]:
        """Return ``(found, cost)`` for finished run ``run_id``.

        ``found`` is ``False`` when the list did not answer for the run: read it
        with ``GET /v1/runs/{id}`` instead. Only call it while :meth:`run` runs.
        """
        if not self.usable:
            return False, None
        pending = self._pending.get(run_id)
        if pending is None:
            pending = self._pending[run_id] = _Pending()
        self._wake.set()
        if len(self._pending) >= self._chunk_size:
            self._full.set()
        await pending.done.wait()
        return pending.found, pending.cost

    async def run(self) -> None:
        """Serve :meth:`cost` until cancelled (run it in the batch's task group)."""
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            with anyio.move_on_after(self._linger):
                await self._full.wait()
            self._full.clear()
            await self.flush()

    async def flush(self) -> None:
        """Look up every waiting run now."""
        while self._pending:
            ids = list(self._pending)[: self._chunk_size]
            batch = {run_id: self._pending.pop(run_id) for run_id in ids}
            try:
                if self.usable:
                    await self._lookup(batch)
            finally:
                for pending in batch.values():
                    pending.done.set()

    async def _lookup(self, batch: dict[str, _Pending]) -> None:
        params = {
            "q": any_of("id", list(batch)),
            "fields": "id,cost,status_code",
            "limit": str(min(500, len(batch))),
        }
        try:
            response = await self._transport.request("GET", "/v1/runs", params=params)
        except APIError as exc:
            logger.info("Cost lookup failed (%s); reading those runs one by one.", exc)
            return
        items = _items(response.data)
        if items is None or any(item.get("id") not in batch for item in items):
            logger.warning("The run list ignored the id filter; reading costs run by run.")
            self.usable = False
            return
        for item in items:
            pending = batch[item["id"]]
            pending.found, pending.cost = True, _decimal(item.get("cost"))


def _items(data: Any) -> list[dict[str, Any]] | None:
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return None
    return items


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None

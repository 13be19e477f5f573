"""What a batch create sends and what its answer says: the runs it made, by ``client_ref``.

The sources disagree on the batch shapes (``runflow-api.md`` §4, §13.12), so
both are spoken and every answer is read tolerantly:

* the body: the OpenAPI's ``{"input": [{...input, "client_ref"}, ...]}``
  (``shape="openapi"``, the default) or the guide's
  ``{"items": [{"input": {...}, "client_ref"}]}`` (``shape="guide"``);
* the answer: the OpenAPI's batch object with lean
  ``items[{id, sequence_index, run_id, status_code, client_ref}]``, or the
  guide's bare ``{id, status_code, items_total}``. Runs it does not name are
  read from the items endpoint (``GET /v1/batches/{id}/items``, a page per up
  to 100 items, each with its full ``run``); any still missing are looked up
  by ``client_ref`` by the caller (the batch exists: never sent again).

An item is matched to what was sent by its ``client_ref``, else by its
``sequence_index``, else by its place. One that names another
``client_ref``, or a run this client already gave to another create
(:class:`._http.owners.RunOwners`), is not trusted: looked up instead.

A 422 on the route made nothing. One that names items (``errors[].field``
such as ``input[3].prompt``, or an ``index``) refused those items only; one
that names none refused the route: not batch-capable, or the body shape
(:class:`BatchRouteRefusedError`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import pydantic

from runflow_async._core.errors import APIError, BatchRouteRefusedError, UnprocessableEntityError
from runflow_async._core.models import Run, run_id_problem
from runflow_async._http.create import CreateProgress
from runflow_async._http.transport import Transport

__all__ = [
    "BATCH_MAX",
    "ITEMS_PAGE",
    "BatchBodyShape",
    "BatchSend",
    "batch_body",
    "batch_path",
    "read_runs",
    "refused_items",
    "route_refused",
]

logger = logging.getLogger("runflow_async")

BATCH_MAX = 100
"""Items per batch create at most (documented: 1-100)."""
ITEMS_PAGE = 100
"""Items asked per page of ``GET /v1/batches/{id}/items``."""

BatchBodyShape = Literal["openapi", "guide"]
"""``openapi``: ``{"input": [items]}``; ``guide``: ``{"items": [{"input": ...}]}``."""

_ITEM_FIELD = re.compile(r"^(?:body[.\[])?(?:input|items)(?:\[(\d+)\]|\.(\d+))")
_MAX_PAGES = 20  # a safety bound on the items endpoint's pages for one batch


@dataclass(frozen=True, slots=True, eq=False)
class BatchSend:
    """One item of a batch create: its ``client_ref``, its input, what may be known of it."""

    client_ref: str
    input: dict[str, Any]
    progress: CreateProgress


@functools.lru_cache(maxsize=64)
def batch_path(model: str) -> str:
    """``/v1/models/{model}/batches``, each segment quoted."""
    return "/v1/models/" + "/".join(quote(p, safe="") for p in model.split("/")) + "/batches"


def batch_body(items: Sequence[BatchSend], shape: BatchBodyShape) -> dict[str, Any]:
    """The JSON body of a batch create in ``shape``."""
    if shape == "guide":
        return {"items": [{"input": i.input, "client_ref": i.client_ref} for i in items]}
    return {"input": [{**i.input, "client_ref": i.client_ref} for i in items]}


def refused_items(exc: UnprocessableEntityError, count: int) -> dict[int, list[str]]:
    """The items (by index) a 422 names, each with what it said; empty: the route refused."""
    named: dict[int, list[str]] = {}
    for entry in exc.errors:
        if not isinstance(entry, dict):
            continue
        index: object = entry.get("index")
        field = entry.get("field", entry.get("loc"))
        if isinstance(field, list):
            field = ".".join(str(part) for part in field)
        if not isinstance(index, int) and isinstance(field, str):
            match = _ITEM_FIELD.match(field)
            index = int(match[1] or match[2]) if match else None
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < count:
            named.setdefault(index, []).append(str(entry.get("message", exc.message)))
    return named


def route_refused(exc: UnprocessableEntityError, model: str, shape: BatchBodyShape) -> APIError:
    """The typed error of a 422 that refused the batch route (nothing was created)."""
    other = "guide" if shape == "openapi" else "openapi"
    error = BatchRouteRefusedError(
        f"The API refused batch creates for {model} ({exc.message}); nothing was created. "
        f"The model may not be batch-capable (use create_via='runs' or 'auto'), or the "
        f"server may expect the other body shape (batch_body_shape={other!r}).",
        method=exc.method,
        path=exc.path,
        status=exc.status,
        code=exc.code,
        errors=exc.errors,
        request_id=exc.request_id,
    )
    error.__cause__ = exc
    return error


class _Match:
    """Matches listed batch items to the items sent."""

    def __init__(self, transport: Transport, sent: Sequence[BatchSend], data: dict[str, Any]):
        self._transport = transport
        self._refs = [i.client_ref for i in sent]
        self._wanted = set(self._refs)
        self._batch_id = data.get("id") if isinstance(data.get("id"), str) else None
        self._created_at = data.get("created_at")
        self.runs: dict[str, Run] = {}

    def read(self, items: object) -> None:
        if not isinstance(items, list):
            return
        for place, item in enumerate(items):
            if isinstance(item, dict):
                self._one(place, item)

    def _one(self, place: int, item: dict[str, Any]) -> None:
        full = item.get("run") if isinstance(item.get("run"), dict) else None
        raw = item.get("run_id", full.get("id") if full is not None else None)
        if run_id_problem(raw) is not None:
            return
        ref = item.get("client_ref", full.get("client_ref") if full is not None else None)
        if ref is None:
            seq = item.get("sequence_index", place)
            ref = self._refs[seq] if isinstance(seq, int) and 0 <= seq < len(self._refs) else None
        if ref not in self._wanted or ref in self.runs:
            return  # another create's, or unplaceable: the caller looks its own up
        run = self._run(str(raw), ref, item, full)
        if run is not None and self._transport.owners.doubt(run, ref) is None:
            self.runs[ref] = run

    def _run(
        self, run_id: str, ref: str, item: dict[str, Any], full: dict[str, Any] | None
    ) -> Run | None:
        if full is not None:
            try:
                return Run.model_validate({**full, "id": run_id})
            except pydantic.ValidationError:
                return None
        fields = {"id": run_id, "client_ref": ref, "batch_id": self._batch_id}
        created = item.get("created_at", self._created_at)
        try:
            return Run.model_validate({**fields, "created_at": created})
        except pydantic.ValidationError:
            return Run.model_validate(fields)

    @property
    def batch_id(self) -> str | None:
        return self._batch_id

    @property
    def complete(self) -> bool:
        return len(self.runs) == len(self._wanted)


async def read_runs(
    transport: Transport, data: object, sent: Sequence[BatchSend]
) -> tuple[str | None, dict[str, Run]]:
    """The batch id and the runs a batch create's 2xx answer made, by ``client_ref``.

    Runs it does not name are read from the items endpoint; a failure there
    leaves them out (the caller looks them up by ``client_ref``).
    """
    if not isinstance(data, dict):
        return None, {}
    match = _Match(transport, sent, data)
    match.read(data.get("items"))
    if not match.complete and match.batch_id is not None:
        try:
            await _read_items(transport, match.batch_id, match)
        except APIError as exc:  # retried by the transport already: the rest are looked up
            logger.info("Reading the items of batch %s failed (%s).", match.batch_id, exc)
    return match.batch_id, match.runs


async def _read_items(transport: Transport, batch_id: str, match: _Match) -> None:
    """Page the items endpoint until every item is matched or the pages end."""
    path = f"/v1/batches/{quote(batch_id, safe='')}/items"
    params = {"limit": str(ITEMS_PAGE)}
    for _ in range(_MAX_PAGES):
        response = await transport.request("GET", path, params=params)
        data = response.data
        if not isinstance(data, dict):
            return
        match.read(data.get("items"))
        cursor = data.get("next_pq", data.get("next_cursor"))
        if match.complete or not isinstance(cursor, str) or not cursor:
            return
        params = {**params, "pq": cursor, "cursor": cursor}

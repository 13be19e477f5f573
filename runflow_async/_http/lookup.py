"""Looking a create's run up by its ``client_ref``, on any server that lists runs.

The ``client_ref:`` filter is our inference from the documented grammar, so
a server may refuse it (a 400 or 422) or ignore it (its answer lists runs with other
``client_ref`` values). Then a lookup falls back to documented listing, never
to sending the create again:

1. ``client_ref``: ``q=client_ref:<ref>``, the newest run carrying it.
2. ``created_at``: ``q=created_at>=<bound>`` (the attempt's send time less a
   margin), every page by the ``next_pq`` cursor (``limit`` 500), each item's
   ``client_ref`` matched here. An item created before the bound contradicts it.
3. ``newest``: no filter, ``sort_by=created_at:desc``, paging back until a
   page's oldest run is older than the bound. A list not newest first
   contradicts it.

Each form is verified on every answer; one refused or contradicted is
remembered per client (:class:`._http.visibility.LookupForms`) and never tried
again, so later lookups go straight to the form that works. With none left,
absence cannot be established: :class:`LookupRefused` (the create ends
unknown). Lookups by listing share their pages: a lookup that starts while a
walk is under way waits for it to end, then one walk serves every lookup that
waited (back to the oldest bound among them).

The bound is in the server's time, which the client only knows through the
runs it lists: a run listed by client time ``now`` was created no later, so
``created_at - now`` never exceeds the true offset between the clocks
(:meth:`._http.visibility.LookupForms.observe`). Before any run was listed,
the walk takes the newest form, whose first page teaches the offset.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import pydantic

from runflow_async._core.errors import APIError, APIStatusError
from runflow_async._core.filters import term
from runflow_async._core.models import Run, RunPage, listed_created_at, run_id_problem
from runflow_async._http.transport import Transport
from runflow_async._http.visibility import LookupFailed, LookupForms

__all__ = ["MARGIN", "PAGE_LIMIT", "LookupRefused", "find"]

PAGE_LIMIT = 500
"""The documented maximum ``limit`` of ``GET /v1/runs``."""
_FORM_REFUSALS = frozenset({400, 422})  # a query the server will not answer
MARGIN = 1.0
"""Seconds taken off the send time in the bound (timestamp precision, clock jitter)."""


class LookupRefused(Exception):
    """Absence cannot be established: no form of lookup works, or an answer is unusable."""


class _FormBroken(Exception):
    """The server refused or contradicted one form of lookup."""


@dataclass(eq=False, slots=True)
class _Want:
    """One lookup waiting for a walk: what it looks for and what it found."""

    client_ref: str
    sent_at: float
    done: bool = False
    found: Run | None = None
    error: Exception | None = None


async def find(transport: Transport, client_ref: str, sent_at: float | None) -> Run | None:
    """One lookup of the create ``client_ref``: its newest run, or ``None`` if not listed.

    ``sent_at`` is when it was sent (clock seconds); ``None`` when that is not
    known (it is only bounded from above): then only the ``client_ref`` filter
    can be used.

    Raises:
        LookupFailed: A transient failure (a 5xx, the network); a later lookup may work.
        LookupRefused: No form of lookup works here, or the run listed is unusable.
    """
    forms = transport.visibility.forms
    if "client_ref" not in forms.refused:
        try:
            return await _by_client_ref(transport, client_ref)
        except _FormBroken as exc:
            forms.refuse("client_ref", str(exc))
    if sent_at is None:
        raise LookupRefused(forms.refused["client_ref"])
    return await _shared_walk(transport, forms, _Want(client_ref, sent_at))


async def _page(transport: Transport, params: dict[str, str]) -> Any:
    """One list answer's body; a refusal is :class:`_FormBroken`."""
    try:
        response = await transport.request("GET", "/v1/runs", params=params)
    except APIStatusError as exc:
        if exc.status in _FORM_REFUSALS:
            raise _FormBroken(f"the API refused it ({exc.status})") from exc
        if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
            # Not about the filter (401, 403, 404...): no form can do better.
            raise LookupRefused(f"the API refused it ({exc.status})") from exc
        raise LookupFailed(str(exc)) from exc
    except APIError as exc:
        raise LookupFailed(str(exc)) from exc
    return response.data


async def _by_client_ref(transport: Transport, client_ref: str) -> Run | None:
    """The ``client_ref`` form: the newest run carrying it, or ``None``."""
    params = {"q": term("client_ref", client_ref), "limit": "20", "sort_by": "created_at:desc"}
    data = await _page(transport, params)
    try:
        page = RunPage.model_validate(data)
    except pydantic.ValidationError as exc:
        raise LookupFailed(str(exc)) from exc
    if any(run.client_ref != client_ref for run in page.items):
        raise _FormBroken("the API ignored the client_ref filter")
    # client_refs we generate are unique per logical create; if a caller reused
    # one, the newest run with it is the best candidate (and no second bill).
    found = page.items[0] if page.items else None
    if found is not None and run_id_problem(found.id) is not None:
        raise LookupRefused("the run it lists has an id that is not usable")
    return found


async def _shared_walk(transport: Transport, forms: LookupForms, want: _Want) -> Run | None:
    """Wait for (or lead) the next walk that serves ``want``; its result."""
    forms.queue.append(want)
    try:
        while not want.done:
            if forms.walking and forms.walked is not None:
                await forms.walked.wait()
                continue
            await _lead(transport, forms)
    finally:
        if not want.done and want in forms.queue:
            forms.queue.remove(want)
    if want.error is not None:
        # Each lookup raises its own copy; the API's error stays the cause.
        raise type(want.error)(str(want.error)) from (want.error.__cause__ or want.error)
    return want.found


async def _lead(transport: Transport, forms: LookupForms) -> None:
    """Walk once for every lookup queued (those that join at once included)."""
    forms.walking, forms.walked = True, anyio.Event()
    wants: list[_Want] = []
    try:
        await anyio.lowlevel.checkpoint()  # lookups starting now join this walk
        wants = [w for w in forms.queue if isinstance(w, _Want)]
        forms.queue.clear()
        try:
            found = await _walk(transport, forms, wants)
        except (LookupFailed, LookupRefused) as exc:
            for w in wants:
                w.error, w.done = exc, True
        else:
            for w in wants:
                w.found, w.done = found.get(w.client_ref), True
    finally:
        forms.queue.extend(w for w in wants if not w.done)  # the leader was cancelled
        forms.walking = False
        forms.walked.set()


async def _walk(transport: Transport, forms: LookupForms, wants: list[_Want]) -> dict[str, Run]:
    """The newest run of each wanted ``client_ref`` listed back to the oldest bound."""
    refs = {w.client_ref for w in wants}
    earliest = min(w.sent_at for w in wants)
    while True:
        usable = [form for form in forms.usable() if form != "client_ref"]
        if forms.offset is None and "newest" not in usable:
            usable = []  # only a walk of the newest runs could teach the server's time
        if not usable:
            raise LookupRefused(_no_form(forms))
        form = "newest" if forms.offset is None else usable[0]
        try:
            return await _Walk(transport, forms, refs, earliest, form).run()
        except _FormBroken as exc:
            forms.refuse(form, str(exc))


def _no_form(forms: LookupForms) -> str:
    """Why no form of lookup is left, form by form."""
    reasons = [f"{form}: {why}" for form, why in forms.refused.items()]
    if "created_at" not in forms.refused:
        reasons.append("created_at: no run was ever listed to learn the server's time")
    return f"no form of lookup works on this server ({'; '.join(reasons)})"


def _created(item: dict[str, Any]) -> float:
    """An item's ``created_at`` in Unix seconds; :class:`_FormBroken` without one."""
    created = listed_created_at(item)
    if created is None:
        raise _FormBroken("a listed run has no usable created_at")
    return created.timestamp()


class _Walk:
    """One walk of the ``created_at`` or ``newest`` form for the ``client_ref`` values ``refs``."""

    def __init__(
        self,
        transport: Transport,
        forms: LookupForms,
        refs: set[str],
        earliest: float,
        form: str,
    ) -> None:
        self._transport = transport
        self._forms = forms
        self._refs = refs
        self._earliest = earliest
        self._form = form
        self._found: dict[str, Run] = {}
        self._last: float | None = None  # the oldest created_at listed so far
        self._sent_bound: float | None = None  # the created_at form's bound, as sent

    def _bound(self) -> float | None:
        """The bound in server time (Unix seconds), once the offset is known."""
        offset = self._forms.offset
        return None if offset is None else self._earliest + offset - MARGIN

    def _params(self) -> dict[str, str]:
        params = {"limit": str(PAGE_LIMIT), "sort_by": "created_at:desc"}
        bound = self._bound()
        if self._form == "created_at" and bound is not None:
            stamp = datetime.fromtimestamp(bound, UTC).isoformat(timespec="microseconds")
            params["q"] = f"created_at>={stamp}"
            self._sent_bound = datetime.fromisoformat(stamp).timestamp()
        return params

    async def run(self) -> dict[str, Run]:
        """Page until past the bound, the last page, or every ``client_ref`` found."""
        params = self._params()
        while True:
            data = await _page(self._transport, params)
            items = data.get("items") if isinstance(data, dict) else None
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise LookupFailed("the list answer has no items array")
            self._read(items)
            cursor = data.get("next_pq")
            if not items or not isinstance(cursor, str) or not cursor:
                return self._found
            if len(self._found) == len(self._refs):
                return self._found
            bound = self._bound()
            last = self._last
            if self._form == "newest" and bound is not None and last is not None and last < bound:
                return self._found
            params = {**params, "pq": cursor}

    def _read(self, items: list[dict[str, Any]]) -> None:
        """Check one page against the form and keep the wanted runs it lists."""
        if not items:
            return
        stamps = [_created(item) for item in items]
        self._forms.observe(max(stamps), self._transport.clock.now())
        if any(a < b for a, b in itertools.pairwise(stamps)) or (
            self._last is not None and stamps[0] > self._last
        ):
            raise _FormBroken("the API did not list runs newest first")
        bound = self._sent_bound
        if bound is not None and stamps[-1] < bound:
            raise _FormBroken("the API listed runs created before the created_at bound")
        self._last = stamps[-1]
        for item in items:
            ref = item.get("client_ref")
            if isinstance(ref, str) and ref in self._refs and ref not in self._found:
                self._keep(ref, item)

    def _keep(self, ref: str, item: dict[str, Any]) -> None:
        try:
            run = Run.model_validate(item)
        except pydantic.ValidationError as exc:
            raise LookupFailed(str(exc)) from exc
        if run_id_problem(run.id) is not None:
            raise LookupRefused("the run it lists has an id that is not usable")
        self._found[ref] = run

"""Which create each run belongs to, as far as this client knows.

A buggy server may answer two creates with one run id while it made (and
bills) a run for each; trusting the answer would settle both items on one
run and lose the other paid run. So an answer is not trusted when it names
another ``client_ref`` than the create's, or a run id this client already
gave to another create (:meth:`RunOwners.doubt`); nor is a run read later
whose ``client_ref`` is not the item's (:func:`not_ours`). Either way the
create is found again by its own ``client_ref``, over a visibility window
(:func:`._http.reclaim.reclaim`, and :func:`._http.create.create_run` for answers).
"""

from __future__ import annotations

from runflow_async._core.models import Run

__all__ = ["RunOwners", "not_ours"]

_REMEMBERED = 100_000  # run ids kept (the oldest are forgotten first)


def not_ours(run: Run, client_ref: str) -> bool:
    """Whether ``run`` says it belongs to another create than ``client_ref``'s."""
    return run.client_ref is not None and run.client_ref != client_ref


class RunOwners:
    """The ``client_ref`` each run id was given to by this client's creates (the newest ones)."""

    __slots__ = ("_owner",)

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}

    def doubt(self, run: Run, client_ref: str) -> str | None:
        """Why the answer ``run`` to the create ``client_ref`` cannot be trusted, or ``None``."""
        if not_ours(run, client_ref):
            return f"it names client_ref {run.client_ref}"
        owner = self._owner.get(run.id)
        if owner is not None and owner != client_ref:
            return f"that run was already given to the create with client_ref {owner}"
        return None

    def own(self, run_id: str, client_ref: str) -> None:
        """Record ``run_id`` as the run of the create ``client_ref`` (the latest word wins)."""
        self._owner.pop(run_id, None)
        if len(self._owner) >= _REMEMBERED:
            del self._owner[next(iter(self._owner))]  # the oldest
        self._owner[run_id] = client_ref

"""Finding a create's own run again once the run it was answered with proved another's."""

from __future__ import annotations

import logging

from runflow_async._core.errors import CreateOutcomeUnknownError
from runflow_async._core.models import Run
from runflow_async._http.create import look_for
from runflow_async._http.owners import not_ours
from runflow_async._http.transport import Transport

__all__ = ["not_ours", "reclaim"]

logger = logging.getLogger("runflow_async")


async def reclaim(transport: Transport, client_ref: str, idempotency_key: str, wrong: Run) -> Run:
    """The run of the create ``client_ref``, after ``wrong`` (taken for it) proved another's.

    ``wrong`` was read with another ``client_ref`` (:func:`not_ours`): the
    answer to the create named a run that is not its own. The create reached
    the server, so its run is looked up over a whole visibility window
    (counted from now: it was sent before, at a time not known, so nothing is
    learned and only the ``client_ref`` filter can find it), never created again.

    Raises:
        CreateOutcomeUnknownError: Not found, or absence cannot be established.
    """
    logger.warning(
        "Run %s, taken for the run of the create with client_ref %s, belongs to "
        "client_ref %s; looking that create up by its own client_ref.",
        wrong.id,
        client_ref,
        wrong.client_ref,
    )
    now = transport.clock.now()
    found = await look_for(transport, client_ref, idempotency_key, now, now, learn=False)
    if found is None:
        raise CreateOutcomeUnknownError(
            f"A create with client_ref {client_ref} may have been billed (it was answered "
            f"with run {wrong.id}, which is another create's) and its own run was not "
            "found; look it up before creating it again",
            client_ref=client_ref,
            idempotency_key=idempotency_key,
            method="GET",
            path="/v1/runs",
        )
    transport.owners.own(found.id, client_ref)
    return found

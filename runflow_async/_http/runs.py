"""Waiting for one run: growing poll intervals under a deadline.

Runflow has no long-poll or streaming endpoint, so waiting means reading the
run until its status is terminal. Reads start at ``initial_interval`` and back
off to ``max_interval`` (no fixed 0.1 s hammering). Status reads are retried by
the HTTP layer, not here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import (
    ConfigurationError,
    RunCanceledError,
    RunFailedError,
    RunTimeoutError,
)
from runflow_async._core.models import Run, RunStatus
from runflow_async._http.transport import Transport, is_plain_id, parse_response

__all__ = ["check_outcome", "check_run_id", "fetch_run", "poll_until_terminal"]

logger = logging.getLogger("runflow_async")


def check_run_id(run_id: str) -> None:
    """Refuse an id that is not a plain run id, before anything is sent.

    Raises:
        ConfigurationError: Empty, too long, or with characters outside
            ``A-Z a-z 0-9 . _ ~ -`` (or ``.``/``..``).
    """
    if not is_plain_id(run_id):
        raise ConfigurationError(f"Invalid run id {run_id!r}.")


async def fetch_run(transport: Transport, run_id: str) -> Run:
    """Read one run (``GET /v1/runs/{id}``; retried by the HTTP layer).

    Raises:
        ConfigurationError: ``run_id`` is not a plain run id; nothing was sent.
        APIResponseError: The answer is not a run.
    """
    check_run_id(run_id)
    path = f"/v1/runs/{run_id}"
    response = await transport.request("GET", path)
    return parse_response(Run, response.data, method="GET", path=path)


async def poll_until_terminal(
    fetch: Callable[[str], Awaitable[Run]],
    run_id: str,
    *,
    timeout: float | None,
    policy: PollPolicy,
    last: Run | None = None,
) -> Run:
    """Read the run until it is terminal and return it.

    Args:
        fetch: Reads the run by id.
        run_id: The run to wait for.
        timeout: Seconds before giving up (``None``: wait forever).
        policy: Poll spacing.
        last: The run as already known (skips a read if it is terminal).

    Raises:
        RunTimeoutError: The deadline passed; the run may still finish.
    """
    if last is not None and last.is_terminal:
        return last
    interval = policy.initial_interval
    warned: set[str] = set()
    with anyio.move_on_after(timeout):
        while True:
            await anyio.sleep(interval * policy.time_scale)
            last = await fetch(run_id)
            if last.is_terminal:
                return last
            if last.status is None and last.status_code not in warned:
                warned.add(str(last.status_code))
                logger.warning(
                    "Run %s has unknown status %r; still waiting.", run_id, last.status_code
                )
            interval = min(policy.max_interval, interval * policy.multiplier)
    run = last or Run(id=run_id)
    raise RunTimeoutError(
        f"Run {run_id} did not finish within {timeout}s (last status "
        f"{run.status_code or 'unknown'}); it may still finish and be billed, "
        "so fetch it later with get_run().",
        run=run,
    )


def check_outcome(run: Run) -> Run:
    """Return a succeeded run; raise for a failed or canceled one.

    Raises:
        RunFailedError: ``failed`` or ``errored``.
        RunCanceledError: ``canceled``/``cancelled``.
    """
    if run.succeeded:
        return run
    if run.canceled:
        raise RunCanceledError(f"Run {run.id} was canceled.", run=run)
    reason = run.failure_message or run.failure_code or "no reason given"
    status = run.status or RunStatus.FAILED
    raise RunFailedError(f"Run {run.id} {status.value}: {reason}.", run=run)

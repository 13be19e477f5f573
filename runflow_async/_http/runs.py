"""Reading runs: one read, and the one loop that polls a single run until it ends.

Runflow has no long-poll or streaming endpoint, so waiting for one run means
reading it until its status is terminal. Every single-run wait in the package
(``client.wait``/``run``, a batch's per-run fallback, the callback safety net)
is :func:`poll_run` with a different *schedule*: an iterator of gaps in emulated
seconds. :func:`growing` starts at ``initial_interval`` and backs off to
``max_interval``; the batch's learned schedule reads first near the expected
finish (``DurationStats.schedule``); :func:`fallback` reads rarely, for runs a
callback should report. Reads are retried by the transport; a read that still
fails with a retryable error is tried again at the next gap (the run goes on;
the caller's deadline bounds the wait), anything else is raised.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import anyio

from runflow_async._core.config import PollPolicy
from runflow_async._core.errors import (
    APIError,
    APIResponseError,
    ConfigurationError,
    NotFoundError,
    RunCanceledError,
    RunFailedError,
    RunTimeoutError,
)
from runflow_async._core.models import TERMINAL_STATUSES, Run, RunStatus
from runflow_async._http.transport import Transport, is_plain_id, parse_response

__all__ = [
    "PollState",
    "check_outcome",
    "check_run_id",
    "complete",
    "fallback",
    "fetch_run",
    "growing",
    "poll_run",
    "read_status",
    "wait_for_run",
]

logger = logging.getLogger("runflow_async")

_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)

BAD_READS = 5
"""Reads in a row that prove nothing about a run (HTML 200, 404, no outputs) before giving up."""
_KNOWN = frozenset(s.value for s in RunStatus)


def check_run_id(run_id: str) -> None:
    """Refuse an id that is not a plain run id, before anything is sent.

    Raises:
        ConfigurationError: Empty, too long, or with characters outside
            ``A-Z a-z 0-9 . _ ~ -`` (or ``.``/``..``).
    """
    if not is_plain_id(run_id):
        raise ConfigurationError(f"Invalid run id {run_id!r}.")


async def fetch_run(transport: Transport, run_id: str) -> Run:
    """Read one run (``GET /v1/runs/{id}``; retried by the transport).

    Raises:
        ConfigurationError: ``run_id`` is not a plain run id; nothing was sent.
        APIResponseError: The answer is not a run.
    """
    check_run_id(run_id)
    path = f"/v1/runs/{run_id}"
    response = await transport.request("GET", path)
    return parse_response(Run, response.data, method="GET", path=path)


def growing(policy: PollPolicy) -> Iterator[float]:
    """Gaps from ``initial_interval``, times ``multiplier``, up to ``max_interval``."""
    interval = policy.initial_interval
    while True:
        yield interval
        interval = min(policy.max_interval, interval * policy.multiplier)


def fallback(policy: PollPolicy) -> Iterator[float]:
    """``callback_fallback_after``, then every ``callback_fallback_interval``."""
    yield policy.callback_fallback_after
    yield from itertools.repeat(policy.callback_fallback_interval)


@dataclass
class PollState:
    """What a poll loop last saw (for the caller's timeout message)."""

    last_status: str | None = None
    reads: int = 0


def complete(run: Run) -> bool:
    """Whether ``run`` is terminal and, if it succeeded, shows its images."""
    return run.is_terminal and (not run.succeeded or bool(run.images))


async def poll_run(
    transport: Transport,
    run_id: str,
    *,
    schedule: Iterator[float],
    state: PollState | None = None,
    bad_reads: int = BAD_READS,
) -> Run:
    """Read ``run_id`` after each gap of ``schedule`` until it is :func:`complete`.

    Only a finished run is validated into a model. An unknown status is logged
    once and waited through. The run is known to exist, so a read that proves
    nothing about it (a 200 that is not a run, such as a proxy's HTML page; a
    404 from a lagging replica; a succeeded run shown without its outputs) is
    tried again, up to ``bad_reads`` times in a row.

    Raises:
        APIError: A read failed for good (a refused key, ``bad_reads`` bad reads).
    """
    check_run_id(run_id)
    path = f"/v1/runs/{run_id}"
    state = state if state is not None else PollState()
    warned = False
    bad = 0
    for gap in schedule:
        await transport.clock.sleep(gap)
        try:
            run = await read_status(transport, path, state)
        except APIError as exc:
            transient = exc.retryable or isinstance(exc, APIResponseError | NotFoundError)
            bad = 0 if exc.retryable else bad + 1
            if not transient or bad > bad_reads:
                raise
            logger.info("Reading run %s failed (%s); reading it again later.", run_id, exc)
            continue
        if run is None:  # not finished
            bad = 0
            status = state.last_status
            if status not in _KNOWN and not warned:
                warned = True
                logger.warning("Run %s has unknown status %r; still waiting.", run_id, status)
        elif complete(run):
            return run
        elif (bad := bad + 1) > bad_reads:
            raise APIResponseError(
                f"Run {run_id} succeeded but {bad} reads showed no outputs; its images "
                "are billed: read it later with get_run()",
                method="GET",
                path=path,
            )
        else:
            logger.info("Run %s succeeded but shows no outputs yet; reading it again.", run_id)
    raise AssertionError("a poll schedule never ends")  # pragma: no cover


async def read_status(transport: Transport, path: str, state: PollState) -> Run | None:
    """One poll of ``path``: the run if it is terminal, else ``None`` (no model built).

    What every single-run poll loop sends per read (:func:`poll_run`).
    """
    response = await transport.request("GET", path)
    state.reads += 1
    data = response.data
    status = data.get("status_code") if isinstance(data, dict) else None
    if isinstance(status, str) and status not in _TERMINAL:
        state.last_status = status
        return None
    run = parse_response(Run, data, method="GET", path=path)
    state.last_status = run.status_code
    return run if run.is_terminal else None


async def wait_for_run(
    transport: Transport,
    run_id: str,
    *,
    timeout: float | None,
    policy: PollPolicy,
    last: Run | None = None,
) -> Run:
    """Poll on the :func:`growing` schedule under a deadline of ``timeout`` real seconds.

    Raises:
        RunTimeoutError: The deadline passed; the run may still finish.
    """
    if last is not None and complete(last):
        return last
    state = PollState(last_status=last.status_code if last is not None else None)
    with anyio.move_on_after(timeout):
        return await poll_run(transport, run_id, schedule=growing(policy), state=state)
    raise RunTimeoutError(
        f"Run {run_id} did not finish within {timeout}s (last status "
        f"{state.last_status or 'unknown'}); it may still finish and be billed, "
        "so fetch it later with get_run().",
        run=Run(id=run_id, status_code=state.last_status)
        if state.reads
        else last or Run(id=run_id),
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
    reason = run.failure_reason or "no reason given"
    status = run.status or RunStatus.FAILED
    raise RunFailedError(f"Run {run.id} {status.value}: {reason}.", run=run)

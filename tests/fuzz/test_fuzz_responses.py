"""Reads against a server that answers anything: a parsed model or a typed error, never a hang.

Every answer comes from a real aiohttp handler on loopback (``stage``): arbitrary
JSON, bytes, truncated runs, bodies cut off mid-transfer, any status, odd headers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pydantic
import pytest
from aiohttp import web
from hypothesis import event, given
from hypothesis import strategies as st

from runflow_async import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    ConfigurationError,
    Run,
    RunCanceledError,
    RunError,
    RunFailedError,
    RunflowError,
    RunPage,
    RunTimeoutError,
)
from runflow_async._http.errors import error_for_status
from tests.conftest import Handler, make_client
from tests.fuzz.support import (
    NO_BODY,
    Reply,
    Script,
    Stage,
    async_settings,
    dumps,
    good_runs,
    replies,
)

Start = Callable[[Handler], Awaitable[str]]
MAX_ATTEMPTS = 5  # RetryPolicy's default, which make_client keeps
LIMIT = 10  # real seconds; every call here takes milliseconds


def retryable(reply: Reply) -> bool:
    return (
        (reply.cut and reply.status not in NO_BODY) or reply.status in (429,) or reply.status >= 500
    )


def expected_read(
    reply: Reply, model: type[Run] | type[RunPage]
) -> Run | RunPage | type[RunflowError]:
    """What one read answered by ``reply`` (every time) must end in, by the documented rules."""
    if reply.cut and reply.status not in NO_BODY:
        return APIConnectionError
    if not 200 <= reply.status < 300:
        return error_for_status(reply.status)
    body = b"" if reply.status in NO_BODY else reply.body
    try:
        data = json.loads(body) if body.strip() else None
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read
        return APIResponseError
    try:
        return model.model_validate(data)
    except pydantic.ValidationError:
        return APIResponseError


def check(outcome: Run | RunPage | RunflowError, expected: Any, reply: Reply) -> None:
    if isinstance(expected, type):
        assert type(outcome) is expected, (outcome, reply)
        assert isinstance(outcome, RunflowError)
        if isinstance(outcome, APIStatusError):
            assert outcome.status == reply.status
    else:
        # A NaN the body carries (an extra field the model keeps) is never == itself,
        # so identical models may compare unequal: then their full JSON dumps must match.
        assert isinstance(outcome, Run | RunPage)
        assert type(outcome) is type(expected)
        assert outcome == expected or outcome.model_dump_json() == expected.model_dump_json()


@async_settings()
@given(
    reply=replies,
    run_id=st.from_regex(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,11}", fullmatch=True),
)
async def test_get_run_ends_in_a_run_or_a_typed_error(
    stage: Stage, reply: Reply, run_id: str
) -> None:
    script = stage.play(Script(gets=[reply]))
    outcome: Run | RunflowError
    async with make_client(stage.url) as client:
        with anyio.fail_after(LIMIT):
            try:
                outcome = await client.get_run(run_id)
            except RunflowError as exc:
                outcome = exc
    event(f"outcome: {type(outcome).__name__}")
    check(outcome, expected_read(reply, Run), reply)
    assert script.count("GET") == (MAX_ATTEMPTS if retryable(reply) else 1)


@async_settings()
@given(reply=replies)
async def test_list_runs_ends_in_a_page_or_a_typed_error(stage: Stage, reply: Reply) -> None:
    script = stage.play(Script(gets=[reply]))
    outcome: RunPage | RunflowError
    async with make_client(stage.url) as client:
        with anyio.fail_after(LIMIT):
            try:
                outcome = await client.list_runs(limit=3, q="status_code:succeeded")
            except RunflowError as exc:
                outcome = exc
    check(outcome, expected_read(reply, RunPage), reply)
    assert script.count("GET") == (MAX_ATTEMPTS if retryable(reply) else 1)


run_replies = st.builds(
    lambda run, status: Reply(200, dumps({**run, "status_code": status})),
    good_runs,
    st.sampled_from(["queued", "running", "succeeded", "partial_succeeded", "failed", "canceled"])
    | st.text(max_size=8),
)


@async_settings()
@given(answers=st.lists(st.one_of(run_replies, run_replies, replies), min_size=1, max_size=4))
async def test_wait_ends_in_a_finished_run_or_a_typed_error(
    stage: Stage, answers: list[Reply]
) -> None:
    script = stage.play(Script(gets=answers))
    async with make_client(stage.url) as client:
        with anyio.fail_after(LIMIT):
            try:
                outcome: Run | RunflowError = await client.wait("run-1", timeout=0.05)
            except RunflowError as exc:
                outcome = exc
    event(f"outcome: {type(outcome).__name__}")
    if not script.log:  # a loaded machine: the deadline passed before the first read
        assert isinstance(outcome, RunTimeoutError)
        return
    last = expected_read(script.log[-1][1], Run)
    if isinstance(outcome, RunError):
        assert type(outcome) in (RunFailedError, RunCanceledError, RunTimeoutError)
        assert outcome.run_id in (outcome.run.id, "run-1")
        assert isinstance(outcome, RunTimeoutError) or outcome.run.is_terminal
    elif isinstance(outcome, RunflowError):
        # A read failed: it must be what the latest answer ends in, or (a
        # succeeded run shown without its images, read again and again) a
        # typed error that says so; never a "success" without images.
        if isinstance(last, Run) and last.succeeded and not last.images:
            assert isinstance(outcome, APIResponseError), outcome
        else:
            assert last is type(outcome), (outcome, script.log[-1])
    else:
        assert outcome.is_terminal
        assert outcome.succeeded
        assert outcome.images
        assert outcome == last


@st.composite
def truncated_runs(draw: st.DrawFn) -> Reply:
    """A reply carrying only a prefix of a well-formed run's JSON."""
    whole = dumps(draw(good_runs))
    cut_at = draw(st.integers(1, len(whole) - 1))
    return Reply(200, whole[:cut_at], cut=draw(st.booleans()))


# No st.data() in async properties: a draw that overruns inside the event loop
# raises hypothesis's StopTest through anyio's runner and breaks it.
@async_settings()
@given(reply=truncated_runs())
async def test_truncated_runs_are_response_errors_not_crashes(stage: Stage, reply: Reply) -> None:
    stage.play(Script(gets=[reply]))
    async with make_client(stage.url) as client:
        with anyio.fail_after(LIMIT), pytest.raises((APIResponseError, APIConnectionError)) as info:
            await client.get_run("run-1")
    # A strict prefix of a JSON object is never JSON; a cut-off transfer is a connection error.
    assert isinstance(info.value, APIConnectionError) == reply.cut


class PathRecorder:
    """Answers every read with a run and remembers the path and query it was asked for."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.query_string))
        return web.json_response({"id": "r"})


# Run ids as the client accepts them: URL-unreserved characters only.
plain_ids = st.from_regex(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,15}", fullmatch=True)


@async_settings()
@given(run_id=plain_ids)
async def test_reads_ask_for_exactly_the_run_id_given(inline_server: Start, run_id: str) -> None:
    recorder = PathRecorder()
    async with make_client(await inline_server(recorder.handle)) as client:
        with anyio.fail_after(LIMIT):
            await client.get_run(run_id)
    assert recorder.seen == [(f"/v1/runs/{run_id}", "")]


@pytest.mark.parametrize("run_id", ["r?limit=500", "r#x", "%2e%2e", "a%2Fb", "\r", "r\n"])
async def test_reads_never_ask_for_another_resource(inline_server: Start, run_id: str) -> None:
    recorder = PathRecorder()
    async with make_client(await inline_server(recorder.handle)) as client:
        with pytest.raises(ConfigurationError):
            await client.get_run(run_id)
    assert recorder.seen == []  # refused before anything was sent

"""The HTTP layer against tiny inline servers: retries, error mapping, headers."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from aiohttp import web

from runflow_async import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    NotFoundError,
    RateLimitError,
    RetryEvent,
    RetryPolicy,
    RunflowClient,
    ServerError,
    Timeouts,
    UnprocessableEntityError,
)
from runflow_async._http.retry import nominal_wait, parse_retry_after
from tests.conftest import API_KEY, TIME_SCALE, Handler, make_client

Start = Callable[[Handler], Awaitable[str]]

RUN = {"id": "run-1", "status_code": "succeeded", "output": {"outputs": []}}


def json_response(status: int, body: object, **headers: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


class Script:
    """Answers requests from a list, one response factory per request, then 200 RUN."""

    def __init__(self, *steps: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.steps = list(steps)
        self.seen: list[web.Request] = []
        self.headers: list[dict[str, str]] = []

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        self.headers.append(dict(request.headers))
        if self.steps:
            return await self.steps.pop(0)(request)
        return json_response(200, RUN)


def status(code: int, body: object = None, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return json_response(
            code, body if body is not None else {"code": "X", "message": "m"}, **headers
        )

    return handler


async def html_502(request: web.Request) -> web.StreamResponse:
    return web.Response(
        status=502,
        text="<html><body><h1>502 Bad Gateway</h1></body></html>",
        content_type="text/html",
    )


async def drop(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    return web.Response()


async def test_get_survives_5xx_html_pages_and_dropped_connections(inline_server: Start) -> None:
    script = Script(status(500), html_502, drop, status(503))
    url = await inline_server(script)
    events: list[RetryEvent] = []
    async with make_client(url, on_retry=events.append) as client:
        run = await client.get_run("run-1")
    assert run.id == "run-1"
    assert len(script.seen) == 5
    # aiohttp itself resends an idempotent request once when a reused
    # keep-alive connection drops, so the drop may not reach our retry loop.
    names = [type(e.error).__name__ for e in events]
    assert names[:2] == ["ServerError", "ServerError"]
    assert names[-1] == "ServiceUnavailableError"
    assert set(names) <= {"ServerError", "APIConnectionError", "ServiceUnavailableError"}


async def test_get_survives_repeated_dropped_connections(inline_server: Start) -> None:
    # aiohttp resends once on its own; the second drop reaches our retry loop.
    script = Script(drop, drop)
    url = await inline_server(script)
    events: list[RetryEvent] = []
    async with make_client(url, on_retry=events.append) as client:
        assert (await client.get_run("run-1")).id == "run-1"
    assert len(script.seen) == 3
    assert [type(e.error) for e in events] == [APIConnectionError]
    assert events[0].error.sent is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("code", "error_type"),
    [(401, AuthenticationError), (404, NotFoundError), (422, UnprocessableEntityError)],
)
async def test_client_errors_are_not_retried_and_carry_details(
    inline_server: Start, code: int, error_type: type[APIStatusError]
) -> None:
    body = {"code": "SOME_CODE", "message": "Nope.", "errors": [{"field": "input.prompt"}]}
    script = Script(status(code, body, **{"X-Request-Id": "req_abc"}))
    url = await inline_server(script)
    async with make_client(url) as client:
        with pytest.raises(error_type) as info:
            await client.get_run("run-1")
    err = info.value
    assert len(script.seen) == 1
    assert err.status == code
    assert err.code == "SOME_CODE"
    assert err.message == f"HTTP {code} SOME_CODE: Nope."
    assert err.errors == [{"field": "input.prompt"}]
    assert err.request_id == "req_abc"
    assert err.retryable is False
    assert "GET /v1/runs/run-1" in str(err)
    assert "req_abc" in str(err)


async def test_fastapi_detail_bodies_are_parsed(inline_server: Start) -> None:
    detail = [{"loc": ["body", "input", "prompt"], "msg": "field required"}]
    url = await inline_server(Script(status(422, {"detail": detail})))
    async with make_client(url) as client:
        with pytest.raises(UnprocessableEntityError) as info:
            await client.get_run("x")
    assert info.value.errors == detail
    assert info.value.code is None


async def test_retries_stop_after_max_attempts(inline_server: Start) -> None:
    script = Script(*[status(500)] * 10)
    url = await inline_server(script)
    policy = RetryPolicy(max_attempts=3, time_scale=TIME_SCALE)
    async with make_client(url, retry=policy) as client:
        with pytest.raises(ServerError):
            await client.get_run("x")
    assert len(script.seen) == 3


async def test_retry_after_seconds_is_honoured_and_capped(inline_server: Start) -> None:
    script = Script(
        status(429, None, **{"Retry-After": "7"}), status(429, None, **{"Retry-After": "9999"})
    )
    url = await inline_server(script)
    events: list[RetryEvent] = []
    async with make_client(url, on_retry=events.append) as client:
        await client.get_run("x")
    assert [e.wait for e in events] == pytest.approx([7.0, 60.0])
    assert all(isinstance(e.error, RateLimitError) for e in events)


async def test_429_without_retry_after_still_backs_off(inline_server: Start) -> None:
    url = await inline_server(Script(status(429), status(429)))
    events: list[RetryEvent] = []
    async with make_client(url, on_retry=events.append) as client:
        await client.get_run("x")
    # Full jitter would allow ~0; a rate limit waits at least half the ceiling.
    assert events[0].wait >= 0.5
    assert events[1].wait >= 1.0


def test_retry_after_parses_http_dates_and_rejects_garbage() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert (
        parse_retry_after(
            format_datetime(now - timedelta(seconds=5), usegmt=True), now=now.timestamp()
        )
        == 0.0
    )
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00") is None  # no zone
    assert parse_retry_after(later) is not None


def test_backoff_ceiling_doubles_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(jitter=False, initial_wait=1, max_wait=4)
    assert [nominal_wait(policy, n, None) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    jittered = RetryPolicy(initial_wait=1, max_wait=4)
    assert all(0 <= nominal_wait(jittered, 3, None) <= 4 for _ in range(50))


async def test_success_body_that_is_not_json_is_a_response_error(inline_server: Start) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, text="<html>ok</html>", content_type="text/html")

    url = await inline_server(handler)
    async with make_client(url) as client:
        with pytest.raises(APIResponseError, match="not JSON"):
            await client.get_run("x")


async def test_success_body_of_the_wrong_shape_is_a_response_error(inline_server: Start) -> None:
    url = await inline_server(Script(status(200, {"no": "id"})))
    async with make_client(url) as client:
        with pytest.raises(APIResponseError, match="Unexpected response shape"):
            await client.get_run("x")


async def test_empty_success_body_reads_as_none(inline_server: Start) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    url = await inline_server(handler)
    async with make_client(url) as client:
        assert await client.health() == {"body": None}


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_retried_then_raised_as_not_sent() -> None:
    events: list[RetryEvent] = []
    policy = RetryPolicy(max_attempts=2, time_scale=TIME_SCALE)
    async with make_client(
        f"http://127.0.0.1:{unused_port()}", retry=policy, on_retry=events.append
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.get_run("x")
    assert info.value.sent is False
    assert len(events) == 1


async def test_read_timeout_raises_a_timeout_error(inline_server: Start) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        import asyncio

        await asyncio.sleep(0.05)
        return json_response(200, RUN)

    url = await inline_server(slow)
    policy = RetryPolicy(max_attempts=1)
    async with make_client(url, retry=policy, timeouts=Timeouts(read=0.005)) as client:
        with pytest.raises(APITimeoutError) as info:
            await client.get_run("x")
    assert isinstance(info.value, TimeoutError)
    assert info.value.sent is True


async def test_requests_carry_auth_user_agent_and_organisation(inline_server: Start) -> None:
    script = Script()
    url = await inline_server(script)
    async with RunflowClient(API_KEY, base_url=url + "/", organization_id="org-9") as client:
        await client.get_run("run-1")
    headers = script.headers[0]
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["User-Agent"].startswith("runflow-async/")
    assert headers["X-Organization-Id"] == "org-9"
    assert script.seen[0].path == "/v1/runs/run-1"


async def test_a_borrowed_session_is_used_and_left_open(inline_server: Start) -> None:
    script = Script()
    url = await inline_server(script)
    async with aiohttp.ClientSession() as session:
        async with RunflowClient(API_KEY, base_url=url, session=session) as client:
            await client.get_run("run-1")
        assert not session.closed
    assert len(script.seen) == 1


async def test_closed_client_refuses_work_and_close_is_idempotent(inline_server: Start) -> None:
    url = await inline_server(Script())
    client = make_client(url)
    async with client:
        assert "open" in repr(client)
    await client.aclose()
    assert client.closed
    assert "closed" in repr(client)
    with pytest.raises(ClientClosedError):
        await client.get_run("run-1")


async def test_api_key_never_appears_in_reprs_errors_or_logs(
    inline_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "rf_live_SUPERSECRET_do_not_leak"
    body = {"code": "UNAUTHORIZED", "message": "bad token"}
    url = await inline_server(Script(status(500), status(401, body)))
    caplog.set_level(logging.DEBUG)
    async with make_client(url, api_key=secret) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_run("run-1")
        texts = [repr(client), str(client), repr(client._transport.__dict__)]
    texts += [str(info.value), repr(info.value), repr(info.value.__dict__), caplog.text]
    assert caplog.records, "the retry should have been logged"
    for text in texts:
        assert secret not in text

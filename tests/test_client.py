"""RunflowClient end to end against the emulator (and inline servers for rare statuses)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web
from PIL import Image

from runflow_async import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    CreateOutcomeUnknownError,
    GenerateRequest,
    PricingPolicy,
    RequestValidationError,
    RunCanceledError,
    RunFailedError,
    RunflowClient,
    RunTimeoutError,
    Timeouts,
)
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY, TIME_SCALE, Handler, client_tasks, make_client

Start = Callable[[Handler], Awaitable[str]]


async def test_generate_returns_images_cost_and_seed(
    client: RunflowClient, emulator: Emulator
) -> None:
    result = await client.generate("a fox", image_size="portrait_16_9", num_images=2, seed=5)
    assert [(i.width, i.height) for i in result.images] == [(576, 1024), (576, 1024)]
    assert result.cost_usd == PricingPolicy().generate_cost((576, 1024), 2)
    assert result.seed == 5
    assert result.partial is False
    assert result.run.status_code == "succeeded"
    assert emulator.counters.runs_billed == 1
    assert emulator.counters.billed_usd == result.cost_usd


async def test_edit_bills_inputs_and_outputs(client: RunflowClient) -> None:
    result = await client.edit(
        "make it night", image_urls=["https://example.com/a.png"], image_size="square_hd"
    )
    assert result.cost_usd == PricingPolicy().edit_cost([None], (1024, 1024))
    assert result.run.input is not None
    assert result.run.input["image_urls"] == ["https://example.com/a.png"]


async def test_downloaded_image_has_the_requested_size_and_format(
    client: RunflowClient, tmp_path: Path
) -> None:
    result = await client.generate("a cube", image_size=(320, 192), output_format="webp")
    saved = await client.download(result.images[0], tmp_path / "out" / "cube.webp")
    with Image.open(saved.path) as img:
        assert (img.size, img.format) == ((320, 192), "WEBP")
    assert saved.size == saved.path.stat().st_size
    assert len(saved.sha256) == 64
    assert [p.name for p in saved.path.parent.iterdir()] == ["cube.webp"]  # no temp files


async def test_downloads_never_carry_the_api_key(inline_server: Start, tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    async def storage(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        if request.path == "/expired.png":
            return web.Response(status=403, text="expired")
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "PNG")
        return web.Response(body=buf.getvalue(), content_type="image/png")

    url = await inline_server(storage)
    async with make_client("http://127.0.0.1:9") as client:
        saved = await client.download(f"{url}/img.png?sig=abc", tmp_path / "img.png")
        with pytest.raises(Exception, match="403") as info:
            await client.download(f"{url}/expired.png?sig=secret", tmp_path / "x.png")
    assert saved.content_type == "image/png"
    assert all("Authorization" not in h for h in seen)
    assert "sig=secret" not in str(info.value)
    assert not (tmp_path / "x.png").exists()


async def test_failed_run_raises_with_failure_code_and_message(
    client: RunflowClient, emulator: Emulator
) -> None:
    emulator.faults.next("create", Fault.fail_run(code="NSFW_BLOCKED", message="Blocked."))
    with pytest.raises(RunFailedError) as info:
        await client.generate("x")
    err = info.value
    assert (err.failure_code, err.failure_message) == ("NSFW_BLOCKED", "Blocked.")
    assert err.run.id in str(err)
    assert emulator.counters.runs_billed == 0
    returned = await client.wait(err.run_id, check=False)
    assert returned.status_code == "failed"


async def test_wait_deadline_raises_cleanly_and_leaves_no_task() -> None:
    async with (
        Emulator(time_scale=TIME_SCALE, median_duration=10_000, duration_sigma=0) as emu,
        make_client(emu.url) as client,
    ):
        run = await client.submit(GenerateRequest(prompt="slow"))
        before = client_tasks()
        with pytest.raises(RunTimeoutError) as info:
            await client.wait(run.id, timeout=0.02)
        assert client_tasks() == before
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.run_id == run.id
    assert err.run.status_code in {"queued", "dispatching", "running"}
    assert "may still finish" in str(err)


def status_server(statuses: list[str], **extra: object) -> Handler:
    """Answers GET /v1/runs/{id} with each status in turn (the last one repeats)."""
    seq = list(statuses)

    async def handler(request: web.Request) -> web.StreamResponse:
        status = seq.pop(0) if len(seq) > 1 else seq[0]
        body: dict[str, object] = {"id": "r1", "status_code": status, **extra}
        if status in {"succeeded", "partial_succeeded"}:
            body["output"] = {"outputs": [{"url": "https://x/1.png"}]}
        return web.json_response(body)

    return handler


@pytest.mark.parametrize(
    ("statuses", "outcome"),
    [
        (["queued", "dispatching", "running", "succeeded"], "succeeded"),
        (["running", "partial_succeeded"], "partial_succeeded"),
        (["running", "teleporting", "succeeded"], "succeeded"),
        (["queued", "failed"], RunFailedError),
        (["queued", "errored"], RunFailedError),
        (["running", "canceled"], RunCanceledError),
        (["running", "cancelled"], RunCanceledError),
    ],
)
async def test_every_documented_status_is_handled(
    inline_server: Start, statuses: list[str], outcome: str | type[Exception]
) -> None:
    url = await inline_server(status_server(statuses))
    async with make_client(url) as client:
        if isinstance(outcome, str):
            run = await client.wait("r1")
            assert run.status_code == outcome
        else:
            with pytest.raises(outcome):
                await client.wait("r1")


async def test_partial_success_returns_what_was_made_and_says_so(inline_server: Start) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.json_response({"id": "r1", "status_code": "queued"}, status=201)
        return await status_server(["partial_succeeded"], cost="0.003")(request)

    url = await inline_server(handler)
    async with make_client(url) as client:
        result = await client.generate("two cats", num_images=2)
    assert result.partial is True
    assert len(result.images) == 1
    assert result.cost_usd == Decimal("0.003")


async def test_unknown_status_is_logged_once_and_polling_continues(
    inline_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    url = await inline_server(status_server(["warping", "warping", "warping", "succeeded"]))
    async with make_client(url) as client:
        run = await client.wait("r1")
    assert run.succeeded
    assert sum("warping" in r.getMessage() for r in caplog.records) == 1


async def test_invalid_requests_never_reach_the_emulator(
    client: RunflowClient, emulator: Emulator
) -> None:
    with pytest.raises(RequestValidationError, match="num_images"):
        await client.generate("x", num_images=9)
    with pytest.raises(RequestValidationError, match="prompt"):
        await client.generate("")
    with pytest.raises(RequestValidationError, match="image_urls"):
        await client.edit("x", image_urls=[])
    with pytest.raises(RequestValidationError, match="colour"):
        await client.generate("x", colour="red")
    with pytest.raises(ConfigurationError):
        await client.get_run("../etc")
    with pytest.raises(ConfigurationError):
        await client.list_runs(limit=501)
    counters = emulator.counters
    assert counters.runs_created == 0
    assert sum(counters.requests_by_route.values()) == 0


async def test_list_runs_pages_with_cursors(client: RunflowClient) -> None:
    created = [await client.submit(GenerateRequest(prompt=f"p{i}")) for i in range(5)]
    first = await client.list_runs(limit=2, sort_by="created_at:asc")
    assert [r.id for r in first.items] == [r.id for r in created[:2]]
    assert first.next_cursor
    second = await client.list_runs(limit=2, cursor=first.next_cursor, sort_by="created_at:asc")
    assert [r.id for r in second.items] == [r.id for r in created[2:4]]
    everything = [r.id async for r in client.iter_runs(page_size=2, sort_by="created_at:asc")]
    assert everything == [r.id for r in created]
    only = await client.list_runs(q=f"id:{created[3].id}", fields=["status_code"])
    assert [r.id for r in only.items] == [created[3].id]
    assert only.items[0].input is None


async def test_health(client: RunflowClient) -> None:
    assert await client.health()


async def test_the_api_key_stays_out_of_logs_and_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "rf_live_TOPSECRET_42"
    caplog.set_level(logging.DEBUG)
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu:
        emu.faults.next("create", Fault.status(500))
        async with make_client(emu.url, api_key=secret) as client:
            with pytest.raises(CreateOutcomeUnknownError) as info:
                await client.generate("x")
            err = info.value
            text = repr(client) + str(err) + repr(err) + str(err.__cause__)
    # A 500 makes the create ambiguous; the lookup's 401 cannot prove it absent.
    assert isinstance(err.__cause__, AuthenticationError)
    assert secret not in text
    assert secret not in caplog.text
    assert secret not in json.dumps([r.__dict__ for r in caplog.records], default=str)


async def test_a_run_created_already_finished_is_not_polled(inline_server: Start) -> None:
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.method)
        output = {"outputs": [{"url": "https://files.invalid/0.png"}]}
        body = {"id": "r1", "status_code": "succeeded", "output": output}
        return web.json_response(body, status=201)

    url = await inline_server(handler)
    async with make_client(url) as client:
        result = await client.generate("instant", sync_mode=True)
    assert result.run_id == "r1"
    assert calls == ["POST"]


async def test_download_failures_are_typed_and_leave_no_file(
    inline_server: Start, tmp_path: Path
) -> None:
    async def storage(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow.png":
            await asyncio.sleep(0.05)
        else:
            assert request.transport is not None
            request.transport.close()
        return web.Response(body=b"x")

    url = await inline_server(storage)
    async with make_client("http://127.0.0.1:9", timeouts=Timeouts(read=0.005)) as client:
        with pytest.raises(APITimeoutError):
            await client.download(f"{url}/slow.png", tmp_path / "slow.png")
        with pytest.raises(APIConnectionError):
            await client.download(f"{url}/drop.png", tmp_path / "drop.png")
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_downloads_through_a_lent_session_drop_its_credentials(
    inline_server: Start, tmp_path: Path
) -> None:
    seen: list[dict[str, str]] = []

    async def storage(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        return web.Response(body=b"\x89PNG\r\n\x1a\n", content_type="image/png")

    url = await inline_server(storage)
    headers = {"Authorization": "Bearer lent-secret", "X-Custom": "1"}
    async with aiohttp.ClientSession(headers=headers, cookies={"session": "c0ffee"}) as lent:
        async with RunflowClient(API_KEY, base_url="http://127.0.0.1:9", session=lent) as c:
            await c.download(f"{url}/x.png", tmp_path / "x.png")
        assert not lent.closed
    assert "Authorization" not in seen[0]
    assert "X-Custom" not in seen[0]
    assert "Cookie" not in seen[0]

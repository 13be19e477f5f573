"""Uploading assets: the three calls, no key to storage, retries, restarts and refusals."""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from runflow_async import (
    MAX_UPLOAD_BYTES,
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    Asset,
    BadRequestError,
    ClientClosedError,
    EditRequest,
    NotFoundError,
    PermissionDeniedError,
    PricingPolicy,
    RequestValidationError,
    RetryEvent,
    RetryPolicy,
    RunflowClient,
    ServerError,
    UnprocessableEntityError,
)
from runflow_async._http import assets as _assets
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY, TIME_SCALE, make_client

Server = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]


def png(size: tuple[int, int] = (640, 480)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


DATA = png()


def routes(emulator: Emulator) -> dict[str, int]:
    names = ("asset_upload", "upload_put", "asset_confirm", "get_asset", "asset_file")
    return {name: emulator.counters.requests_by_route[name] for name in names}


async def test_upload_makes_an_asset_in_three_calls_without_sending_the_key_to_storage(
    emulator: Emulator, client: RunflowClient, tmp_path: Path
) -> None:
    asset = await client.upload(DATA, filename="fox.png")
    downloaded = await client.download(asset.url, tmp_path / "copy.png")
    assert isinstance(asset, Asset)
    assert (asset.name, asset.mime_type, asset.size_bytes) == ("fox.png", "image/png", len(DATA))
    assert (asset.width, asset.height) == (640, 480)
    assert asset.created_at is not None
    assert asset.model_extra is not None
    assert asset.model_extra["source_type"] == "upload"
    assert (tmp_path / "copy.png").read_bytes() == DATA
    assert downloaded.content_type == "image/png"
    assert routes(emulator) == {
        "asset_upload": 1,
        "upload_put": 1,
        "asset_confirm": 1,
        "get_asset": 0,
        "asset_file": 1,
    }
    assert emulator.counters.credentials_on_presigned == 0
    assert "sig" not in repr(asset)
    assert repr(asset).startswith(f"Asset(id={asset.id!r}")


@pytest.mark.parametrize(
    ("data", "mime_type"),
    [
        (png((8, 8)), "image/png"),
        (b"\xff\xd8\xff\xe0" + bytes(20), "image/jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(20), "image/webp"),
        (b"GIF87a" + bytes(20), "image/gif"),
        (b"GIF89a" + bytes(20), "image/gif"),
    ],
)
async def test_the_type_is_read_from_the_magic_bytes(
    client: RunflowClient, data: bytes, mime_type: str
) -> None:
    asset = await client.upload(data, filename="x")
    assert asset.mime_type == mime_type


async def test_a_path_is_read_and_named_after_the_file(
    client: RunflowClient, tmp_path: Path
) -> None:
    path = tmp_path / "lake.png"
    path.write_bytes(DATA)
    by_path = await client.upload(path)
    by_str = await client.upload(str(path), filename="renamed.png")
    assert by_path.name == "lake.png"
    assert by_str.name == "renamed.png"
    assert by_path.id != by_str.id


async def test_an_explicit_type_is_sent_as_given_even_for_unknown_bytes(
    client: RunflowClient,
) -> None:
    asset = await client.upload(b"not an image at all", filename="x.png", mime_type="image/png")
    assert asset.mime_type == "image/png"
    assert (asset.width, asset.height) == (None, None)


async def test_inline_server_sees_three_calls_in_order_and_a_put_without_authorization(
    inline_server: Server,
) -> None:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.method, request.path_qs, dict(request.headers), body))
        base = f"http://{request.host}"
        if request.path == "/v1/asset-uploads":
            return web.json_response(
                {"asset_id": "a1", "upload_url": f"{base}/store/a1?X-Sig=secret"}, status=201
            )
        if request.method == "PUT":
            return web.Response(status=204)
        asset = {"id": "a1", "url": f"{base}/get/a1?sig=s", "name": "fox.png"}
        return web.json_response({**asset, "mime_type": "image/png", "size_bytes": 3}, status=201)

    url = await inline_server(handler)
    # A lent session with a default Authorization header of its own: none of it may leak.
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer lent-secret"}) as lent,
        RunflowClient(API_KEY, base_url=url, session=lent) as client,
    ):
        asset = await client.upload(DATA, filename="fox.png")
    assert [(method, path) for method, path, _, _ in seen] == [
        ("POST", "/v1/asset-uploads"),
        ("PUT", "/store/a1?X-Sig=secret"),
        ("POST", "/v1/asset-uploads/a1/confirmations"),
    ]
    create, upload, confirm = seen
    assert json.loads(create[3]) == {
        "filename": "fox.png",
        "mime_type": "image/png",
        "size_bytes": len(DATA),
    }
    assert create[2]["Authorization"] == f"Bearer {API_KEY}"
    assert "Authorization" not in upload[2]
    assert upload[2]["Content-Type"] == "image/png"
    assert upload[2]["Content-Length"] == str(len(DATA))
    assert upload[3] == DATA
    assert "Cookie" not in upload[2]
    assert confirm[3] == b"{}"
    assert confirm[2]["Authorization"] == f"Bearer {API_KEY}"
    assert asset.width == 640  # measured, as the API does not say


async def test_a_file_over_the_limit_is_refused_before_it_is_read_or_sent(
    emulator: Emulator, client: RunflowClient, tmp_path: Path
) -> None:
    path = tmp_path / "huge.png"
    path.touch()
    os.truncate(path, MAX_UPLOAD_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(RequestValidationError) as caught:
        await client.upload(path)
    message = str(caught.value)
    assert str(MAX_UPLOAD_BYTES + 1) in message
    assert str(MAX_UPLOAD_BYTES) in message
    assert str(path) in message
    assert caught.value.errors[0]["field"] == "size_bytes"
    assert sum(emulator.counters.requests_by_route.values()) == 0


@pytest.mark.parametrize(
    ("source", "filename", "field", "words"),
    [
        (b"", "empty.png", "size_bytes", ["0 bytes", str(MAX_UPLOAD_BYTES)]),
        (b"plain text", "notes.txt", "mime_type", ["notes.txt", "PNG, JPEG, WebP or GIF"]),
        (DATA, None, "filename", ["filename is required"]),
        (DATA, "", "filename", ["1 to 500"]),
        (DATA, "f" * 501, "filename", ["1 to 500"]),
    ],
)
async def test_bad_input_is_refused_before_anything_is_sent(
    emulator: Emulator,
    client: RunflowClient,
    source: bytes,
    filename: str | None,
    field: str,
    words: list[str],
) -> None:
    with pytest.raises(RequestValidationError) as caught:
        await client.upload(source, filename=filename)
    assert caught.value.errors[0]["field"] == field
    for word in words:
        assert word in str(caught.value)
    assert sum(emulator.counters.requests_by_route.values()) == 0


async def test_an_empty_file_is_refused(client: RunflowClient, tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(RequestValidationError, match="0 bytes"):
        await client.upload(path)


@pytest.mark.parametrize(("name", "reason"), [("missing.png", "No such file"), (".", "directory")])
async def test_an_unreadable_path_is_refused_naming_it_and_why(
    emulator: Emulator, client: RunflowClient, tmp_path: Path, name: str, reason: str
) -> None:
    path = tmp_path / name
    with pytest.raises(RequestValidationError) as caught:
        await client.upload(path)
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    assert sum(emulator.counters.requests_by_route.values()) == 0


async def test_an_expired_upload_url_starts_the_flow_over_once(
    emulator: Emulator, client: RunflowClient
) -> None:
    emulator.faults.next("upload_put", Fault.status(403, code="URL_EXPIRED"))
    asset = await client.upload(DATA, filename="fox.png")
    assert asset.size_bytes == len(DATA)
    assert routes(emulator)["asset_upload"] == 2
    assert routes(emulator)["upload_put"] == 2
    assert routes(emulator)["asset_confirm"] == 1
    assert emulator.counters.credentials_on_presigned == 0


async def test_a_second_403_gives_up_and_keeps_the_presigned_query_out_of_the_message(
    emulator: Emulator, client: RunflowClient
) -> None:
    emulator.faults.next("upload_put", Fault.status(403, code="URL_EXPIRED"), times=2)
    with pytest.raises(PermissionDeniedError) as caught:
        await client.upload(DATA, filename="fox.png")
    error = caught.value
    assert (error.status, error.code, error.method) == (403, "URL_EXPIRED", "PUT")
    assert error.path.startswith("/uploads/")
    assert "sig" not in str(error)
    assert "exp=" not in str(error)
    assert "HTTP 403 URL_EXPIRED uploading to http://127.0.0.1:" in str(error)
    assert routes(emulator)["asset_upload"] == 2
    assert routes(emulator)["asset_confirm"] == 0


async def test_a_403_from_the_api_itself_does_not_start_over(inline_server: Server) -> None:
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return web.json_response({"code": "FORBIDDEN", "message": "no uploads"}, status=403)

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(PermissionDeniedError):
            await client.upload(DATA, filename="fox.png")
    assert calls == ["/v1/asset-uploads"]


async def test_server_errors_on_every_step_are_retried_with_the_hook_told(
    emulator: Emulator,
) -> None:
    events: list[RetryEvent] = []
    emulator.faults.next("asset_upload", Fault.status(503))
    emulator.faults.next("upload_put", Fault.status(500))
    # aiohttp itself resends an idempotent PUT once when a reused connection drops.
    emulator.faults.next("upload_put", Fault.drop(), times=2)
    emulator.faults.next("asset_confirm", Fault.status(502, html=True))
    emulator.faults.next("asset_confirm", Fault.status(429, retry_after=0))
    async with make_client(emulator.url, on_retry=events.append) as client:
        asset = await client.upload(DATA, filename="fox.png")
    assert asset.width == 640
    assert routes(emulator) == {
        "asset_upload": 2,
        "upload_put": 4,
        "asset_confirm": 3,
        "get_asset": 0,
        "asset_file": 0,
    }
    assert [(e.method, e.attempt) for e in events] == [
        ("POST", 1),
        ("PUT", 1),
        ("PUT", 2),
        ("POST", 1),
        ("POST", 2),
    ]
    assert events[1].path == f"/uploads/{asset.id}"  # no query string
    assert isinstance(events[2].error, APIConnectionError)
    assert events[3].path == f"/v1/asset-uploads/{asset.id}/confirmations"


async def test_a_put_failing_three_times_raises_the_last_error(emulator: Emulator) -> None:
    emulator.faults.next("upload_put", Fault.status(500), times=3)
    async with make_client(emulator.url) as client:
        with pytest.raises(ServerError) as caught:
            await client.upload(DATA, filename="fox.png")
    assert caught.value.status == 500
    assert routes(emulator)["upload_put"] == 3


async def test_the_policys_max_attempts_caps_asset_retries(emulator: Emulator) -> None:
    emulator.faults.next("upload_put", Fault.status(500))
    retry = RetryPolicy(max_attempts=1, time_scale=TIME_SCALE)
    async with make_client(emulator.url, retry=retry) as client:
        with pytest.raises(ServerError):
            await client.upload(DATA, filename="fox.png")
    assert routes(emulator)["upload_put"] == 1


async def test_a_rejected_session_is_not_retried(emulator: Emulator, client: RunflowClient) -> None:
    with pytest.raises(UnprocessableEntityError) as caught:
        await client.upload(DATA, filename="fox.txt", mime_type="text/plain")
    assert caught.value.errors[0]["field"] == "mime_type"
    assert routes(emulator)["asset_upload"] == 1


async def test_a_refused_connection_to_storage_is_retried_then_raised(
    inline_server: Server,
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        upload_url = f"http://127.0.0.1:{dead}/up?sig=secret"
        return web.json_response({"asset_id": "a1", "upload_url": upload_url}, status=201)

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upload(DATA, filename="fox.png")
    assert caught.value.sent is False
    assert "Could not connect to" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None  # aiohttp's message would quote the URL
    assert calls == ["/v1/asset-uploads"]


async def test_a_put_that_outlasts_its_time_limit_times_out(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_assets, "_upload_timeout", lambda size: 0.005)
    emulator.faults.next("upload_put", Fault.slow(30.0))  # 30 ms of real time
    retry = RetryPolicy(max_attempts=1, time_scale=TIME_SCALE)
    async with make_client(emulator.url, retry=retry) as client:
        with pytest.raises(APITimeoutError) as caught:
            await client.upload(DATA, filename="fox.png")
    assert caught.value.method == "PUT"
    assert "sig" not in str(caught.value)


def test_the_put_time_limit_grows_with_the_size() -> None:
    assert _assets._upload_timeout(0) == 120.0
    assert _assets._upload_timeout(MAX_UPLOAD_BYTES) == 200.0
    assert _assets._upload_timeout(100 * 1024 * 1024) == 400.0


@pytest.mark.parametrize(
    "upload_url",
    [
        "http://example.com/x?sig=secret",
        "http://10.0.0.1/x?sig=secret",
        "ftp://127.0.0.1/x?sig=secret",
        "/relative/x?sig=secret",
        "https:///x?sig=secret",
    ],
)
async def test_an_insecure_upload_url_is_refused_before_any_put(
    inline_server: Server, upload_url: str
) -> None:
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return web.json_response({"asset_id": "a1", "upload_url": upload_url}, status=201)

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(APIResponseError) as caught:
            await client.upload(DATA, filename="fox.png")
    assert "insecure upload URL" in str(caught.value)
    assert caught.value.code == "insecure_upload_url"
    assert "secret" not in str(caught.value)
    assert calls == ["/v1/asset-uploads"]


@pytest.mark.parametrize(
    "url",
    [
        "https://storage.example/x?sig=1",
        "http://localhost:9/x",
        "http://LOCALHOST/x",
        "http://[::1]:9/x",
        "http://127.0.0.2/x",
    ],
)
def test_https_and_loopback_upload_urls_are_accepted(url: str) -> None:
    assert _assets._check_upload_url(url) == "/x"
    assert _assets._check_upload_url("https://storage.example") == "/"


@pytest.mark.parametrize(
    "session",
    [
        {"asset_id": "a1"},
        {"upload_url": "https://s.example/x"},
        {"asset_id": 5, "upload_url": "https://s.example/x"},
        {"asset_id": "a/1", "upload_url": "https://s.example/x"},
        {"asset_id": "..", "upload_url": "https://s.example/x"},
        ["not", "an", "object"],
    ],
)
async def test_a_malformed_session_is_an_api_response_error(
    inline_server: Server, session: Any
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(session, status=201)

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(APIResponseError, match="Malformed upload session"):
            await client.upload(DATA, filename="fox.png")


async def test_storage_errors_are_mapped_whatever_their_body(inline_server: Server) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            upload_url = f"http://{request.host}/up?sig=secret"
            return web.json_response({"asset_id": "a1", "upload_url": upload_url}, status=201)
        return web.Response(status=400, text="<Error><Code>BadDigest</Code></Error>")

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.upload(DATA, filename="fox.png")
    assert str(caught.value).startswith("HTTP 400 BadDigest uploading to http://127.0.0.1:")
    assert caught.value.code == "BadDigest"
    assert "secret" not in str(caught.value)


async def test_a_malformed_asset_is_an_api_response_error(inline_server: Server) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "PUT":
            return web.Response(status=200)
        if request.path == "/v1/asset-uploads":
            upload_url = f"http://{request.host}/up"
            return web.json_response({"asset_id": "a1", "upload_url": upload_url}, status=201)
        return web.json_response({"id": "a1"}, status=201)

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(APIResponseError, match="Unexpected response shape") as caught:
            await client.upload(DATA, filename="fox.png")
    assert caught.value.path == "/v1/asset-uploads/a1/confirmations"


async def test_get_asset_signs_a_fresh_url_after_the_old_one_expires(
    emulator: Emulator, client: RunflowClient, tmp_path: Path
) -> None:
    asset = await client.upload(DATA, filename="fox.png")
    emulator.advance(emulator.config.url_ttl + 10.0)
    with pytest.raises(PermissionDeniedError):
        await client.download(asset.url, tmp_path / "old.png")
    fresh = await client.get_asset(asset.id)
    await client.download(fresh.url, tmp_path / "new.png")
    assert fresh.id == asset.id
    assert fresh.url != asset.url
    assert (tmp_path / "new.png").read_bytes() == DATA
    assert routes(emulator)["get_asset"] == 1
    assert emulator.counters.credentials_on_presigned == 0


@pytest.mark.parametrize("asset_id", ["", "a/b", ".", "..", "a?b=1", "a#b", "%2e%2e", "a\r"])
async def test_get_asset_refuses_a_malformed_id(
    emulator: Emulator, client: RunflowClient, asset_id: str
) -> None:
    with pytest.raises(RequestValidationError, match="Invalid asset id"):
        await client.get_asset(asset_id)
    assert sum(emulator.counters.requests_by_route.values()) == 0


async def test_get_asset_of_a_malformed_answer_is_an_api_response_error(
    inline_server: Server,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(["not", "an", "asset"])

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(APIResponseError) as caught:
            await client.get_asset("a1")
    assert (caught.value.method, caught.value.path) == ("GET", "/v1/assets/a1")


async def test_get_asset_of_an_unknown_id_is_not_found(client: RunflowClient) -> None:
    with pytest.raises(NotFoundError):
        await client.get_asset("00000000-0000-4000-8000-000000000000")


async def test_an_edit_of_an_uploaded_image_is_billed_as_estimated(
    emulator: Emulator, client: RunflowClient
) -> None:
    asset = await client.upload(png((1600, 900)), filename="wide.png")
    request = EditRequest(prompt="make it night", image_urls=[asset.url])
    estimate = await client.estimate([request])
    result = await client.run(request)
    assert estimate.items[0].input_sizes == ((1600, 900),)  # probed without the key
    assert result.cost_usd == estimate.total_usd
    assert emulator.counters.billed_usd == estimate.total_usd
    assert estimate.total_usd != PricingPolicy().edit_cost([None], None)  # not the assumption
    assert emulator.counters.credentials_on_presigned == 0


async def test_a_closed_lent_session_cannot_put(emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as lent:
        client = RunflowClient(API_KEY, base_url=emulator.url, session=lent)
    with pytest.raises(ClientClosedError):
        await _assets._put(client._transport, f"{emulator.url}/uploads/x", DATA, "image/png")
    await client.aclose()

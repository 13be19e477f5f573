"""End to end over HTTPS: upload with the client, edit by ``asset.ref`` or Asset, trust the CA.

The emulator serves TLS with a CA of its own (``Emulator.ca_file``); the client
trusts it through ``RunflowClient(ssl_context=...)``, verification on.
"""

from __future__ import annotations

import io
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from runflow_async import (
    APIConnectionError,
    AssetRefRefusedError,
    ConfigurationError,
    EditRequest,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
    UnprocessableEntityError,
)
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, TIME_SCALE, make_client

Server = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]


def png(size: tuple[int, int] = (96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 160, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def tls_client(emulator: Emulator, **more: Any) -> RunflowClient:
    assert emulator.ca_file is not None
    return RunflowClient(
        API_KEY,
        base_url=emulator.url,
        retry=RetryPolicy(time_scale=TIME_SCALE),
        poll=PollPolicy(time_scale=TIME_SCALE),
        ssl_context=ssl.create_default_context(cafile=emulator.ca_file),
        **more,
    )


@pytest.fixture
async def tls_emulator() -> AsyncIterator[Emulator]:
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, seed=7, tls=True
    ) as emu:
        yield emu


@pytest.fixture
async def refusing_emulator() -> AsyncIterator[Emulator]:
    async with Emulator(
        api_keys=frozenset({API_KEY}),
        time_scale=TIME_SCALE,
        seed=7,
        tls=True,
        asset_refs="refuse",
    ) as emu:
        yield emu


async def decoded_output(client: RunflowClient, url: str, dest: Path) -> tuple[int, int]:
    await client.download(url, dest)
    with Image.open(dest) as image:
        image.load()  # the whole image decodes, not just its header
        return image.size


async def test_an_edit_by_an_uploaded_assets_ref_succeeds_over_tls(
    tls_emulator: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "field.png"
    source.write_bytes(png())
    assert tls_emulator.url.startswith("https://127.0.0.1:")
    async with tls_client(tls_emulator) as client:
        asset = await client.upload(source)
        by_ref = await client.edit("paint it autumn", image_urls=[asset.ref], image_size="square")
        by_asset = await client.edit(
            "paint it autumn", image_urls=[asset], assets_as="ref", image_size="square"
        )
        by_url = await client.edit("paint it autumn", image_urls=[asset], image_size="square")
        sizes = [
            await decoded_output(client, result.images[0].url, tmp_path / f"out{n}.png")
            for n, result in enumerate((by_ref, by_asset, by_url))
        ]
    assert asset.url.startswith("https://")
    assert by_ref.run.input is not None
    assert by_ref.run.input["image_urls"] == [asset.ref]
    assert by_asset.run.input is not None
    assert by_asset.run.input["image_urls"] == [asset.ref]
    assert by_url.run.input is not None
    assert by_url.run.input["image_urls"] == [asset.url]
    assert sizes == [(512, 512)] * 3
    assert tls_emulator.counters.runs_created == 3
    assert tls_emulator.counters.credentials_on_presigned == 0


async def test_a_local_file_edit_uploads_and_succeeds_over_tls(
    tls_emulator: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "field.png"
    source.write_bytes(png((200, 100)))
    async with tls_client(tls_emulator) as client:
        result = await client.edit("add snow", image_urls=[source], assets_as="ref")
        size = await decoded_output(client, result.images[0].url, tmp_path / "out.png")
    assert result.run.succeeded
    assert result.run.input is not None
    assert result.run.input["image_urls"][0].startswith("runflow://assets/")
    assert size[0] > 0
    assert tls_emulator.counters.requests_by_route["upload_put"] == 1


async def test_a_refused_ref_is_a_typed_error_that_says_to_send_the_url(
    refusing_emulator: Emulator, tmp_path: Path
) -> None:
    async with tls_client(refusing_emulator) as client:
        asset = await client.upload(png(), filename="a.png")
        with pytest.raises(AssetRefRefusedError) as caught:
            await client.edit("p", image_urls=[asset.ref])
        with pytest.raises(AssetRefRefusedError):
            await client.submit(EditRequest(prompt="p", image_urls=[asset], assets_as="ref"))
        created = refusing_emulator.counters.runs_created
        switched = await client.edit("p", image_urls=[asset])  # assets_as="url", the default
    error = caught.value
    assert isinstance(error, UnprocessableEntityError)
    assert error.status == 422
    assert error.refs == [asset.ref]
    assert "assets_as='url'" in str(error)
    assert "asset.url" in str(error)
    assert "no run was created" in str(error)
    assert isinstance(error.__cause__, UnprocessableEntityError)
    assert created == 0
    assert switched.run.succeeded


async def test_a_ref_to_an_unknown_asset_is_a_plain_422(tls_emulator: Emulator) -> None:
    ref = "runflow://assets/0c7d8f3e-1111-4222-8333-444455556666"
    async with tls_client(tls_emulator) as client:
        with pytest.raises(UnprocessableEntityError) as caught:
            await client.edit("p", image_urls=[ref])
    assert not isinstance(caught.value, AssetRefRefusedError)
    assert "does not exist" in str(caught.value.errors)


@pytest.mark.parametrize(
    ("answer", "typed"),
    [
        ({"message": "media URL must use HTTP(S) or data URI, got 'runflow'"}, True),
        ({"message": "Request validation failed"}, True),  # names no field: the refs
        ({"message": "bad", "errors": [{"field": "input.image_urls.0", "message": "x"}]}, True),
        ({"message": "bad", "errors": [{"field": "input.prompt", "message": "too long"}]}, False),
    ],
)
async def test_which_422s_are_read_as_a_refused_ref(
    inline_server: Server, answer: dict[str, Any], typed: bool
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"code": "VALIDATION_ERROR", **answer}, status=422)

    ref = "runflow://assets/0c7d8f3e-1111-4222-8333-444455556666"
    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(UnprocessableEntityError) as with_ref:
            await client.edit("p", image_urls=[ref])
        with pytest.raises(UnprocessableEntityError) as without:
            await client.edit("p", image_urls=["https://x.test/a.png"])
    assert isinstance(with_ref.value, AssetRefRefusedError) is typed
    assert not isinstance(without.value, AssetRefRefusedError)


async def test_an_opted_in_data_uri_edit_succeeds(tls_emulator: Emulator) -> None:
    import base64

    uri = "data:image/png;base64," + base64.b64encode(png()).decode()
    async with tls_client(tls_emulator) as client:
        result = await client.edit("p", image_urls=[uri], allow_data_uris=True)
    assert result.run.succeeded
    assert tls_emulator.counters.requests_by_route["asset_upload"] == 0


async def test_an_untrusted_certificate_is_refused_at_once_by_default(
    tls_emulator: Emulator,
) -> None:
    async with make_client(tls_emulator.url) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.health()
    assert "did not verify" in str(caught.value)
    assert "ssl_context" in str(caught.value)
    assert caught.value.retryable is False
    assert tls_emulator.counters.requests_by_route["health"] == 0


async def test_a_lent_session_with_its_own_tls_context_works_too(tls_emulator: Emulator) -> None:
    context = tls_emulator.client_ssl_context()
    assert context is not None
    connector = aiohttp.TCPConnector(ssl=context)
    async with (
        aiohttp.ClientSession(connector=connector) as lent,
        RunflowClient(API_KEY, base_url=tls_emulator.url, session=lent) as client,
    ):
        asset = await client.upload(png(), filename="a.png")
    assert asset.url.startswith("https://")
    with pytest.raises(ConfigurationError, match="ssl_context or session"):
        RunflowClient(API_KEY, session=lent, ssl_context=context)


def test_the_ssl_context_option_is_type_checked() -> None:
    with pytest.raises(ConfigurationError, match="ssl_context"):
        RunflowClient(API_KEY, ssl_context=json.dumps({}))  # type: ignore[arg-type]

"""An edit's image inputs: URLs, asset refs, Asset objects, local files, opt-in data: URIs."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from runflow_async import (
    DEFAULT_MAX_DATA_URI_BYTES,
    MAX_UPLOAD_BYTES,
    APIStatusError,
    Asset,
    EditRequest,
    NotSubmittedError,
    PricingPolicy,
    RequestValidationError,
    RunflowClient,
)
from runflow_async._core.estimate import estimate_request
from runflow_async._core.requests import build_request
from runflow_async.emulator import Emulator, Fault
from tests.conftest import make_client

Server = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]
ASSET_ID = "0c7d8f3e-1111-4222-8333-444455556666"


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 90, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def an_asset(**more: Any) -> Asset:
    fields = {"url": "https://storage.example/a?sig=s", "name": "a.png", "mime_type": "image/png"}
    return Asset(id=ASSET_ID, size_bytes=3, **{**fields, **more})


def sent(emulator: Emulator) -> int:
    return sum(emulator.counters.requests_by_route.values())


def test_an_assets_ref_is_its_runflow_uri() -> None:
    assert an_asset().ref == f"runflow://assets/{ASSET_ID}"


def test_an_asset_is_sent_as_its_signed_url_by_default_and_as_its_ref_when_asked() -> None:
    asset = an_asset()
    items: list[str | Asset] = [
        asset,
        "https://x.test/b.png",
        f"runflow://assets/{ASSET_ID.upper()}",
    ]
    default = EditRequest(prompt="p", image_urls=items)
    by_ref = EditRequest(prompt="p", image_urls=items, assets_as="ref")
    assert default.to_body()["input"]["image_urls"] == [asset.url, *items[1:]]
    assert by_ref.to_body()["input"]["image_urls"] == [asset.ref, *items[1:]]
    assert by_ref.sends_refs == [asset.ref, items[2]]
    assert default.image_urls[0] is asset  # kept as given: the choice is made when sent
    for name in ("assets_as", "allow_data_uris", "max_data_uri_bytes"):
        assert name not in by_ref.to_body()["input"]  # request options, never sent


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("runflow://assets/not-a-uuid", "runflow://assets/<asset uuid>"),
        (f"runflow://folders/{ASSET_ID}", "runflow://assets/<asset uuid>"),
        (f"runflow://assets/{ASSET_ID}/x", "runflow://assets/<asset uuid>"),
        ("/var/photo.png", "a str is never read as a local path"),
        ("photo.png", "a str is never read as a local path"),
        ("ftp://x.test/a.png", "must be an http(s) URL"),
        ("https://", "not a complete http(s) URL"),
        (b"\x89PNG", "local file (bytes)"),
        (Path("photo.png"), "local file (PosixPath)"),
        (5, "must be a URL string or an Asset, not int"),
        ({"url": "https://x.test"}, "not dict"),
    ],
)
def test_an_item_that_is_no_image_input_is_refused_naming_why(item: object, words: str) -> None:
    with pytest.raises(RequestValidationError) as caught:
        build_request(EditRequest, {"prompt": "p", "image_urls": ["https://ok.test/a", item]})
    assert "item 1" in str(caught.value)
    assert words in str(caught.value)


async def test_edit_uploads_a_path_and_bytes_then_creates_with_their_urls(
    emulator: Emulator, client: RunflowClient, tmp_path: Path
) -> None:
    path = tmp_path / "lake.png"
    path.write_bytes(png((80, 60)))
    result = await client.edit(
        "make it night", image_urls=[path, png((32, 32)), "https://x.test/c.png"]
    )
    assert result.run.status_code == "succeeded"
    assert emulator.counters.requests_by_route["asset_upload"] == 2
    assert emulator.counters.requests_by_route["upload_put"] == 2
    assert emulator.counters.credentials_on_presigned == 0
    assert emulator.counters.runs_created == 1
    urls = result.run.input["image_urls"] if result.run.input else []
    assert urls[2] == "https://x.test/c.png"
    assert all(url.startswith(emulator.url) for url in urls[:2])  # the signed asset URLs


async def test_edit_takes_a_single_local_file_or_asset_too(
    emulator: Emulator, client: RunflowClient
) -> None:
    asset = await client.upload(png(), filename="one.png")
    by_bytes = await client.edit("p", image_urls=png())
    by_asset = await client.edit("p", image_urls=asset)
    assert by_bytes.run.succeeded
    assert by_asset.run.succeeded
    assert by_asset.run.input is not None
    assert by_asset.run.input["image_urls"] == [asset.url]


async def test_a_bad_field_refuses_the_edit_before_any_upload(
    emulator: Emulator, client: RunflowClient, tmp_path: Path
) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png())
    with pytest.raises(RequestValidationError, match="seed"):
        await client.edit("p", image_urls=[path], seed=-1)
    assert sent(emulator) == 0


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda tmp: [tmp / "missing.png"], ["missing.png", "No such file"]),
        (lambda tmp: [b"plain text, not an image"], ["image_urls[0]", "not a PNG, JPEG"]),
        (lambda tmp: [png(), b""], ["0 bytes"]),
        (lambda tmp: [png(), (tmp / "notes.txt")], ["notes.txt", "not a PNG, JPEG"]),
    ],
)
async def test_a_bad_local_file_is_refused_before_anything_is_uploaded(
    emulator: Emulator,
    client: RunflowClient,
    tmp_path: Path,
    make: Callable[[Path], list[Any]],
    words: list[str],
) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RequestValidationError) as caught:
        await client.edit("p", image_urls=make(tmp_path))
    for word in words:
        assert word in str(caught.value)
    assert sent(emulator) == 0  # not even the good first file


async def test_an_oversized_local_file_is_refused_before_it_is_read(
    emulator: Emulator, client: RunflowClient, tmp_path: Path
) -> None:
    path = tmp_path / "huge.png"
    path.touch()
    os.truncate(path, MAX_UPLOAD_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(RequestValidationError, match=str(MAX_UPLOAD_BYTES + 1)):
        await client.edit("p", image_urls=[path])
    assert sent(emulator) == 0


async def test_a_failed_upload_is_not_submitted_and_creates_nothing(emulator: Emulator) -> None:
    emulator.faults.next("upload_put", Fault.status(500), times=3)
    async with make_client(emulator.url) as client:
        with pytest.raises(NotSubmittedError) as caught:
            await client.edit("p", image_urls=[png(), png((8, 8))])
    assert caught.value.reason == "upload"
    assert "image_urls[0]" in str(caught.value)
    assert isinstance(caught.value.__cause__, APIStatusError)
    assert emulator.counters.requests_by_route["upload_put"] == 3
    assert emulator.counters.runs_created == 0
    assert emulator.counters.billed_usd == 0


async def test_a_refused_upload_session_is_not_submitted_either(
    emulator: Emulator, client: RunflowClient
) -> None:
    emulator.faults.next("asset_upload", Fault.status(422, code="VALIDATION_ERROR"))
    with pytest.raises(NotSubmittedError, match="no run was created"):
        await client.edit("p", image_urls=[png()])
    assert emulator.counters.runs_created == 0


async def test_a_data_uri_is_refused_without_the_opt_in_before_anything_is_sent(
    emulator: Emulator, client: RunflowClient
) -> None:
    with pytest.raises(RequestValidationError) as caught:
        await client.edit("p", image_urls=[data_uri(png())])
    assert "allow_data_uris=True" in str(caught.value)
    assert sent(emulator) == 0


@pytest.mark.parametrize(
    ("uri", "cap", "words"),
    [
        (data_uri(png((300, 300)) + bytes(DEFAULT_MAX_DATA_URI_BYTES)), None, "over max_data_uri"),
        (data_uri(png()), 100, "over max_data_uri_bytes (100 bytes"),
        (data_uri(png())[:-4] + "!!!!", None, "not valid base64"),
        (data_uri(png(), "image/jpeg"), None, "declares image/jpeg but holds image/png"),
        (data_uri(b"hello there, text"), None, "holds no image"),
        (data_uri(png(), "text/plain"), None, "PNG, JPEG, WebP or GIF image, not text/plain"),
        ("data:image/png,rawnotbase64", None, "data:<image type>;base64,<data>"),
    ],
)
async def test_a_bad_or_oversized_data_uri_is_refused_with_the_opt_in(
    emulator: Emulator, client: RunflowClient, uri: str, cap: int | None, words: str
) -> None:
    more = {} if cap is None else {"max_data_uri_bytes": cap}
    with pytest.raises(RequestValidationError) as caught:
        await client.edit("p", image_urls=[uri], allow_data_uris=True, **more)
    assert words in str(caught.value)
    assert sent(emulator) == 0


def test_the_data_uri_cap_defaults_to_one_mib_and_is_bounded() -> None:
    request = EditRequest(prompt="p", image_urls=["https://x.test/a"])
    assert request.max_data_uri_bytes == DEFAULT_MAX_DATA_URI_BYTES == 1024 * 1024
    assert request.allow_data_uris is False
    assert request.assets_as == "url"
    with pytest.raises(ValueError, match="max_data_uri_bytes"):
        EditRequest(prompt="p", image_urls=["https://x.test/a"], max_data_uri_bytes=0)


async def test_an_opted_in_data_uri_is_sent_as_given(inline_server: Server) -> None:
    bodies: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        bodies.append(json.loads(await request.read()))
        return web.json_response({"id": "r1", "status_code": "queued"}, status=201)

    uri = data_uri(png())
    async with make_client(await inline_server(handler)) as client:
        run = await client.submit(EditRequest(prompt="p", image_urls=[uri], allow_data_uris=True))
    assert run.id == "r1"
    assert bodies[0]["input"]["image_urls"] == [uri]
    assert set(bodies[0]["input"]) == {"prompt", "image_urls"}


async def test_the_estimate_reads_assets_and_data_uris_without_a_request(
    emulator: Emulator, client: RunflowClient
) -> None:
    asset = an_asset(width=1600, height=900)
    unmeasured = Asset(
        id=ASSET_ID[:-1] + "8", url="u", name="n", mime_type="image/gif", size_bytes=1
    )
    requests = [
        EditRequest(
            prompt="p", image_urls=[asset, data_uri(png((640, 480)))], allow_data_uris=True
        ),
        EditRequest(prompt="p", image_urls=[asset], assets_as="ref"),
        EditRequest(prompt="p", image_urls=[f"runflow://assets/{ASSET_ID[:-1]}7"]),
        EditRequest(prompt="p", image_urls=[unmeasured], assets_as="ref"),
    ]
    estimate = await client.estimate(requests)
    assert [item.input_sizes for item in estimate.items] == [
        ((1600, 900), (640, 480)),
        ((1600, 900),),
        (None,),  # a bare ref: unknown, assumed (and said so)
        (None,),  # an Asset whose size the upload did not read
    ]
    assert sent(emulator) == 0


def test_an_unmeasured_data_uri_is_named_by_its_type_in_the_assumptions() -> None:
    uri = data_uri(png())
    request = EditRequest(prompt="p", image_urls=[uri, an_asset()], allow_data_uris=True)
    estimate = estimate_request(request, policy=PricingPolicy())
    assert estimate.input_sizes == (None, None)  # nothing measured: both assumed
    assert "input 1 (data:image/png;base64,...)" in estimate.assumptions[0]
    assert uri not in " ".join(estimate.assumptions)
    assert "sig=" not in " ".join(estimate.assumptions)

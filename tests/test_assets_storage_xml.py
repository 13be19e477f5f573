"""Storage refuses a presigned PUT in S3-style XML: the client reports its Code and Message."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from runflow_async import BadRequestError, PermissionDeniedError
from runflow_async._http.errors import storage_xml_error
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, make_client

Server = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


DATA = _png()
SIGNATURE_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code>'
    "<Message>The request signature we calculated does not match the signature you "
    "provided. Check your key &amp; signing method.</Message>"
    "<StringToSign>AWS4-HMAC-SHA256 secret-scope</StringToSign>"
    "<SignatureProvided>secret-signature</SignatureProvided>"
    "<RequestId>4442587FB7D0A2F9</RequestId></Error>"
)


async def test_the_emulators_xml_refusal_of_an_expired_url_is_a_clear_typed_error(
    inline_server: Server,
) -> None:
    """End to end: a gateway hands out the emulator's sessions only once they have expired."""
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=1.0, url_ttl=10.0) as emu,
        aiohttp.ClientSession() as http,
    ):
        sessions = 0

        async def gateway(request: web.Request) -> web.StreamResponse:
            nonlocal sessions
            assert request.path == "/v1/asset-uploads"
            headers = {"Authorization": request.headers["Authorization"]}
            async with http.post(
                f"{emu.url}/v1/asset-uploads", data=await request.read(), headers=headers
            ) as resp:
                body = await resp.json()
            sessions += 1
            emu.advance(20.0)  # the upload URL is stale by the time the client uses it
            return web.json_response(body, status=201)

        async with make_client(await inline_server(gateway)) as client:
            with pytest.raises(PermissionDeniedError) as caught:
                await client.upload(DATA, filename="fox.png")
        error = caught.value
        counters = emu.counters
    assert sessions == 2  # a 403 opens one new session, as documented
    assert counters.requests_by_route["upload_put"] == 2
    assert (error.status, error.code, error.method) == (403, "AccessDenied", "PUT")
    message = str(error)
    assert message.startswith("HTTP 403 AccessDenied uploading to http://127.0.0.1:")
    assert ": Request has expired" in message
    assert "sig=" not in message


async def test_a_signature_refusal_quotes_code_and_message_never_the_signature(
    inline_server: Server,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            upload_url = f"http://{request.host}/up?X-Amz-Signature=secret-signature"
            return web.json_response({"asset_id": "a1", "upload_url": upload_url}, status=201)
        return web.Response(status=403, text=SIGNATURE_XML, content_type="application/xml")

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(PermissionDeniedError) as caught:
            await client.upload(DATA, filename="fox.png")
    message = str(caught.value)
    assert caught.value.code == "SignatureDoesNotMatch"
    assert "signature you provided. Check your key & signing method." in message
    assert "secret" not in message


async def test_an_incomplete_body_refusal_is_a_bad_request(inline_server: Server) -> None:
    xml = "<Error><Code>IncompleteBody</Code><Message>3 of 4 bytes.</Message></Error>"

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            upload_url = f"http://{request.host}/up?sig=x"
            return web.json_response({"asset_id": "a1", "upload_url": upload_url}, status=201)
        return web.Response(status=400, text=xml, content_type="application/xml")

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(
            BadRequestError, match=r"HTTP 400 IncompleteBody uploading to .*/up: 3 of 4 bytes\."
        ):
            await client.upload(DATA, filename="fox.png")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (SIGNATURE_XML.encode(), ("SignatureDoesNotMatch", None)),
        (
            b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
            ("AccessDenied", "Request has expired"),
        ),
        (
            b"  <?xml version='1.0'?><Error><Message>&lt;x&gt; &quot;y&quot;</Message></Error>",
            (None, '<x> "y"'),
        ),
        (b"<html><body>502</body></html>", (None, None)),
        (b'{"code": "X"}', (None, None)),
        (b"", (None, None)),
    ],
)
def test_storage_xml_error_reads_only_code_and_message(
    body: bytes, expected: tuple[str | None, str | None]
) -> None:
    code, message = storage_xml_error(body)
    assert code == expected[0]
    if expected[1] is None and code == "SignatureDoesNotMatch":
        assert message is not None
        assert message.endswith("Check your key & signing method.")
    else:
        assert message == expected[1]

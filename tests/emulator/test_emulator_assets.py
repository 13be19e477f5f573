"""The asset upload flow: session, presigned PUT, confirmation, reads and the leak detector."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from PIL import Image

from runflow_async._pricing import PricingPolicy
from runflow_async.emulator import EmulatorCounters, Fault, FaultRates
from runflow_async.emulator._assets import AssetRecord, UploadSession
from runflow_async.emulator._clock import EmulatedClock
from runflow_async.emulator._signing import UrlSigner
from tests.emulator.emulator_support import AUTH, EDIT, FROZEN, Harness, running

POLICY = PricingPolicy()
UPLOADS = "/v1/asset-uploads"
FOLDER = "0b5a2c9e-1f0d-4b8e-9a6f-3c2d1e0f9a8b"


def png(size: tuple[int, int] = (640, 480)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


DATA = png()


def session_body(data: bytes = DATA, **overrides: Any) -> dict[str, Any]:
    return {"filename": "fox.png", "mime_type": "image/png", "size_bytes": len(data), **overrides}


async def put(
    h: Harness,
    url: str,
    data: bytes,
    content_type: str = "image/png",
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any] | None]:
    # A BytesIO, as aiohttp warns about large raw bytes bodies.
    async with h.http.put(
        url, data=io.BytesIO(data), headers={"Content-Type": content_type, **(headers or {})}
    ) as resp:
        body = await resp.read()
        if not body:
            return resp.status, None
        if resp.content_type == "application/xml":  # storage's refusal, S3-style
            return resp.status, storage_refusal(body)
        return resp.status, await resp.json()


def storage_refusal(body: bytes) -> dict[str, Any]:
    """The ``Code``, ``Message`` and ``RequestId`` of an S3-style XML error document."""
    text = body.decode()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'), text
    found = {k: re.search(f"<{k}>(.*?)</{k}>", text) for k in ("Code", "Message", "RequestId")}
    return {key.lower(): match[1] if match else None for key, match in found.items()}


async def fetch(
    h: Harness, url: str, headers: Mapping[str, str] | None = None
) -> tuple[int, str, bytes]:
    async with h.http.get(url, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


async def uploaded(h: Harness, data: bytes = DATA, mime_type: str = "image/png") -> dict[str, Any]:
    """Run the whole flow and return the confirmed asset."""
    session = await h.post(UPLOADS, session_body(data, mime_type=mime_type))
    assert (await put(h, session["upload_url"], data, mime_type))[0] == 200
    return await h.post(f"{UPLOADS}/{session['asset_id']}/confirmations", {})


async def test_the_three_steps_make_an_asset_that_serves_the_bytes() -> None:
    async with running(**FROZEN) as h:
        session = await h.post(UPLOADS, session_body())
        status, body = await put(h, session["upload_url"], DATA)
        asset = await h.post(f"{UPLOADS}/{session['asset_id']}/confirmations", {})
        again = await h.post(f"{UPLOADS}/{session['asset_id']}/confirmations", {})
        read = await h.get(f"/v1/assets/{asset['id']}")
        served = await fetch(h, asset["url"])
        counters = h.emu.counters
    assert set(session) == {"asset_id", "upload_url"}
    assert "/uploads/" in session["upload_url"]
    assert "sig=" in session["upload_url"]
    assert (status, body) == (200, None)
    assert asset["id"] == session["asset_id"]
    assert asset["name"] == "fox.png"
    assert asset["mime_type"] == "image/png"
    assert asset["size_bytes"] == len(DATA)
    assert (asset["asset_type"], asset["source_type"], asset["folder_id"]) == (
        "image",
        "upload",
        None,
    )
    assert {"org_id", "r2_key", "thumbnail_url", "created_at", "updated_at"} <= set(asset)
    assert again == asset
    assert read == asset
    assert served == (200, "image/png", DATA)
    assert counters.requests_by_route["asset_upload"] == 1
    assert counters.requests_by_route["upload_put"] == 1
    assert counters.requests_by_route["asset_confirm"] == 2
    assert counters.requests_by_route["get_asset"] == 1
    assert counters.requests_by_route["asset_file"] == 1
    assert counters.credentials_on_presigned == 0


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["filename", "mime_type", "size_bytes"]),
        ([], ["body"]),
        (session_body(size_bytes=52_428_801), ["size_bytes"]),
        (session_body(size_bytes=0), ["size_bytes"]),
        (session_body(size_bytes="5"), ["size_bytes"]),
        (session_body(size_bytes=True), ["size_bytes"]),
        (session_body(mime_type="text/plain"), ["mime_type"]),
        (session_body(mime_type="x" * 256), ["mime_type", "mime_type"]),
        (session_body(mime_type=7), ["mime_type"]),
        (session_body(filename=""), ["filename"]),
        (session_body(filename="f" * 501), ["filename"]),
        (session_body(filename=5), ["filename"]),
    ],
)
async def test_a_bad_session_is_422_with_every_field_named(body: Any, fields: list[str]) -> None:
    async with running() as h:
        answer = await h.post(UPLOADS, body, expect=422)
        assert h.emu.counters.requests_by_route["asset_upload"] == 1
    assert answer["code"] == "VALIDATION_ERROR"
    assert [error["field"] for error in answer["errors"]] == fields


async def test_the_largest_upload_is_accepted() -> None:
    async with running() as h:
        await h.post(UPLOADS, session_body(size_bytes=52_428_800))


async def test_the_api_routes_want_a_bearer_token_and_json() -> None:
    async with running(api_keys=frozenset({"rf_test_emulator"})) as h:
        async with h.http.post(UPLOADS, json=session_body()) as resp:
            assert resp.status == 401
        async with h.http.post(f"{UPLOADS}/x/confirmations", json={}) as resp:
            assert resp.status == 401
        async with h.http.get("/v1/assets/x") as resp:
            assert resp.status == 401
        for path in (UPLOADS, f"{UPLOADS}/x/confirmations"):
            async with h.http.post(path, data=b"{nope", headers=AUTH) as resp:
                assert resp.status == 400
                assert (await resp.json())["code"] == "BAD_REQUEST"


async def test_the_put_checks_type_and_length_and_the_last_put_wins() -> None:
    async with running(**FROZEN) as h:
        session = await h.post(UPLOADS, session_body())
        url = session["upload_url"]
        wrong_type = await put(h, url, DATA, "image/jpeg")
        no_type = await put(h, url, DATA, "")
        short = await put(h, url, DATA[:-1])
        long = await put(h, url, DATA + b"!")
        first = await put(h, url, DATA[::-1])
        second = await put(h, url, DATA)
        asset = await h.post(f"{UPLOADS}/{session['asset_id']}/confirmations", {})
        served = await fetch(h, asset["url"])
    # A Content-Type other than the signed one is a signature mismatch, as on S3.
    assert wrong_type[0] == no_type[0] == 403
    assert wrong_type[1] is not None
    assert wrong_type[1]["code"] == "SignatureDoesNotMatch"
    assert wrong_type[1]["message"].endswith("Content-Type must be the declared image/png.")
    assert (short[0], long[0]) == (400, 400)
    assert short[1] is not None
    assert long[1] is not None
    assert short[1]["code"] == "IncompleteBody"
    assert short[1]["message"].endswith(f"{len(DATA) - 1} of {len(DATA)}.")
    assert long[1]["code"] == "EntityTooLarge"
    assert first[0] == second[0] == 200
    assert served[2] == DATA


async def test_a_large_upload_streams_past_aiohttps_body_limit() -> None:
    data = DATA + bytes(3 * 1024 * 1024)  # a PNG header, then padding: 3 MiB and more
    async with running(**FROZEN) as h:
        asset = await uploaded(h, data)
        served = await fetch(h, asset["url"])
    assert asset["size_bytes"] == len(data)
    assert served[2] == data


async def test_an_expired_or_tampered_upload_url_is_403() -> None:
    async with running(**FROZEN, url_ttl=10.0) as h:
        session = await h.post(UPLOADS, session_body())
        tampered = await put(h, session["upload_url"].replace("sig=", "sig=0"), DATA)
        h.emu.advance(12.0)
        expired = await put(h, session["upload_url"], DATA)
        confirm = await h.post(f"{UPLOADS}/{session['asset_id']}/confirmations", {}, expect=409)
    assert tampered[0] == expired[0] == 403
    assert tampered[1] is not None
    assert tampered[1]["code"] == "SignatureDoesNotMatch"
    assert tampered[1]["requestid"].startswith("req_")
    assert expired[1] is not None
    assert expired[1] == {
        "code": "AccessDenied",
        "message": "Request has expired",
        "requestid": expired[1]["requestid"],
    }
    assert confirm["code"] == "UPLOAD_INCOMPLETE"


async def test_a_signed_put_to_no_such_session_is_404_and_after_confirmation_409() -> None:
    async with running(**FROZEN) as h:
        signer = UrlSigner(h.emu.config.seed)
        clock = h.emu._state.clock
        expires = clock.epoch_seconds(clock.now() + 1000.0)
        missing = await put(h, signer.sign("", "/uploads/nope", expires), DATA)
        session = await h.post(UPLOADS, session_body())
        await put(h, session["upload_url"], DATA)
        await h.post(f"{UPLOADS}/{session['asset_id']}/confirmations", {})
        late = await put(h, session["upload_url"], DATA)
    assert missing[0] == 404
    assert missing[1] is not None
    assert missing[1]["code"] == "NoSuchUpload"
    assert late[0] == 409
    assert late[1] is not None
    assert late[1]["code"] == "OperationAborted"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ([], 422, "VALIDATION_ERROR"),
        ({"folder_id": 5}, 422, "VALIDATION_ERROR"),
        ({"folder_id": "f1"}, 422, "VALIDATION_ERROR"),
        ({"folder_id": "0b5a2c9e-1f0d-4b8e-9a6f"}, 422, "VALIDATION_ERROR"),
    ],
)
async def test_a_bad_confirmation_body_is_refused(body: Any, status: int, code: str) -> None:
    async with running(**FROZEN) as h:
        session = await h.post(UPLOADS, session_body())
        await put(h, session["upload_url"], DATA)
        answer = await h.post(f"{UPLOADS}/{session['asset_id']}/confirmations", body, expect=status)
    assert answer["code"] == code


async def test_a_confirmation_takes_no_body_or_a_folder_and_unknown_ids_are_404() -> None:
    async with running(**FROZEN) as h:
        missing = await h.post(f"{UPLOADS}/nope/confirmations", {}, expect=404)
        session = await h.post(UPLOADS, session_body())
        await put(h, session["upload_url"], DATA)
        path = f"{UPLOADS}/{session['asset_id']}/confirmations"
        async with h.http.post(path, headers=AUTH) as resp:  # no body at all
            assert resp.status == 201
            first = await resp.json()
        other = await h.post(UPLOADS, session_body())
        await put(h, other["upload_url"], DATA)
        folder = {"folder_id": FOLDER}
        filed = await h.post(f"{UPLOADS}/{other['asset_id']}/confirmations", folder)
    assert missing["code"] == "UPLOAD_NOT_FOUND"
    assert first["folder_id"] is None
    assert filed["folder_id"] == FOLDER
    assert filed["id"] != first["id"]


async def test_reading_an_asset_signs_a_fresh_url_and_old_ones_expire() -> None:
    async with running(**FROZEN, url_ttl=10.0) as h:
        asset = await uploaded(h)
        h.emu.advance(12.0)
        expired = await fetch(h, asset["url"])
        fresh = await h.get(f"/v1/assets/{asset['id']}")
        served = await fetch(h, fresh["url"])
    assert expired[0] == 403
    assert b'"code":"URL_EXPIRED"' in expired[2]
    assert fresh["url"] != asset["url"]
    assert served == (200, "image/png", DATA)


async def test_an_unconfirmed_or_unknown_asset_is_404_to_read_and_to_fetch() -> None:
    async with running(**FROZEN) as h:
        session = await h.post(UPLOADS, session_body())
        await put(h, session["upload_url"], DATA)
        unconfirmed = await h.get(f"/v1/assets/{session['asset_id']}", expect=404)
        await h.get("/v1/assets/nope", expect=404)
        signer = UrlSigner(h.emu.config.seed)
        path = f"/assets/{session['asset_id']}/content"
        clock = h.emu._state.clock
        content = await fetch(h, signer.sign("", path, clock.epoch_seconds(clock.now() + 1000.0)))
    assert unconfirmed["code"] == "ASSET_NOT_FOUND"
    assert content[0] == 404


async def test_credentials_sent_to_any_presigned_url_are_refused_and_counted() -> None:
    async with running(**FROZEN) as h:
        asset = await uploaded(h)
        run = await h.create()
        h.emu.advance(1000.0)
        done = await h.get(f"/v1/runs/{run['id']}")
        h.emu.faults.next("upload_put", Fault.status(503))
        session = await h.post(UPLOADS, session_body())
        puts = [
            await put(h, session["upload_url"], DATA, headers=AUTH),
            await put(h, session["upload_url"], DATA, headers={"Authorization": ""}),
        ]
        gets = [
            (await fetch(h, asset["url"], AUTH))[0],
            (await fetch(h, done["output"]["outputs"][0]["url"], AUTH))[0],
        ]
        pending = h.emu.faults.pending()
        async with h.http.get("/_emulator/counters") as resp:
            data = await resp.json()
    assert [status for status, _ in puts] == gets == [400, 400]
    assert [(body or {}).get("code") for _, body in puts] == ["CREDENTIALS_NOT_ALLOWED"] * 2
    assert pending == 1  # checked before faults: the queued fault is still there
    assert data["credentials_on_presigned"] == 4
    parsed = EmulatorCounters.from_json(data)
    assert parsed.credentials_on_presigned == 4
    assert parsed.to_json() == data
    older = {key: value for key, value in data.items() if key != "credentials_on_presigned"}
    assert EmulatorCounters.from_json(older).credentials_on_presigned == 0


@pytest.mark.parametrize(
    "route", ["asset_upload", "upload_put", "asset_confirm", "get_asset", "asset_file"]
)
async def test_every_asset_route_can_be_faulted(route: str) -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next(route, Fault.status(500))
        session = await h.post(
            UPLOADS, session_body(), expect=500 if route == "asset_upload" else 201
        )
        if route == "asset_upload":
            session = await h.post(UPLOADS, session_body())
        put_status = (await put(h, session["upload_url"], DATA))[0]
        if route == "upload_put":
            put_status = (await put(h, session["upload_url"], DATA))[0]
        path = f"{UPLOADS}/{session['asset_id']}/confirmations"
        if route == "asset_confirm":
            await h.post(path, {}, expect=500)
        asset = await h.post(path, {})
        await h.get(f"/v1/assets/{asset['id']}", expect=500 if route == "get_asset" else 200)
        content = (await fetch(h, asset["url"]))[0]
        counters = h.emu.counters
    assert put_status == 200
    assert content == (500 if route == "asset_file" else 200)
    assert counters.faults_injected == {"status_500": 1}


def test_seeded_faults_may_apply_to_asset_routes() -> None:
    rates = FaultRates(rate_5xx=1.0, applies_to=frozenset({"upload_put", "asset_upload"}))
    assert rates.applies_to == {"upload_put", "asset_upload"}


async def test_an_edit_of_an_uploaded_asset_is_billed_by_its_real_size() -> None:
    async with running(**FROZEN) as h:
        asset = await uploaded(h, png((1600, 900)))
        run = await h.create(model=EDIT, input={"image_urls": [asset["url"]]})
        h.emu.advance(1000.0)
        done = await h.get(f"/v1/runs/{run['id']}")
    output = done["output"]["outputs"][0]
    assert Decimal(done["cost"]) == POLICY.edit_cost([(1600, 900)], None)
    assert Decimal(done["cost"]) != POLICY.edit_cost([None], None)
    assert (output["width"], output["height"]) == POLICY.default_edit_output_size((1600, 900))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda url: url.replace("127.0.0.1", "localhost"),  # another host
        lambda url: url.replace("/content", "/other"),  # not a content path
        lambda url: url.replace("/assets/", "/assets/0"),  # no such asset
    ],
)
async def test_other_asset_urls_are_billed_as_the_policy_assumes(mangle: Any) -> None:
    async with running(**FROZEN) as h:
        asset = await uploaded(h, png((1600, 900)))
        run = await h.create(model=EDIT, input={"image_urls": [mangle(asset["url"])]})
        h.emu.advance(1000.0)
        done = await h.get(f"/v1/runs/{run['id']}")
    assert Decimal(done["cost"]) == POLICY.edit_cost([None], None)


async def test_an_asset_that_is_no_recognised_image_is_billed_as_assumed() -> None:
    async with running(**FROZEN) as h:
        asset = await uploaded(h, b"GIF89a", "image/gif")  # too short to hold a size
        run = await h.create(model=EDIT, input={"image_urls": [asset["url"]]})
        h.emu.advance(1000.0)
        done = await h.get(f"/v1/runs/{run['id']}")
    assert Decimal(done["cost"]) == POLICY.edit_cost([None], None)


def test_an_unconfirmed_record_renders_its_creation_time_as_updated() -> None:
    record = AssetRecord("a1", UploadSession("f.png", "image/png", 3), created=5.0)
    shown = record.to_api("org", lambda path: f"https://x{path}")
    assert shown["updated_at"] == shown["created_at"] == EmulatedClock.iso(5.0)
    assert shown["url"] == "https://x/assets/a1/content"

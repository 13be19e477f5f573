"""Edit inputs that are no URL: ``runflow://assets/{id}`` refs and small ``data:`` images."""

from __future__ import annotations

import base64
import io
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from PIL import Image

from runflow_async._pricing import PricingPolicy
from tests.emulator.emulator_support import AUTH, EDIT, FROZEN, GENERATE, Harness, running

POLICY = PricingPolicy()
UPLOADS = "/v1/asset-uploads"


def png(size: tuple[int, int] = (640, 480), pad_to: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 160, 60)).save(buffer, "PNG")
    data = buffer.getvalue()
    return data + b"\0" * max(pad_to - len(data), 0)  # trailing bytes after IEND: same image


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def _session(h: Harness, data: bytes) -> dict[str, Any]:
    body = {"filename": "in.png", "mime_type": "image/png", "size_bytes": len(data)}
    return await h.post(UPLOADS, body)


async def _put(h: Harness, url: str, data: bytes) -> None:
    headers = {"Content-Type": "image/png"}
    async with h.http.put(url, data=io.BytesIO(data), headers=headers) as resp:
        assert resp.status == 200


async def uploaded(h: Harness, data: bytes) -> dict[str, Any]:
    session = await _session(h, data)
    await _put(h, session["upload_url"], data)
    return await h.post(f"{UPLOADS}/{session['asset_id']}/confirmations", {})


def ref(asset_id: str) -> str:
    return f"runflow://assets/{asset_id}"


async def _refused(h: Harness, image_urls: list[Any]) -> list[dict[str, str]]:
    answer = await h.create(model=EDIT, input={"image_urls": image_urls}, expect=422)
    assert answer["code"] == "VALIDATION_ERROR"
    counters = h.emu.counters
    assert (counters.runs_created, counters.runs_billed, counters.billed_usd) == (0, 0, Decimal(0))
    errors: list[dict[str, str]] = answer["errors"]
    return errors


async def test_a_ref_to_a_confirmed_asset_edits_that_image() -> None:
    async with running(**FROZEN) as h:
        asset = await uploaded(h, png((1600, 900)))
        run = await h.create(model=EDIT, input={"image_urls": [ref(asset["id"])]})
        h.emu.advance(1000.0)
        done = await h.get(f"/v1/runs/{run['id']}")
    assert done["status_code"] == "succeeded"
    assert done["input"]["image_urls"] == [ref(asset["id"])]  # echoed as sent
    # Billed and sized by the asset's real pixels, as the asset's URL would be.
    assert Decimal(done["cost"]) == POLICY.edit_cost([(1600, 900)], None)
    output = done["output"]["outputs"][0]
    assert (output["width"], output["height"]) == POLICY.default_edit_output_size((1600, 900))


async def test_a_ref_may_be_mixed_with_urls_and_is_case_insensitive() -> None:
    async with running(**FROZEN) as h:
        asset = await uploaded(h, png((800, 600)))
        urls = ["https://example.test/a.png", ref(asset["id"].upper())]
        run = await h.create(model=EDIT, input={"image_urls": urls})
        h.emu.advance(1000.0)
        done = await h.get(f"/v1/runs/{run['id']}")
    assert Decimal(done["cost"]) == POLICY.edit_cost([None, (800, 600)], None)


async def test_an_unknown_ref_is_422_and_nothing_is_billed() -> None:
    async with running(**FROZEN) as h:
        missing = str(uuid.uuid4())
        errors = await _refused(h, ["https://example.test/a.png", ref(missing)])
    assert errors == [
        {
            "field": "input.image_urls.1",
            "message": f"asset {missing} does not exist in this organisation",
            "code": "asset_not_found",
        }
    ]


async def test_an_unconfirmed_upload_is_no_asset_yet() -> None:
    async with running(**FROZEN) as h:
        data = png()
        opened = await _session(h, data)  # nothing PUT
        put = await _session(h, data)
        await _put(h, put["upload_url"], data)  # PUT, never confirmed
        errors = await _refused(h, [ref(opened["asset_id"]), ref(put["asset_id"])])
    assert [(e["field"], e["code"]) for e in errors] == [
        ("input.image_urls.0", "asset_not_confirmed"),
        ("input.image_urls.1", "asset_not_confirmed"),
    ]
    assert "confirm the upload first" in errors[0]["message"]


async def test_an_asset_of_another_organisation_is_unknown_here() -> None:
    async with running(**FROZEN) as theirs:
        foreign = await uploaded(theirs, png())
    async with running(**FROZEN, seed=99) as h:
        errors = await _refused(h, [ref(foreign["id"])])
    assert [e["code"] for e in errors] == ["asset_not_found"]


@pytest.mark.parametrize(
    "bad", ["runflow://assets/not-a-uuid", "runflow://assets/", "runflow://files/1234"]
)
async def test_a_malformed_ref_is_422(bad: str) -> None:
    async with running(**FROZEN) as h:
        errors = await _refused(h, [bad])
    assert errors == [
        {
            "field": "input.image_urls.0",
            "message": "an asset ref must be runflow://assets/{asset_id} (a UUID)",
            "code": "invalid_ref",
        }
    ]


async def test_the_refuse_switch_answers_refs_as_the_older_api_did() -> None:
    async with running(**FROZEN, asset_refs="refuse") as h:
        asset = await uploaded(h, png())
        errors = await _refused(h, [ref(asset["id"])])
        # The asset's own URL still works.
        await h.create(model=EDIT, input={"image_urls": [asset["url"]]})
    assert errors == [
        {
            "field": "input.image_urls.0",
            "message": "media URL must use HTTP(S) or data URI, got 'runflow'",
            "code": "invalid_url",
        }
    ]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("resolve", "media URL must use HTTP(S), a data URI or a runflow://assets ref, got 'ftp'"),
        ("refuse", "media URL must use HTTP(S) or data URI, got 'ftp'"),
    ],
)
async def test_another_scheme_is_422_naming_what_is_accepted(mode: str, message: str) -> None:
    async with running(**FROZEN, asset_refs=mode) as h:
        errors = await _refused(h, ["ftp://x.test/a.png", "no-scheme", 7])
    assert errors[0] == {"field": "input.image_urls.0", "message": message, "code": "invalid_url"}
    assert errors[1]["code"] == "invalid_url"
    assert errors[1]["message"].endswith("got ''")
    assert errors[2] == {
        "field": "input.image_urls.2",
        "message": "must be a URL string",
        "code": "invalid_type",
    }


async def test_a_small_data_uri_is_accepted_and_billed_by_its_pixels() -> None:
    image = data_uri(png((1024, 768)))
    async with running(**FROZEN) as h:
        run = await h.create(model=EDIT, input={"image_urls": [image]})
        h.emu.advance(1000.0)
        done = await h.get(f"/v1/runs/{run['id']}")
    assert done["status_code"] == "succeeded"
    assert done["input"]["image_urls"] == [image]
    assert Decimal(done["cost"]) == POLICY.edit_cost([(1024, 768)], None)


async def _create_large(h: Harness, image_urls: list[str]) -> tuple[int, dict[str, Any]]:
    # A BytesIO body: aiohttp warns about multi-megabyte raw bytes.
    body = json.dumps({"input": {"prompt": "p", "image_urls": image_urls}}).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    async with h.http.post(f"/v1/models/{EDIT}/runs", data=io.BytesIO(body), headers=headers) as r:
        return r.status, await r.json()


async def test_the_default_cap_is_one_mebibyte_decoded() -> None:
    at_cap = data_uri(png(pad_to=1_048_576))
    over = data_uri(png(pad_to=1_048_577))
    async with running(**FROZEN) as h:
        status, answer = await _create_large(h, [over])
        assert (status, h.emu.counters.runs_created) == (422, 0)
        # Four images at the cap fit in one create body (over 5 MiB of JSON).
        status, run = await _create_large(h, [at_cap, at_cap, at_cap, at_cap])
        assert status == 201, run
    errors = answer["errors"]
    assert errors == [
        {
            "field": "input.image_urls.0",
            "message": "data: URI image is over 1048576 bytes decoded; upload it as an asset "
            "instead",
            "code": "too_large",
        }
    ]


async def test_the_cap_is_configurable_and_zero_refuses_data_uris() -> None:
    image = data_uri(png())
    async with running(**FROZEN, data_uri_max_bytes=1000) as h:
        errors = await _refused(h, [image, data_uri(png(pad_to=10_000))])
    assert [e["code"] for e in errors] == ["too_large", "too_large"]
    async with running(**FROZEN, data_uri_max_bytes=0) as h:
        errors = await _refused(h, [image])
    assert errors[0]["code"] == "data_uri"
    assert "upload the image as an asset" in errors[0]["message"]


@pytest.mark.parametrize(
    "bad",
    [
        "data:image/png;base64,not base64!",
        "data:image/png;base64",  # no comma, no body
        data_uri(b"plain text, no image", "image/png"),
        "data:,AA",
    ],
)
async def test_an_undecodable_data_uri_is_422(bad: str) -> None:
    async with running(**FROZEN) as h:
        errors = await _refused(h, [bad])
    assert errors[0]["code"] == "invalid_data_uri"
    assert errors[0]["field"] == "input.image_urls.0"


async def test_a_percent_encoded_data_uri_image_is_decoded_too() -> None:
    from urllib.parse import quote_from_bytes

    image = "data:image/png," + quote_from_bytes(png((300, 200)))
    async with running(**FROZEN) as h:
        run = await h.create(model=EDIT, input={"image_urls": [image]})
        h.emu.advance(1000.0)
        done = await h.get(f"/v1/runs/{run['id']}")
    assert Decimal(done["cost"]) == POLICY.edit_cost([(300, 200)], None)


async def test_batch_items_follow_the_same_input_rules_as_run_creates() -> None:
    # Refs resolve per item, an unknown one refuses the batch naming its index,
    # unknown fields are accepted, and the switch that refuses them holds too.
    batches = f"/v1/models/{EDIT}/batches"
    async with running(**FROZEN) as h:
        asset = await uploaded(h, png((640, 480)))
        good = {"prompt": "a", "image_urls": [ref(asset["id"])], "not_a_field": 1}
        unknown = {"prompt": "b", "image_urls": [ref(str(uuid.uuid4()))]}
        answer = await h.post(batches, {"input": [good, unknown]}, expect=422)
        assert h.emu.counters.runs_created == 0
        created = await h.post(batches, {"input": [good, good]})
        runs = {run["id"]: run for run in h.emu.runs()}
    assert [e["field"] for e in answer["errors"]] == ["input.1.image_urls.0"]
    assert answer["errors"][0]["message"].startswith("item 1: ")
    children = [runs[item["run_id"]] for item in created["items"]]
    assert [run["input"]["image_urls"] for run in children] == [[ref(asset["id"])]] * 2
    assert all(run["input"]["not_a_field"] == 1 for run in children)
    async with running(reject_unknown_input_fields=True) as h:
        generate = batches.replace(EDIT, GENERATE)
        strict = await h.post(generate, {"input": [{"prompt": "c", "x": 1}]}, expect=422)
    assert [e["code"] for e in strict["errors"]] == ["unknown_field"]

"""Fidelity switches: failure shapes, ``GET /v1/assets/types``, typed uploads, the CLI flags."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from runflow_async._cli.main import _parser
from runflow_async.emulator import EmulatorConfig
from runflow_async.emulator._cli import _config
from tests.emulator.emulator_support import FAST, Harness, running

FAILED = {**FAST, "failure_rate": 1.0}
UPLOADS = "/v1/asset-uploads"
ACCEPTED = "image/gif, image/jpeg, image/png, image/webp"


async def _failed(h: Harness) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A failed run as a read, a list item and ``Emulator.runs()`` show it."""
    run = await h.finish((await h.create())["id"])
    listed = (await h.get("/v1/runs"))["items"][0]
    return run, listed, h.emu.runs()[0]


async def test_failed_runs_carry_the_documented_fields_by_default() -> None:
    async with running(**FAILED) as h:
        views = await _failed(h)
    for run in views:
        assert run["status_code"] == "failed"
        assert run["failure_code"] == "PROVIDER_ERROR"
        assert run["failure_message"] == "The provider failed to generate the image."
        assert "error" not in run


async def test_both_adds_the_older_error_object() -> None:
    async with running(**FAILED, failure_shape="both") as h:
        views = await _failed(h)
    for run in views:
        assert run["failure_code"] == "PROVIDER_ERROR"
        assert run["error"] == {
            "message": "The provider failed to generate the image.",
            "code": "PROVIDER_ERROR",
        }


async def test_error_sends_only_the_older_object() -> None:
    async with running(**FAILED, failure_shape="error") as h:
        views = await _failed(h)
        projected = await h.get("/v1/runs", params={"fields": "error,failure_code"})
    for run in views:
        assert (run["failure_code"], run["failure_message"]) == (None, None)
        assert run["error"]["message"] == "The provider failed to generate the image."
    assert projected["items"][0]["error"]["code"] == "PROVIDER_ERROR"
    assert projected["items"][0]["failure_code"] is None


async def test_a_run_that_has_not_failed_shows_a_null_error() -> None:
    async with running(**FAST, failure_shape="both") as h:
        run = await h.finish((await h.create())["id"])
        queued = await h.create()
    assert run["status_code"] == "succeeded"
    assert run["error"] is None
    assert queued["error"] is None


async def test_the_asset_types_route_lists_what_uploads_accept() -> None:
    async with running() as h:
        types = await h.get("/v1/assets/types")
        async with h.http.get("/v1/assets/types") as resp:  # an API route: a key is needed
            assert resp.status == 401
        counters = h.emu.counters
    assert types["mime_types"] == ACCEPTED.split(", ")
    assert [item["mime_type"] for item in types["items"]] == types["mime_types"]
    assert types["items"][1] == {
        "mime_type": "image/jpeg",
        "asset_type": "image",
        "extensions": ["jpg", "jpeg"],
        "max_size_bytes": 52_428_800,
    }
    assert counters.requests_by_route["asset_types"] == 2
    assert counters.requests_by_route.get("get_asset", 0) == 0  # not taken for an asset id


async def test_every_listed_type_opens_a_session() -> None:
    async with running() as h:
        types = await h.get("/v1/assets/types")
        for mime_type in types["mime_types"]:
            body = {"filename": "f", "mime_type": mime_type, "size_bytes": 10}
            assert "upload_url" in await h.post(UPLOADS, body)


@pytest.mark.parametrize(
    ("mime_type", "start"),
    [
        ("application/octet-stream", "application/octet-stream is an untyped upload"),
        ("application/octet-stream; charset=binary", "application/octet-stream is an untyped"),
        ("image/tiff", "'image/tiff' is not supported"),
    ],
)
async def test_an_untyped_or_unlisted_upload_is_422_naming_the_types(
    mime_type: str, start: str
) -> None:
    async with running() as h:
        body = {"filename": "f.bin", "mime_type": mime_type, "size_bytes": 10}
        answer = await h.post(UPLOADS, body, expect=422)
    hint = f"accepted types: {ACCEPTED} (GET /v1/assets/types lists them)"
    assert answer["message"] == f"The request has 1 invalid field; {hint}."
    (error,) = answer["errors"]
    assert (error["field"], error["code"]) == ("mime_type", "unsupported")
    assert error["message"].startswith(start)
    assert error["message"].endswith(hint)


async def test_other_session_errors_keep_the_plain_message() -> None:
    async with running() as h:
        answer = await h.post(UPLOADS, {"filename": "f", "mime_type": "image/png"}, expect=422)
    assert answer["message"] == "The request has 1 invalid field."


async def test_a_confirmation_with_a_uuid_folder_or_null_is_accepted() -> None:
    folder = "0B5A2C9E-1F0D-4B8E-9A6F-3C2D1E0F9A8B"
    async with running() as h:
        made = []
        for body in ({"folder_id": folder}, {"folder_id": None}):
            session = await h.post(
                UPLOADS, {"filename": "f", "mime_type": "image/gif", "size_bytes": 6}
            )
            headers = {"Content-Type": "image/gif"}
            async with h.http.put(session["upload_url"], data=b"GIF89a", headers=headers) as resp:
                assert resp.status == 200
            made.append(await h.post(f"{UPLOADS}/{session['asset_id']}/confirmations", body))
        session = await h.post(
            UPLOADS, {"filename": "f", "mime_type": "image/gif", "size_bytes": 6}
        )
        refused = await h.post(
            f"{UPLOADS}/{session['asset_id']}/confirmations", {"folder_id": "inbox"}, expect=422
        )
    assert [asset["folder_id"] for asset in made] == [folder, None]
    assert refused["errors"] == [
        {"field": "folder_id", "message": "must be a UUID or null", "code": "invalid_uuid"}
    ]


def test_the_fidelity_flags_reach_the_config() -> None:
    args = _parser().parse_args(
        [
            "emulator",
            "--tls",
            "--clock-anchor",
            "2030-01-02T03:04:05+00:00",
            "--reject-unknown-input-fields",
            "--failure-shape",
            "both",
            "--asset-refs",
            "refuse",
            "--data-uri-max-bytes",
            "2048",
        ]
    )
    config = _config(args)
    assert config.tls is True
    assert config.clock_anchor == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert config.reject_unknown_input_fields is True
    assert (config.failure_shape, config.asset_refs, config.data_uri_max_bytes) == (
        "both",
        "refuse",
        2048,
    )
    defaults = _config(_parser().parse_args(["emulator"]))
    assert (defaults.tls, defaults.clock_anchor, defaults.reject_unknown_input_fields) == (
        False,
        None,
        False,
    )
    assert (defaults.failure_shape, defaults.asset_refs, defaults.data_uri_max_bytes) == (
        "documented",
        "resolve",
        1_048_576,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failure_shape": "legacy"}, "failure_shape must be one of documented, both, error"),
        ({"asset_refs": "maybe"}, "asset_refs must be one of resolve, refuse"),
        ({"data_uri_max_bytes": -1}, "data_uri_max_bytes must not be negative"),
    ],
)
def test_bad_fidelity_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmulatorConfig(**options)

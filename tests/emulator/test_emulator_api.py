"""Routes, auth, validation and the error envelope of the emulated API."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from tests.emulator.emulator_support import AUTH, EDIT, FROZEN, GENERATE, KEY, running

ENVELOPE_KEYS = {"code", "message", "errors"}


async def test_health_needs_no_auth_and_answers_both_documented_shapes() -> None:
    async with running() as h, h.http.get("/v1/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"ok": True, "status": "ok"}
        assert resp.headers["X-Request-Id"].startswith("req_")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}],
)
async def test_create_without_a_bearer_token_is_401(headers: dict[str, str]) -> None:
    async with running() as h:
        url = f"/v1/models/{GENERATE}/runs"
        async with h.http.post(url, json={"input": {}}, headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert body["code"] == "UNAUTHORIZED"
        assert set(body) == ENVELOPE_KEYS
        assert h.emu.counters.runs_created == 0


async def test_only_configured_keys_are_accepted_on_every_authenticated_route() -> None:
    async with running(api_keys=frozenset({KEY})) as h:
        wrong = {"Authorization": "Bearer rf_live_other"}
        for method, path in [
            ("POST", f"/v1/models/{GENERATE}/runs"),
            ("GET", "/v1/runs"),
            ("GET", "/v1/runs/abc"),
        ]:
            async with h.http.request(method, path, json={}, headers=wrong) as resp:
                assert resp.status == 401
                assert (await resp.json())["message"] == "Invalid API key."
        run = await h.create()
        assert run["status_code"] == "queued"


async def test_any_non_empty_token_is_accepted_without_configured_keys() -> None:
    async with running() as h:
        await h.create(headers={"Authorization": "bearer anything-at-all"})


async def test_unknown_model_is_404_model_not_found() -> None:
    async with running() as h:
        body = await h.create(model="black-forest-labs/flux-2-pro", expect=404)
        assert body["code"] == "MODEL_NOT_FOUND"


async def test_malformed_json_is_400_bad_request() -> None:
    async with running() as h:
        url = f"/v1/models/{GENERATE}/runs"
        async with h.http.post(url, data=b"{not json", headers=AUTH) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == "BAD_REQUEST"


async def test_every_invalid_field_is_reported_at_once() -> None:
    async with running(reject_unknown_input_fields=True) as h:
        body = {
            "input": {
                "prompt": "",
                "seed": True,
                "num_inference_steps": 51,
                "image_size": {"width": 32, "height": "tall", "depth": 3},
                "num_images": 0,
                "sync_mode": "yes",
                "enable_safety_checker": 1,
                "output_format": "gif",
                "guidance_scale": 3.5,
            },
            "client_ref": "x" * 256,
            "callback_url": "ftp://example.com/hook",
            "metadata": ["not", "an", "object"],
        }
        answer = await h.post(f"/v1/models/{GENERATE}/runs", body, expect=422)
    assert answer["code"] == "VALIDATION_ERROR"
    assert answer["message"] == "The request has 14 invalid fields."
    found = {(e["field"], e["code"]) for e in answer["errors"]}
    assert found == {
        ("input.prompt", "empty"),
        ("input.seed", "invalid_type"),
        ("input.num_inference_steps", "out_of_range"),
        ("input.image_size.width", "out_of_range"),
        ("input.image_size.height", "invalid_type"),
        ("input.image_size.depth", "unknown_field"),
        ("input.num_images", "out_of_range"),
        ("input.sync_mode", "invalid_type"),
        ("input.enable_safety_checker", "invalid_type"),
        ("input.output_format", "invalid_choice"),
        ("input.guidance_scale", "unknown_field"),
        ("client_ref", "too_long"),
        ("callback_url", "invalid_url"),
        ("metadata", "invalid_type"),
    }


def _inp(**fields: Any) -> dict[str, Any]:
    return {"input": {"prompt": "x", **fields}}


@pytest.mark.parametrize(
    ("model", "body", "field", "code"),
    [
        (GENERATE, [], "body", "invalid_type"),
        (GENERATE, {}, "input", "required"),
        (GENERATE, {"input": "draw"}, "input", "invalid_type"),
        (GENERATE, {"input": {}}, "input.prompt", "required"),
        (GENERATE, {"input": {"prompt": 7}}, "input.prompt", "invalid_type"),
        (GENERATE, _inp(seed=2**31), "input.seed", "out_of_range"),
        (GENERATE, _inp(seed=1.5), "input.seed", "invalid_type"),
        (GENERATE, _inp(image_size="huge"), "input.image_size", "invalid_choice"),
        (GENERATE, _inp(image_size=1024), "input.image_size", "invalid_type"),
        (GENERATE, {**_inp(), "client_ref": 5}, "client_ref", "invalid_type"),
        (
            GENERATE,
            {**_inp(), "callback_url": "https://h/" + "a" * 2048},
            "callback_url",
            "too_long",
        ),
        (EDIT, _inp(), "input.image_urls", "required"),
        (EDIT, _inp(image_urls="https://a"), "input.image_urls", "invalid_type"),
        (EDIT, _inp(image_urls=[]), "input.image_urls", "out_of_range"),
        (EDIT, _inp(image_urls=["https://a"] * 5), "input.image_urls", "out_of_range"),
        (EDIT, _inp(image_urls=["https://a", "ftp://a"]), "input.image_urls.1", "invalid_url"),
        (
            EDIT,
            _inp(image_urls=["https://a", "data:,AA"]),
            "input.image_urls.1",
            "invalid_data_uri",
        ),
    ],
)
async def test_each_rule_names_its_field_and_code(
    model: str, body: Any, field: str, code: str
) -> None:
    async with running() as h:
        answer = await h.post(f"/v1/models/{model}/runs", body, expect=422)
    assert [(e["field"], e["code"]) for e in answer["errors"]] == [(field, code)]
    assert answer["message"] == "The request has 1 invalid field."


async def test_unknown_input_fields_are_refused_only_with_the_switch() -> None:
    body = _inp(image_urls=["https://a"], guidance_scale=3.5)
    async with running(reject_unknown_input_fields=True) as h:
        answer = await h.post(f"/v1/models/{GENERATE}/runs", body, expect=422)
    assert [(e["field"], e["code"]) for e in answer["errors"]] == [
        ("input.image_urls", "unknown_field"),
        ("input.guidance_scale", "unknown_field"),
    ]
    async with running() as h:
        run = await h.post(f"/v1/models/{GENERATE}/runs", body)
    assert run["input"] == body["input"]  # kept in the echo, ignored for generation


async def test_null_optional_fields_mean_defaults() -> None:
    async with running() as h:
        run = await h.create(
            input={"seed": None, "image_size": None, "num_images": None},
            client_ref=None,
            callback_url=None,
            metadata=None,
        )
    assert run["input"]["seed"] is None


async def test_create_answers_201_with_the_full_run_object() -> None:
    async with running(**FROZEN) as h:
        run = await h.create(
            input={"seed": 42, "image_size": "square"},
            client_ref="rfa-1",
            metadata={"job": 7},
            callback_url="https://example.com/hook",
        )
    assert run["status_code"] == "queued"
    assert run["target_type"] == "model"
    assert uuid.UUID(run["id"]).version == 7
    assert uuid.UUID(run["model_id"]) == uuid.uuid5(
        uuid.NAMESPACE_URL, f"https://api.runflow.io/v1/models/{GENERATE}"
    )
    assert run["input"] == {"prompt": "a red fox", "seed": 42, "image_size": "square"}
    assert run["client_ref"] == "rfa-1"
    assert run["metadata"] == {"job": 7}
    assert run["callback_url"] == "https://example.com/hook"
    # The clock starts at the real time (a generous margin for a loaded machine).
    created = datetime.fromisoformat(run["created_at"])
    assert abs((created - datetime.now(UTC)).total_seconds()) < 300
    assert run["created_at"].endswith("+00:00")
    assert run["request_id"].startswith("req_")
    for key in ("output", "cost", "started_at", "completed_at", "duration_ms", "failure_code"):
        assert run[key] is None, key


async def test_get_run_returns_the_run_and_404_for_an_unknown_id() -> None:
    async with running(**FROZEN) as h:
        run = await h.create()
        again = await h.get(f"/v1/runs/{run['id']}")
        assert again["id"] == run["id"]
        assert again["request_id"] == run["request_id"]
        missing = await h.get("/v1/runs/0190b4c2-0000-7000-8000-000000000000", expect=404)
        assert missing["code"] == "RUN_NOT_FOUND"


async def test_every_response_carries_a_unique_request_id() -> None:
    async with running() as h:
        ids = set()
        for path in ("/v1/health", "/v1/runs", "/v1/runs/x", "/nowhere", "/_emulator/counters"):
            async with h.http.get(path, headers=AUTH) as resp:
                ids.add(resp.headers["X-Request-Id"])
        assert len(ids) == 5


async def test_unknown_paths_and_methods_answer_the_json_envelope() -> None:
    async with running() as h:
        async with h.http.get("/v2/nothing") as resp:
            assert resp.status == 404
            assert await resp.json() == {
                "code": "NOT_FOUND",
                "message": "Not Found",
                "errors": None,
            }
        async with h.http.delete("/v1/health") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET,HEAD"
            assert (await resp.json())["code"] == "METHOD_NOT_ALLOWED"
        counters = h.emu.counters
    assert counters.requests_by_route["other"] == 2
    assert counters.responses_by_status == {404: 1, 405: 1}


async def test_an_oversized_body_is_413_in_the_envelope() -> None:
    # Without data: images the limit is aiohttp's 1 MiB (it grows with the data: cap).
    async with running(data_uri_max_bytes=0) as h:
        url = f"/v1/models/{GENERATE}/runs"
        body = io.BytesIO(b"x" * (2 * 1024 * 1024))
        async with h.http.post(url, data=body, headers=AUTH) as resp:
            assert resp.status == 413
            assert set(await resp.json()) == ENVELOPE_KEYS
            assert "X-Request-Id" in resp.headers


async def test_counters_endpoint_matches_the_snapshot_and_round_trips() -> None:
    from runflow_async.emulator import EmulatorCounters

    async with running() as h:
        run = await h.create()
        await h.finish(run["id"])
        async with h.http.get("/_emulator/counters") as resp:
            data = await resp.json()
        snapshot = h.emu.counters
    parsed = EmulatorCounters.from_json(data)
    assert parsed.runs_created == snapshot.runs_created == 1
    assert parsed.billed_usd == snapshot.billed_usd
    assert data["billed_usd"] == str(snapshot.billed_usd)
    assert data["requests_by_route"]["counters"] == 1
    assert parsed.responses_by_status[201] == 1
    assert parsed.to_json() == data


async def test_the_app_can_be_run_by_a_runner_of_ones_own() -> None:
    from aiohttp import web

    from runflow_async.emulator import Emulator

    emu = Emulator(**FROZEN)
    runner = web.AppRunner(emu.app())
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base) as http:
            url = f"/v1/models/{EDIT}/runs"
            body = {"input": {"prompt": "x", "image_urls": ["https://a.example/1.png"]}}
            async with http.post(url, json=body, headers=AUTH) as resp:
                assert resp.status == 201
        assert emu.counters.runs_created == 1
        assert emu.runs()[0]["input"]["image_urls"] == ["https://a.example/1.png"]
    finally:
        await runner.cleanup()

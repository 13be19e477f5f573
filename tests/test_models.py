"""Request validation, wire round-trips and tolerant response parsing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from runflow_async import (
    TERMINAL_STATUSES,
    CallbackPayload,
    CustomImageSize,
    EditRequest,
    GenerateRequest,
    GenerationResult,
    RequestValidationError,
    Run,
    RunPage,
    RunStatus,
)
from runflow_async._core.models import parse_error_body
from runflow_async._core.requests import build_request


def fields_of(exc: RequestValidationError) -> set[str]:
    return {e["field"] for e in exc.errors}


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "seed": 2**31}, "seed"),
        ({"prompt": "x", "seed": True}, "seed"),
        ({"prompt": "x", "seed": "3"}, "seed"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "num_images": 5}, "num_images"),
        ({"prompt": "x", "num_images": 0}, "num_images"),
        ({"prompt": "x", "image_size": "huge"}, "image_size"),
        ({"prompt": "x", "image_size": {"width": 10, "height": 512}}, "image_size.width"),
        ({"prompt": "x", "image_size": {"width": 512, "height": 4096}}, "image_size.height"),
        ({"prompt": "x", "image_size": 5}, "image_size"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "sync_mode": "yes"}, "sync_mode"),
        ({"prompt": "x", "callback_url": "ftp://x"}, "callback_url"),
        ({"prompt": "x", "callback_url": "https://" + "a" * 2050}, "callback_url"),
        ({"prompt": "x", "client_ref": "r" * 256}, "client_ref"),
        ({"prompt": "x", "guidance_scale": 3}, "guidance_scale"),
    ],
)
def test_invalid_generate_fields_are_named(fields: dict[str, Any], bad: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        build_request(GenerateRequest, fields)
    assert bad in fields_of(info.value)
    assert bad.split(".")[0] in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("urls", "bad"),
    [
        ([], "image_urls"),
        (["https://a/1"] * 5, "image_urls"),
        (["file:///x.png"], "image_urls"),
        (["https://"], "image_urls"),
        ("https://a/1", "image_urls"),
    ],
)
def test_invalid_edit_urls_are_named(urls: Any, bad: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        build_request(EditRequest, {"prompt": "x", "image_urls": urls})
    assert bad in fields_of(info.value)


def test_several_bad_fields_are_reported_together() -> None:
    with pytest.raises(RequestValidationError) as info:
        build_request(GenerateRequest, {"prompt": "", "num_images": 9, "seed": -2})
    assert fields_of(info.value) == {"prompt", "num_images", "seed"}


def test_generate_body_is_the_documented_json() -> None:
    request = GenerateRequest(
        prompt="a neon alley",
        image_size="landscape_4_3",
        output_format="png",
        seed=42,
        num_inference_steps=4,
        num_images=2,
        enable_safety_checker=False,
        sync_mode=False,
        callback_url="https://example.com/hook",
        metadata={"batch": "a"},
    )
    assert request.to_body(client_ref="ref-1") == {
        "input": {
            "prompt": "a neon alley",
            "seed": 42,
            "num_inference_steps": 4,
            "image_size": "landscape_4_3",
            "num_images": 2,
            "sync_mode": False,
            "enable_safety_checker": False,
            "output_format": "png",
        },
        "callback_url": "https://example.com/hook",
        "metadata": {"batch": "a"},
        "client_ref": "ref-1",
    }
    assert request.size == (1024, 768)
    assert request.images_per_run == 2
    assert GenerateRequest.model == "black-forest-labs/flux-2-klein-9b"


def test_edit_body_with_custom_size_and_own_client_ref() -> None:
    request = build_request(
        EditRequest,
        {
            "prompt": "p",
            "image_urls": ("https://a/1.png",),
            "image_size": (512, 768),
            "client_ref": "mine",
        },
    )
    assert request.to_body(client_ref="ignored") == {
        "input": {
            "prompt": "p",
            "image_urls": ["https://a/1.png"],
            "image_size": {"width": 512, "height": 768},
        },
        "client_ref": "mine",
    }
    assert request.image_size == CustomImageSize(width=512, height=768)
    assert request.size == (512, 768)
    assert EditRequest.model == "black-forest-labs/flux-2-klein-9b/edit"
    assert GenerateRequest(prompt="p").size is None
    assert GenerateRequest(prompt="p").to_body() == {"input": {"prompt": "p"}}


def test_run_parsing_keeps_unknown_fields_and_statuses() -> None:
    run = Run.model_validate(
        {"id": "r1", "status_code": "teleporting", "cost": "0.0045", "brand_new": [1]}
    )
    assert run.status is None
    assert not run.is_terminal
    assert run.cost == Decimal("0.0045")
    assert run.model_extra == {"brand_new": [1]}
    assert "r1" in repr(run)
    assert run.images == []


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_every_terminal_status_is_terminal(status: RunStatus) -> None:
    run = Run.model_validate({"id": "r", "status_code": status.value})
    assert run.is_terminal
    assert run.succeeded == (status in {RunStatus.SUCCEEDED, RunStatus.PARTIAL_SUCCEEDED})
    assert run.canceled == (status in {RunStatus.CANCELED, RunStatus.CANCELLED})


@pytest.mark.parametrize("status", ["queued", "dispatching", "running"])
def test_in_progress_statuses_are_not_terminal(status: str) -> None:
    assert not Run.model_validate({"id": "r", "status_code": status}).is_terminal


def test_legacy_run_shapes_are_mapped() -> None:
    run = Run.model_validate(
        {
            "run_id": "r2",
            "status_code": "failed",
            "error": {"code": "BOOM", "message": "it broke"},
            "failure_stage": "dispatch",
            "output": "an error string",
        }
    )
    assert run.id == "r2"
    assert (run.failure_code, run.failure_message, run.failure_stage) == (
        "BOOM",
        "it broke",
        "dispatch",
    )
    assert run.output is None


def test_output_shapes_image_urls_and_fal_images() -> None:
    a = Run.model_validate({"id": "a", "output": {"image_urls": ["https://x/1.png", 3]}})
    b = Run.model_validate(
        {"id": "b", "output": {"images": [{"url": "https://x/2.png", "width": 5}, "junk"]}}
    )
    c = Run.model_validate({"id": "c", "output": {"timing": None}})
    assert [i.url for i in a.images] == ["https://x/1.png"]
    assert [(i.url, i.width) for i in b.images] == [("https://x/2.png", 5)]
    assert c.images == []


def test_generation_result_exposes_the_run() -> None:
    run = Run.model_validate(
        {
            "id": "r3",
            "status_code": "succeeded",
            "cost": "0.006",
            "output": {
                "outputs": [
                    {
                        "url": "https://x/1.png",
                        "width": 1024,
                        "height": 1024,
                        "content_type": "image/png",
                    }
                ],
                "seed": 9,
            },
        }
    )
    result = GenerationResult(run)
    assert (result.run_id, result.cost_usd, result.seed, result.partial) == (
        "r3",
        Decimal("0.006"),
        9,
        False,
    )
    assert result.images[0].height == 1024
    assert GenerationResult(Run(id="r4")).seed is None


def test_run_page_reads_cursors() -> None:
    page = RunPage.model_validate({"items": [{"id": "a"}], "next_pq": "c2", "prev_pq": None})
    assert page.next_cursor == "c2"
    assert [r.id for r in page.items] == ["a"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"event": "run.completed", "status": "succeeded"}, RunStatus.SUCCEEDED),
        ({"event": "run.cancelled", "status": "cancelled"}, RunStatus.CANCELLED),
        ({"event": "run.cancelled"}, RunStatus.CANCELED),
        ({"event": "run.failed"}, RunStatus.FAILED),
        ({"event": "run.partial_succeeded"}, RunStatus.PARTIAL_SUCCEEDED),
        ({"event": "something.else"}, None),
    ],
)
def test_callback_status_spellings(payload: dict[str, Any], expected: RunStatus | None) -> None:
    body = {"run_id": "r", "created_at": "2026-01-01T00:00:00+00:00", **payload}
    assert CallbackPayload.model_validate(body).run_status == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"code": "C", "message": "m", "errors": [1]}, ("C", "m", [1])),
        ({"error": {"code": "C", "message": "m"}}, ("C", "m", [])),
        ({"error": "proxy says no", "code": "P"}, ("P", "proxy says no", [])),
        ({"detail": "nope"}, (None, "nope", [])),
        ({"detail": [{"loc": ["x"]}]}, (None, "Request validation failed", [{"loc": ["x"]}])),
        ({"code": 5, "message": ["x"], "errors": "no"}, (None, None, [])),
        ("not a dict", (None, None, [])),
    ],
)
def test_error_bodies_of_every_known_shape(body: Any, expected: tuple[Any, ...]) -> None:
    assert parse_error_body(body) == expected


def test_callback_with_a_non_object_output_still_parses() -> None:
    payload = CallbackPayload.model_validate(
        {"run_id": "r", "event": "run.failed", "output": "provider exploded"}
    )
    assert payload.output is None
    assert payload.run_status == RunStatus.FAILED

"""Request models, fuzzed: what the server would refuse is refused here; the rest is sent verbatim.

The oracle for "the server would refuse" is the emulator's validator, written
from the model pages independently of the client's models. Documented names
and values (fields, presets, formats, the envelope) are spelled out here by
hand rather than imported from the package.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runflow_async import (
    CustomImageSize,
    EditRequest,
    GenerateRequest,
    RequestValidationError,
    RunflowClient,
)
from runflow_async._core.requests import build_request
from runflow_async.emulator import Emulator
from runflow_async.emulator._validation import validate_create
from tests.fuzz.support import async_settings, json_values

GENERATE = "black-forest-labs/flux-2-klein-9b"
EDIT = "black-forest-labs/flux-2-klein-9b/edit"
INPUT_FIELDS = (
    "prompt",
    "image_urls",
    "seed",
    "num_inference_steps",
    "image_size",
    "num_images",
    "sync_mode",
    "enable_safety_checker",
    "output_format",
)
ENVELOPE_FIELDS = ("callback_url", "metadata", "client_ref")
PRESETS = [
    "square_hd",
    "square",
    "portrait_4_3",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_16_9",
]
FORMATS = ["jpeg", "png", "webp"]

urls = st.builds(
    lambda scheme, rest: scheme + rest,
    st.sampled_from(["http://", "https://"]),
    st.text(min_size=1, max_size=40),
)
sides = st.integers(64, 2048)

# Each field: values the docs (and our stated bounds) accept ...
VALID: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.text(min_size=1, max_size=40).filter(str.strip),
    "image_urls": st.lists(urls, min_size=1, max_size=4),
    "seed": st.integers(0, 2**31 - 1),
    "num_inference_steps": st.integers(1, 50),
    "image_size": st.sampled_from(PRESETS)
    | st.fixed_dictionaries({"width": sides, "height": sides}),
    "num_images": st.integers(1, 4),
    "sync_mode": st.booleans(),
    "enable_safety_checker": st.booleans(),
    "output_format": st.sampled_from(FORMATS),
    "callback_url": urls,
    "metadata": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    "client_ref": st.text(min_size=1, max_size=255),
}

not_int = st.booleans() | st.floats() | st.text(max_size=4) | st.lists(st.integers(), max_size=1)
not_bool = st.integers() | st.text(max_size=4) | st.floats(allow_nan=False)
not_str = st.integers() | st.booleans() | st.lists(st.text(max_size=3), max_size=2)
bad_side = st.integers(max_value=63) | st.integers(min_value=2049) | not_int
not_http = st.text(max_size=20).filter(lambda s: not s.startswith(("http://", "https://")))

# ... and values the API would refuse (every one JSON, so the oracle can judge it too).
INVALID: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.sampled_from(["", " ", "\t\n", "\u3000"]) | not_str,
    "image_urls": st.just([])
    | st.lists(urls, min_size=5, max_size=6)
    | st.lists(not_http | not_str, min_size=1, max_size=4)
    | urls,
    "seed": st.integers(max_value=-1) | st.integers(min_value=2**31) | not_int,
    "num_inference_steps": st.integers(max_value=0) | st.integers(min_value=51) | not_int,
    "image_size": st.text(max_size=12).filter(lambda s: s not in PRESETS)
    | st.fixed_dictionaries({"width": bad_side, "height": sides})
    | st.fixed_dictionaries({"width": sides, "height": bad_side})
    | st.fixed_dictionaries({"width": sides})
    | st.fixed_dictionaries({"width": sides, "height": sides, "depth": sides})
    | st.integers()
    | st.lists(sides, min_size=2, max_size=2),
    "num_images": st.integers(max_value=0) | st.integers(min_value=5) | not_int,
    "sync_mode": not_bool,
    "enable_safety_checker": not_bool,
    "output_format": st.text(max_size=6).filter(lambda s: s not in FORMATS) | not_str,
    "callback_url": not_http | not_str | st.just("https://" + "a" * 2041),
    "metadata": st.lists(st.integers(), max_size=2) | st.text(max_size=4) | st.integers(),
    "client_ref": st.text(min_size=256, max_size=300) | not_str,
}
unknown_names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(
    lambda n: n not in INPUT_FIELDS + ENVELOPE_FIELDS
)


def fields_for(edit: bool) -> tuple[str, ...]:
    return tuple(f for f in INPUT_FIELDS + ENVELOPE_FIELDS if edit or f != "image_urls")


@st.composite
def mixed_requests(
    draw: st.DrawFn, modes: tuple[str, ...] = ("clean", "one", "mixed")
) -> tuple[bool, dict[str, Any], set[str]]:
    """``(edit, fields, the names drawn invalid)``: each field absent, valid or invalid.

    A third of the cases are all valid, a third have exactly one invalid field.
    """
    edit = draw(st.booleans())
    names = fields_for(edit)
    mode = draw(st.sampled_from(modes))
    chosen = draw(st.sampled_from(names)) if mode == "one" else None
    fields: dict[str, Any] = {}
    invalid: set[str] = set()
    for name in names:
        required = name in ("prompt", "image_urls")
        kinds = ["valid"] + ([] if required else ["none"])
        if mode == "mixed":
            kinds += ["valid", "invalid"]
        kind = "invalid" if name == chosen else draw(st.sampled_from(kinds))
        if kind == "none":
            if draw(st.booleans()):
                fields[name] = None  # None means "not set", exactly as absent
        elif kind == "valid":
            fields[name] = draw(VALID[name])
        else:
            fields[name] = draw(INVALID[name])
            invalid.add(name)
    if mode != "clean":
        for name in draw(st.lists(unknown_names, max_size=1)):
            fields[name] = draw(json_values)
            invalid.add(name)
    return edit, fields, invalid


def documented_body(fields: dict[str, Any]) -> dict[str, Any]:
    """The create body the model pages describe, built by hand from the raw fields."""
    envelope = {k: v for k, v in fields.items() if k in ENVELOPE_FIELDS and v is not None}
    data = {k: v for k, v in fields.items() if k not in ENVELOPE_FIELDS and v is not None}
    return {"input": data, **envelope}


def top_level(field: str) -> str:
    return field.removeprefix("input.").split(".")[0]


@given(mixed_requests())
def test_what_the_server_refuses_is_refused_locally_and_the_rest_is_sent_verbatim(
    case: tuple[bool, dict[str, Any], set[str]],
) -> None:
    edit, fields, drawn_invalid = case
    expected = documented_body(fields)
    server_errors = validate_create(expected, EDIT if edit else GENERATE)[1]
    server_fields = {top_level(e["field"]) for e in server_errors}
    refused: RequestValidationError | None = None
    try:
        request = build_request(EditRequest if edit else GenerateRequest, fields)
    except RequestValidationError as exc:
        refused = exc
    if refused is not None:
        local_fields = {top_level(e["field"]) for e in refused.errors}
        # Every field the server names is named here, and nothing drawn valid is.
        assert server_fields <= local_fields <= drawn_invalid
        assert local_fields, refused.errors
        for name in local_fields:
            assert name in str(refused)
        return
    assert not server_errors, server_errors
    assert not drawn_invalid
    assert request.model == (EDIT if edit else GENERATE)
    body = request.to_body()
    assert body == expected
    assert json.loads(json.dumps(body, allow_nan=False)) == expected


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """``(edit, fields, the documented body)``, sizes in every accepted spelling."""
    edit = draw(st.booleans())
    names = [n for n in fields_for(edit) if n not in ("prompt", "image_urls")]
    fields = {"prompt": draw(VALID["prompt"])}
    if edit:
        fields["image_urls"] = draw(VALID["image_urls"] | VALID["image_urls"].map(tuple))
    for name in draw(st.lists(st.sampled_from(names), unique=True)):
        fields[name] = draw(VALID[name])
    body = documented_body(fields)
    if edit:
        body["input"]["image_urls"] = list(fields["image_urls"])
    if isinstance(fields.get("image_size"), dict):
        width, height = fields["image_size"]["width"], fields["image_size"]["height"]
        fields["image_size"] = draw(
            st.sampled_from(
                [
                    (width, height),
                    CustomImageSize(width=width, height=height),
                    {**body["input"]["image_size"]},
                ]
            )
        )
    return edit, fields, body


@given(valid_requests(), st.text(min_size=1, max_size=20))
def test_valid_requests_round_trip_to_the_documented_json(
    case: tuple[bool, dict[str, Any], dict[str, Any]], fallback_ref: str
) -> None:
    edit, fields, expected = case
    request = build_request(EditRequest if edit else GenerateRequest, fields)
    assert request.to_body() == expected
    # A request's own client_ref wins over the one the client would generate.
    with_ref = request.to_body(client_ref=fallback_ref)
    assert with_ref == {**expected, "client_ref": expected.get("client_ref", fallback_ref)}
    text = json.dumps(with_ref, allow_nan=False)
    assert json.loads(text) == with_ref
    assert validate_create(json.loads(text), EDIT if edit else GENERATE)[1] == []
    assert list(request.input_payload()) == [f for f in INPUT_FIELDS if f in expected["input"]]
    assert request.images_per_run == fields.get("num_images", 1)


@given(st.integers(-10, 3000), st.integers(-10, 3000))
def test_custom_sizes_are_accepted_exactly_within_the_stated_bounds(
    width: int, height: int
) -> None:
    inside = 64 <= width <= 2048 and 64 <= height <= 2048
    fields = {"prompt": "p", "image_size": (width, height)}
    if not inside:
        with pytest.raises(RequestValidationError) as info:
            build_request(GenerateRequest, fields)
        assert {e["field"] for e in info.value.errors} <= {"image_size.width", "image_size.height"}
        return
    request = build_request(GenerateRequest, fields)
    assert request.size == (width, height)
    assert request.to_body()["input"]["image_size"] == {"width": width, "height": height}


class Opaque:
    pass


not_json = st.sampled_from(
    [{1, 2}, b"bytes", Opaque(), math.nan, math.inf, -math.inf, Decimal("1.5"), 1j, "\ud800"]
)


@given(
    st.recursive(
        not_json | st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=1),
        lambda kids: (
            st.lists(kids, min_size=1, max_size=2)
            | st.dictionaries(st.text(max_size=3), kids, min_size=1, max_size=2)
        ),
        max_leaves=4,
    ),
    st.text(max_size=5),
)
def test_metadata_that_is_not_json_is_refused_before_sending(bad: Any, key: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        build_request(GenerateRequest, {"prompt": "p", "metadata": {key: bad}})
    assert {e["field"].split(".")[0] for e in info.value.errors} == {"metadata"}


def test_regression_metadata_that_json_cannot_encode_is_a_validation_error() -> None:
    # Found by the property above: metadata={"tags": {"a"}} passed validation and then
    # failed inside the transport with TypeError; NaN went out as invalid JSON.
    bad: list[dict[str, Any]] = [{"tags": {"a"}}, {"score": math.nan}, {"nested": {1: "x"}}]
    for metadata in bad:
        with pytest.raises(RequestValidationError, match="metadata"):
            build_request(GenerateRequest, {"prompt": "p", "metadata": metadata})
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    for metadata in (cyclic, {"deep": deep}):
        with pytest.raises(RequestValidationError, match="metadata"):
            build_request(GenerateRequest, {"prompt": "p", "metadata": metadata})


def test_regression_the_shortest_http_urls_are_accepted() -> None:
    # Found by the round-trip property: "http://a" (8 characters) was refused.
    request = build_request(
        EditRequest, {"prompt": "p", "image_urls": ["http://a"], "callback_url": "http://b"}
    )
    assert request.to_body()["input"]["image_urls"] == ["http://a"]
    assert request.to_body()["callback_url"] == "http://b"


@st.composite
def invalid_calls(draw: st.DrawFn) -> tuple[bool, str, dict[str, Any], set[str]]:
    """A generate or edit call with at least one invalid field."""
    edit, fields, invalid = draw(
        mixed_requests(("one", "mixed")).filter(lambda case: bool(case[2]))
    )
    prompt = fields.pop("prompt")
    return edit, prompt, fields, invalid


@async_settings()
@given(invalid_calls())
async def test_invalid_calls_raise_before_anything_is_sent(
    emulator: Emulator, client: RunflowClient, call: tuple[bool, str, dict[str, Any], set[str]]
) -> None:
    edit, prompt, fields, invalid = call
    if edit:
        urls = fields.pop("image_urls")
        with pytest.raises(RequestValidationError) as info:
            await client.edit(prompt, image_urls=urls, timeout=5, **fields)
    else:
        with pytest.raises(RequestValidationError) as info:
            await client.generate(prompt, timeout=5, **fields)
    named = {top_level(e["field"]) for e in info.value.errors}
    assert named
    assert named <= invalid
    assert sum(emulator.counters.requests_by_route.values()) == 0

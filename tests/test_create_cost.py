"""What a create costs the client beyond a raw POST (issue 12); counted, never timed.

Python calls (and calls into C) are counted with ``sys.setprofile`` around
creates on one in-process emulator, for ``RunflowClient.submit`` and for a
raw aiohttp POST of the same body with the same headers: the server's work is
the same in both, so the difference is the client's own. The faster pieces
of the create path (the key, the ``client_ref``, the body's bytes, the
``input`` object, the answer's parse) are pinned to what they replaced.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from types import FrameType
from typing import Any

import aiohttp
import pydantic_core
import pytest
from aiohttp import web

from runflow_async import CustomImageSize, EditRequest, GenerateRequest, RunRequest
from runflow_async._core import estimate as estimate_module
from runflow_async._core.estimate import estimate_request
from runflow_async._http.create import idempotency_key_for, new_client_ref
from runflow_async._http.jsonio import dump_json, parse_json
from runflow_async._pricing import EDIT_MODEL, GENERATE_MODEL, PricingPolicy
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, Handler, make_client

Start = Callable[[Handler], Awaitable[str]]

CREATES = 20
# Measured (BENCHMARKS.md, "Create overhead"): a submit made 154.7 calls more
# than a raw POST of the same body before issue 12's third round, 132.5 after.
EXTRA_CALLS_PER_CREATE = 143


@contextmanager
def all_calls() -> Iterator[list[int]]:
    """Count every call made in this thread (Python functions and C functions) while inside."""
    calls = [0]

    def profile(_frame: FrameType, event: str, _arg: object) -> None:
        if event in ("call", "c_call"):
            calls[0] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(previous)


async def _counted(create: Callable[[int], Awaitable[None]]) -> int:
    await create(-1)  # warm: the session, its connection and any cache are built once
    with all_calls() as calls:
        for i in range(CREATES):
            await create(i)
    return calls[0]


async def test_a_create_costs_few_calls_more_than_a_raw_post(emulator: Emulator) -> None:
    url = emulator.url + "/v1/models/black-forest-labs/flux-2-klein-9b/runs"
    async with aiohttp.ClientSession() as session:

        async def raw(i: int) -> None:
            ref = f"raw-{i}"
            body = {"input": {"prompt": f"prompt {i}", "image_size": "square"}, "client_ref": ref}
            headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": f"key-{ref}"}
            async with session.post(url, json=body, headers=headers) as resp:
                assert resp.status == 201
                await resp.json()

        raw_calls = await _counted(raw)
    async with make_client(emulator.url) as client:

        async def sdk(i: int) -> None:
            run = await client.submit(GenerateRequest(prompt=f"prompt {i}", image_size="square"))
            assert run.status_code == "queued"

        sdk_calls = await _counted(sdk)
    extra = (sdk_calls - raw_calls) / CREATES
    assert extra <= EXTRA_CALLS_PER_CREATE, f"{extra:.1f} calls per create beyond a raw POST"


@pytest.mark.parametrize("client_ref", ["rfa-0", "", "é" * 300, "rfa-" + "f" * 32])
def test_the_idempotency_key_is_uuid5_of_the_client_ref(client_ref: str) -> None:
    expected = str(uuid.uuid5(uuid.UUID("6c1f0a52-8f1e-4c0e-9a43-2d7b5e0f9a11"), client_ref))
    assert idempotency_key_for(client_ref) == expected


def test_the_idempotency_key_of_a_journalled_ref_stays_what_it_was() -> None:
    # Keys an earlier release sent: a resumed dataset must send them again byte for byte.
    assert idempotency_key_for("rfa-0") == "00f17f33-586d-5211-bd48-109fa04a5dc2"
    assert idempotency_key_for("item-42") == "e73fdef6-1e6d-5e12-b061-f63aceaee163"


def test_a_new_client_ref_is_rfa_and_a_random_uuid4_hex() -> None:
    refs = {new_client_ref() for _ in range(200)}
    assert len(refs) == 200
    for ref in refs:
        assert ref.startswith("rfa-")
        drawn = uuid.UUID(hex=ref[4:])
        assert drawn.hex == ref[4:]
        assert drawn.version == 4
        assert drawn.variant == uuid.RFC_4122


_TEXTS = ["plain", "".join(chr(i) for i in range(128)), "é\u2028 日本", "\x7f", 'q"\\/']


@pytest.mark.parametrize("text", _TEXTS)
def test_a_floatless_body_has_the_standard_encoders_bytes(text: str) -> None:
    body = {"input": {"prompt": text, "seed": 2**31 - 1, "sync_mode": False}, "client_ref": text}
    expected = json.dumps(body, separators=(",", ":")).encode()
    assert dump_json(body, floatless=True) == expected
    assert dump_json(body) == expected


def test_a_floatless_body_takes_the_fast_encoder_when_its_bytes_are_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = [0]
    real = pydantic_core.to_json

    def counting(value: Any) -> bytes:
        made[0] += 1
        return real(value)

    monkeypatch.setattr(pydantic_core, "to_json", counting)
    ascii_body = {"input": {"prompt": "a cat"}, "client_ref": "rfa-1"}
    assert (
        dump_json(ascii_body, floatless=True)
        == json.dumps(ascii_body, separators=(",", ":")).encode()
    )
    assert made[0] == 1
    assert dump_json({"x": [0.1, 1e-05]}) == b'{"x":[0.1,1e-05]}'  # floats: never tried
    assert made[0] == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "a cat, 1.5x zoom"},
        {"prompt": "un chat é 日本\u2028", "seed": 7},
        {"prompt": "del \x7f", "image_size": CustomImageSize(width=640, height=512)},
        {"prompt": "p", "metadata": {"score": 1e-05, "big": 1e16, "r": 0.1, "t": "é"}},
        {"prompt": "p", "callback_url": "https://example.com/cb?a=1&b=é"},
    ],
)
async def test_a_create_sends_the_bytes_json_dumps_makes_of_its_body(
    inline_server: Start, fields: dict[str, Any]
) -> None:
    sent: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        sent.append(await request.read())
        ref = json.loads(sent[-1])["client_ref"]
        return web.json_response(
            {"id": "run-1", "status_code": "queued", "client_ref": ref}, status=201
        )

    request = GenerateRequest(**fields)
    async with make_client(await inline_server(handler)) as client:
        await client.submit(request)
    (body,) = sent
    ref = json.loads(body)["client_ref"]
    assert body == json.dumps(request.to_body(client_ref=ref), separators=(",", ":")).encode()


_REQUESTS: list[RunRequest] = [
    GenerateRequest(prompt="p"),
    GenerateRequest(
        prompt="p",
        seed=0,
        num_inference_steps=4,
        image_size=CustomImageSize(width=512, height=768),
        num_images=2,
        sync_mode=False,
        enable_safety_checker=True,
        output_format="png",
        callback_url="https://example.com/cb",
        metadata={"k": [1.5]},
        client_ref="mine",
    ),
    GenerateRequest(prompt="p", image_size="landscape_16_9"),
    EditRequest(prompt="p", image_urls=["https://a.example/1.png", "https://a.example/2.png"]),
]


@pytest.mark.parametrize("request_", _REQUESTS)
def test_the_input_object_is_the_models_json_dump(request_: RunRequest) -> None:
    fields = ["prompt", "image_urls", "seed", "num_inference_steps", "image_size"]
    fields += ["num_images", "sync_mode", "enable_safety_checker", "output_format"]
    dumped = request_.model_dump(mode="json", exclude_none=True, include=set(fields))
    expected = {name: dumped[name] for name in fields if name in dumped}
    payload = request_.input_payload()
    assert payload == expected
    assert list(payload) == list(expected)
    assert json.dumps(payload) == json.dumps(expected)
    if isinstance(request_, EditRequest):
        payload["image_urls"].append("changed")  # the body is a copy, not the model's own list
        assert len(request_.image_urls) == 2


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"r","n":[1,2.5,null,true,1e400],"s":"\\u00e9"}',
        b'{"a":1,"a":2}',
        '{"id":"é"}'.encode("utf-16"),  # another encoding: json detects it
        b'\xef\xbb\xbf{"id":"bom"}',
        b'{"s":"\\ud800"}',  # a lone surrogate escape
        b"NaN",
    ],
)
def test_an_answer_parses_as_json_loads_parses_it(body: bytes) -> None:
    parsed = parse_json(body, 200, None, "GET", "/v1/runs/r")
    expected = json.loads(body)
    assert json.dumps(parsed) == json.dumps(expected)


def test_a_text_to_image_estimate_is_worked_out_once_per_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = PricingPolicy()
    priced = [0]
    real = PricingPolicy.generate_cost

    def counting(self: PricingPolicy, size: Any, num_images: int = 1) -> Decimal:
        priced[0] += 1
        return real(self, size, num_images)

    monkeypatch.setattr(PricingPolicy, "generate_cost", counting)
    shapes = [GenerateRequest(prompt=f"p{i}", image_size="square", num_images=2) for i in range(5)]
    items = [estimate_request(r, policy=policy, index=i) for i, r in enumerate(shapes)]
    assert priced[0] == 1
    assert [item.index for item in items] == [0, 1, 2, 3, 4]
    assert items[4].usd == policy.quantize(
        policy.generate_megapixels((512, 512), 2) * Decimal("0.006")
    )
    other = estimate_request(GenerateRequest(prompt="p"), policy=policy)
    assert priced[0] == 2
    assert other.assumptions == ("image_size not set: assumed landscape_4_3 1024x768",)
    assert other.output_size == (1024, 768)


def test_an_estimate_follows_a_policys_price_and_its_identity() -> None:
    prices = {GENERATE_MODEL: Decimal("0.006"), EDIT_MODEL: Decimal("0.011")}
    policy = PricingPolicy(prices_usd_per_megapixel=prices)
    request = GenerateRequest(prompt="p", image_size=CustomImageSize(width=1024, height=1024))
    assert estimate_request(request, policy=policy).usd == Decimal("0.006")
    prices[GENERATE_MODEL] = Decimal("0.01")  # the caller changed its mapping
    assert estimate_request(request, policy=policy).usd == Decimal("0.01")
    doubled = PricingPolicy(prices_usd_per_megapixel=prices, pixels_per_megapixel=2**19)
    assert estimate_request(request, policy=doubled).usd == Decimal("0.02")
    assert estimate_request(request, policy=policy).megapixels == Decimal(1)


def test_a_floatless_value_that_is_not_json_is_refused_as_json_refuses_it() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        dump_json({"input": {"prompt": object()}}, floatless=True)


def test_the_estimate_cache_stays_bounded_and_right() -> None:
    policy = PricingPolicy()
    for side in range(64, 64 + 300):
        request = GenerateRequest(prompt="p", image_size=CustomImageSize(width=side, height=64))
        expected = policy.generate_cost((side, 64), 1)
        assert estimate_request(request, policy=policy).usd == expected
    assert len(estimate_module._GENERATE_FACTS) <= estimate_module._GENERATE_FACTS_MAX

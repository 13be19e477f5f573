"""Cost estimates: hand-worked totals, stated assumptions, and probing inputs over loopback."""

from __future__ import annotations

import io
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal

import aiohttp
import anyio
import pytest
from aiohttp import web
from PIL import Image
from yarl import URL

from runflow_async import (
    ConfigurationError,
    CustomImageSize,
    EditRequest,
    GenerateRequest,
    PricingPolicy,
)
from runflow_async._core.estimate import (
    Estimate,
    estimate_request,
    estimate_requests,
    policy_assumptions,
)
from runflow_async._core.requests import RunRequest
from runflow_async._http.probe import DEFAULT_PROBE_TIMEOUT, probe_input_sizes
from runflow_async._imagesize import HEADER_BYTES
from runflow_async._pricing import EDIT_MODEL, GENERATE_MODEL, Size
from tests.conftest import Handler

Start = Callable[[Handler], Awaitable[str]]
HOST = "https://img.example"
PROMPT = "a lighthouse at dusk"


def mixed_requests(base: str) -> list[RunRequest]:
    """Eight runs mixing both endpoints, explicit and default sizes, known and unknown inputs."""
    return [
        GenerateRequest(prompt=PROMPT, image_size="square_hd"),
        GenerateRequest(prompt=PROMPT),
        GenerateRequest(prompt=PROMPT, image_size="portrait_16_9", num_images=3),
        EditRequest(
            prompt=PROMPT, image_urls=[f"{base}/a.png"], image_size="square_hd", num_images=2
        ),
        EditRequest(prompt=PROMPT, image_urls=[f"{base}/b.png?X-Amz-Signature=secret"]),
        EditRequest(
            prompt=PROMPT,
            image_urls=[f"{base}/c.jpg", f"{base}/a.png"],
            image_size=CustomImageSize(width=1000, height=700),
        ),
        EditRequest(prompt=PROMPT, image_urls=[f"{base}/d.webp"], num_images=2),
        EditRequest(prompt=PROMPT, image_urls=[f"{base}/e.gif"]),
    ]


def known_sizes(base: str) -> dict[str, Size | None]:
    return {
        f"{base}/a.png": (512, 512),
        f"{base}/b.png?X-Amz-Signature=secret": None,
        f"{base}/c.jpg": (4096, 4096),
        f"{base}/d.webp": (800, 600),
        f"{base}/e.gif": (2048, 2048),
    }


# The default policy: 1 MP = 2^20 px = 1024x1024, no rounding up, edit inputs capped at
# 1 MP, unknown inputs assumed 1024x1024, each run rounded half-up to $0.000001.
HAND_WORKED = [
    # square_hd 1024x1024 = 1 MP x $0.006 = $0.006000
    Decimal("0.006000"),
    # no image_size: landscape_4_3 1024x768 = 786432 px = 0.75 MP x $0.006 = $0.004500
    Decimal("0.004500"),
    # portrait_16_9 576x1024 = 589824 px = 0.5625 MP x 3 images = 1.6875 MP x $0.006 = $0.010125
    Decimal("0.010125"),
    # edit, 512x512 input = 0.25 MP, square_hd output x 2 images:
    # (0.25 + 2 x 1) x $0.011 = $0.024750
    Decimal("0.024750"),
    # edit, unknown input assumed 1024x1024 = 1 MP; output follows it, 1 MP: 2 x $0.011 = $0.022000
    Decimal("0.022000"),
    # edit, 4096x4096 input (16 MP, capped at 1) + 512x512 (0.25); output 1000x700 = 700000 px
    # = 0.667572021484375 MP: 1.917572021484375 x $0.011 = $0.021093292... -> $0.021093
    Decimal("0.021093"),
    # edit, 800x600 input = 480000 px = 0.457763671875 MP; output follows it (800x600) x 2:
    # 3 x 0.457763671875 = 1.373291015625 MP x $0.011 = $0.015106201... -> $0.015106
    Decimal("0.015106"),
    # edit, 2048x2048 input (4 MP, capped at 1); output scaled down to 1024x1024 = 1 MP:
    # 2 x $0.011 = $0.022000
    Decimal("0.022000"),
]
# 0.006 + 0.0045 + 0.010125 + 0.02475 + 0.022 + 0.021093 + 0.015106 + 0.022
HAND_TOTAL = Decimal("0.125574")
HAND_MEGAPIXELS = Decimal(
    "12.978363037109375"
)  # 1+0.75+1.6875+2.25+2+1.917572021484375+1.373291015625+2


def test_mixed_list_total_matches_the_hand_worked_total_exactly() -> None:
    estimate = estimate_requests(
        mixed_requests(HOST), policy=PricingPolicy(), input_sizes=known_sizes(HOST)
    )
    assert sum(HAND_WORKED) == HAND_TOTAL
    assert [item.usd for item in estimate.items] == HAND_WORKED
    assert estimate.total_usd == HAND_TOTAL
    assert estimate.total_usd.quantize(Decimal("0.01")) == Decimal("0.13")
    assert estimate.megapixels == HAND_MEGAPIXELS
    assert estimate.images == 12
    assert len(estimate) == 8
    assert [item.index for item in estimate.items] == list(range(8))
    assert [item.model for item in estimate.items] == [GENERATE_MODEL] * 3 + [EDIT_MODEL] * 5
    assert estimate.summary() == "8 runs, 12 images, 12.98 MP, $0.125574 (estimate)"


def test_items_record_resolved_sizes() -> None:
    policy = PricingPolicy()
    items = estimate_requests(
        mixed_requests(HOST), policy=policy, input_sizes=known_sizes(HOST)
    ).items
    assert [item.output_size for item in items] == [
        (1024, 1024),
        (1024, 768),
        (576, 1024),
        (1024, 1024),
        (1024, 1024),
        (1000, 700),
        (800, 600),
        (1024, 1024),
    ]
    assert items[0].input_sizes == ()
    assert items[4].input_sizes == (None,)
    assert items[5].input_sizes == ((4096, 4096), (512, 512))
    for item in items[:3]:  # the policy's own rule agrees with the reported output size
        assert item.megapixels == policy.megapixels(item.output_size) * item.images


def test_assumptions_name_each_guess_once_and_hide_query_strings() -> None:
    estimate = estimate_requests(
        mixed_requests(HOST), policy=PricingPolicy(), input_sizes=known_sizes(HOST)
    )
    items = estimate.items
    assert items[0].assumptions == ()
    assert items[1].assumptions == ("image_size not set: assumed landscape_4_3 1024x768",)
    assert items[4].assumptions == (
        f"input 1 ({HOST}/b.png): size unknown, assumed 1024x1024 (billed 1 MP)",
        "image_size not set: edit output assumed 1024x1024, following input 1 "
        "(scaled down to at most 1 MP)",
    )
    assert items[6].assumptions == (
        "image_size not set: edit output assumed 800x600, following input 1 "
        "(scaled down to at most 1 MP)",
    )
    assert not any("secret" in sentence for sentence in estimate.assumptions)
    assert estimate.assumptions == (
        "estimate only: Runflow does not document how megapixels are counted; "
        "a finished run's cost is authoritative",
        f"price per MP: {GENERATE_MODEL} $0.006, {EDIT_MODEL} $0.011 "
        "(text-to-image bills output MP, edit bills input + output MP)",
        "1 MP = 1,048,576 px (2^20)",
        "each image billed at its exact MP, not rounded up",
        "each run's cost rounded half-up to $0.000001",
        "edit inputs capped at 1 MP (the provider resizes larger inputs)",
        "image_size not set: assumed landscape_4_3 1024x768",
        *items[4].assumptions,
        *items[6].assumptions,  # run 7's output sentence repeats run 4's and is listed once
    )
    assert items[7].assumptions == (items[4].assumptions[1],)


def test_assumptions_are_deduplicated_across_runs() -> None:
    requests = [GenerateRequest(prompt=PROMPT)] * 3 + [
        EditRequest(
            prompt=PROMPT, image_urls=[f"{HOST}/x.png", f"{HOST}/y.png"], image_size="square"
        ),
    ] * 2
    estimate = estimate_requests(requests, policy=PricingPolicy())
    item_sentences = estimate.assumptions[len(policy_assumptions(PricingPolicy())) :]
    assert item_sentences == (
        "image_size not set: assumed landscape_4_3 1024x768",
        f"input 1 ({HOST}/x.png): size unknown, assumed 1024x1024 (billed 1 MP)",
        f"input 2 ({HOST}/y.png): size unknown, assumed 1024x1024 (billed 1 MP)",
    )
    # 3 x 0.75 MP x $0.006 = $0.0135; 2 x (1 + 1 + 0.25) MP x $0.011 = $0.0495
    assert estimate.total_usd == Decimal("0.063000")
    assert estimate.summary() == "5 runs, 5 images, 6.75 MP, $0.063 (estimate)"


@pytest.mark.parametrize(
    ("policy", "per_run", "total", "rules"),
    [
        (
            PricingPolicy(round_up_per_image=True),
            # every image, input or output, rounds up to whole MP; inputs still capped at 1:
            # 1, 1, 3x1 (x $0.006); 1+2x1, 1+1, 1+1+1, 1+2x1, 1+1 (x $0.011)
            ["0.006", "0.006", "0.018", "0.033", "0.022", "0.033", "0.033", "0.022"],
            "0.173",
            ["1 MP = 1,048,576 px (2^20)", "each image rounded up to a whole MP"],
        ),
        (
            PricingPolicy(pixels_per_megapixel=10**6),
            # 1.048576, 0.786432, 3x0.589824 MP (x $0.006, rounded to $0.000001);
            # 0.262144+2x1.048576; 1+1 (1024x1024 capped, output scaled to 1000x1000);
            # 1+0.262144+0.7; 0.48+2x0.48; 1+1 (output 1000x1000)  (x $0.011)
            [
                "0.006291",
                "0.004719",
                "0.010617",
                "0.025952",
                "0.022",
                "0.021584",
                "0.01584",
                "0.022",
            ],
            "0.129003",
            ["1 MP = 1,000,000 px", "each image billed at its exact MP, not rounded up"],
        ),
        (
            PricingPolicy(edit_input_max_megapixels=None),
            # as the default, but 4096x4096 bills 16 MP and 2048x2048 bills 4 MP:
            # (16 + 0.25 + 0.667572021484375) x 0.011 = 0.186093...; (4 + 1) x 0.011 = 0.055
            ["0.006", "0.0045", "0.010125", "0.02475", "0.022", "0.186093", "0.015106", "0.055"],
            "0.323574",
            ["edit inputs billed at full size"],
        ),
    ],
    ids=["round-up-per-image", "decimal-megapixels", "uncapped-inputs"],
)
def test_policy_variants_change_totals_as_worked_out(
    policy: PricingPolicy, per_run: list[str], total: str, rules: list[str]
) -> None:
    estimate = estimate_requests(mixed_requests(HOST), policy=policy, input_sizes=known_sizes(HOST))
    assert [item.usd for item in estimate.items] == [Decimal(x) for x in per_run]
    assert sum(Decimal(x) for x in per_run) == Decimal(total)
    assert estimate.total_usd == Decimal(total)
    for rule in rules:
        assert rule in estimate.assumptions


def test_single_request_estimates_and_argument_errors() -> None:
    policy = PricingPolicy()
    edit = EditRequest(prompt=PROMPT, image_urls=[f"{HOST}/a.png", f"{HOST}/b.png"])
    item = estimate_request(edit, policy=policy, input_sizes=[(512, 512), None], index=7)
    assert item.index == 7
    assert item.output_size == (512, 512)
    # 0.25 + 1 (unknown, assumed 1024x1024) + 0.25 output = 1.5 MP x $0.011 = $0.016500
    assert item.usd == Decimal("0.016500")
    assert item.assumptions[0].startswith(f"input 2 ({HOST}/b.png): size unknown")
    with pytest.raises(ValueError, match="1 input sizes given for a request with 2 inputs"):
        estimate_request(edit, policy=policy, input_sizes=[(512, 512)])
    generate = GenerateRequest(prompt=PROMPT, image_size=CustomImageSize(width=640, height=640))
    assert estimate_request(generate, policy=policy, input_sizes=[]).assumptions == ()
    with pytest.raises(ValueError, match="for a request with 0 inputs"):
        estimate_request(generate, policy=policy, input_sizes=[(1, 1)])
    with pytest.raises(TypeError, match="cannot estimate a RunRequest"):
        estimate_request(RunRequest(prompt=PROMPT), policy=policy)


def test_empty_and_single_run_summaries() -> None:
    empty = estimate_requests([], policy=PricingPolicy())
    assert empty == Estimate(
        (), Decimal("0.000000"), Decimal(0), 0, policy_assumptions(PricingPolicy())
    )
    assert empty.summary() == "0 runs, 0 images, 0.00 MP, $0.00 (estimate)"
    one = estimate_requests(
        [GenerateRequest(prompt=PROMPT, image_size="square_hd")], policy=PricingPolicy()
    )
    assert one.summary() == "1 run, 1 image, 1.00 MP, $0.006 (estimate)"
    pricey = PricingPolicy(
        prices_usd_per_megapixel={GENERATE_MODEL: Decimal(10), EDIT_MODEL: Decimal(1)}
    )
    big = estimate_requests(
        [GenerateRequest(prompt=PROMPT, image_size="square_hd", num_images=4)], policy=pricey
    )
    assert big.summary() == "1 run, 4 images, 4.00 MP, $40.00 (estimate)"


# -- probing input sizes over loopback ------------------------------------------------------


def encode(size: Size, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).save(buffer, fmt)
    return buffer.getvalue()


def big_exif_jpeg(size: Size) -> bytes:
    data = encode(size, "JPEG")
    payload = b"ICC_PROFILE\0" + bytes(65_500)  # pushes the frame header past HEADER_BYTES
    return data[:2] + b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


class ImageHost:
    """An inline image server that honours ``Range: bytes=0-N`` unless told not to."""

    def __init__(self) -> None:
        self.url = ""
        self.files: dict[str, bytes] = {}
        self.ignore_range: set[str] = set()
        self.requests: list[web.Request] = []
        self.release = anyio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate_at = 0  # hold requests until this many are in flight together
        self.gate = anyio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.in_flight >= self.gate_at:
                self.gate.set()
            await self.gate.wait()
            return await self.respond(request)
        finally:
            self.in_flight -= 1

    async def respond(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/error":
            return web.Response(status=500, text="<html>oops</html>")
        if path == "/garbage":
            return web.Response(body=b"\x00not an image at all" * 3)
        if path == "/hang":
            await self.release.wait()
            return web.Response(status=204)
        if path == "/stall":
            resp = web.StreamResponse(status=206)
            await resp.prepare(request)
            await resp.write(b"\x89PNG\r\n\x1a\n")
            await self.release.wait()
            return resp
        if path not in self.files:
            return web.Response(status=404)
        body = self.files[path]
        header = request.headers.get("Range", "")
        resp = web.Response(body=body)
        if header.startswith("bytes=0-") and path not in self.ignore_range:
            end = min(int(header.removeprefix("bytes=0-")), len(body) - 1)
            resp = web.Response(status=206, body=body[: end + 1])
            resp.headers["Content-Range"] = f"bytes 0-{end}/{len(body)}"
        resp.set_cookie("tracker", "from-image-host")
        return resp

    def paths(self) -> Counter[str]:
        return Counter(r.path for r in self.requests)


@pytest.fixture
async def host(inline_server: Start) -> ImageHost:
    image_host = ImageHost()
    image_host.url = await inline_server(image_host.handle)
    return image_host


async def test_probe_reads_real_images_with_range_and_no_credentials(host: ImageHost) -> None:
    base = host.url
    host.files = {
        "/a.png": encode((512, 512), "PNG"),
        "/c.jpg": encode((4096, 4096), "JPEG"),
        "/d.webp": encode((800, 600), "WEBP"),
        "/e.gif": encode((2048, 2048), "GIF"),
    }
    jar = aiohttp.CookieJar(unsafe=True)
    jar.update_cookies({"sid": "caller-secret"}, URL(base))
    async with aiohttp.ClientSession(
        headers={"Authorization": "Bearer rf_live_secret"}, cookie_jar=jar
    ) as session:
        urls = [u for r in mixed_requests(base) if isinstance(r, EditRequest) for u in r.input_urls]
        sizes = await probe_input_sizes(session, urls)
        assert "tracker" not in {c.key for c in jar}  # the image host's cookie was dropped
        assert not session.closed  # the borrowed connector still works
        async with session.get(f"{base}/a.png") as resp:
            assert resp.status == 200
    assert sizes == known_sizes(base)
    assert list(sizes) == list(dict.fromkeys(urls))
    assert host.paths() == Counter(["/a.png", "/b.png", "/c.jpg", "/d.webp", "/e.gif", "/a.png"])
    for request in host.requests[:5]:
        assert request.headers["Range"] == f"bytes=0-{HEADER_BYTES - 1}"
        assert "Authorization" not in request.headers
        assert "Cookie" not in request.headers
    # Probed sizes reproduce the hand-worked total.
    estimate = estimate_requests(mixed_requests(base), policy=PricingPolicy(), input_sizes=sizes)
    assert estimate.total_usd == HAND_TOTAL


async def test_probe_handles_servers_that_ignore_range(host: ImageHost) -> None:
    base = host.url
    host.files = {"/full.webp": encode((333, 222), "WEBP"), "/exif.jpg": big_exif_jpeg((64, 48))}
    host.ignore_range = {"/full.webp", "/exif.jpg"}
    async with aiohttp.ClientSession() as session:
        sizes = await probe_input_sizes(session, [f"{base}/full.webp", f"{base}/exif.jpg"])
        small = await probe_input_sizes(session, [f"{base}/full.webp"], max_bytes=30)
        tiny = await probe_input_sizes(session, [f"{base}/full.webp"], max_bytes=29)
    # The JPEG's frame header lies beyond the bytes we are willing to read.
    assert sizes == {f"{base}/full.webp": (333, 222), f"{base}/exif.jpg": None}
    assert small == {f"{base}/full.webp": (333, 222)}
    assert tiny == {f"{base}/full.webp": None}
    assert host.requests[-1].headers["Range"] == "bytes=0-28"


async def test_probe_failures_give_none_and_never_raise(host: ImageHost) -> None:
    base = host.url
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    urls = [
        f"{base}/missing.png",
        f"{base}/error",
        f"{base}/garbage",
        f"{base}/hang",
        f"{base}/stall",
        f"http://127.0.0.1:{closed_port}/refused.png",
        "http://",
        "ftp://img.example/a.png",
    ]
    async with aiohttp.ClientSession() as session:
        sizes = await probe_input_sizes(
            session, urls, timeout=aiohttp.ClientTimeout(total=0.1), concurrency=3
        )
    host.release.set()
    assert sizes == dict.fromkeys(urls)
    assert host.paths() == Counter(["/missing.png", "/error", "/garbage", "/hang", "/stall"])


async def test_probe_bounds_concurrency_and_fetches_each_url_once(host: ImageHost) -> None:
    base = host.url
    host.files = {f"/{n}.png": encode((10 + n, 20), "PNG") for n in range(6)}
    host.gate_at = 2  # the first two requests wait for each other, proving they overlap
    urls = [f"{base}/{n}.png" for n in (0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0)]
    async with aiohttp.ClientSession() as session:
        sizes = await probe_input_sizes(session, urls, concurrency=2)
    assert sizes == {f"{base}/{n}.png": (10 + n, 20) for n in range(6)}
    assert host.max_in_flight == 2
    assert host.paths() == Counter(f"/{n}.png" for n in range(6))


async def test_probe_rejects_nonsense_arguments_and_closed_sessions() -> None:
    session = aiohttp.ClientSession()
    with pytest.raises(ConfigurationError):
        await probe_input_sizes(session, ["http://x/a.png"], concurrency=0)
    with pytest.raises(ConfigurationError):
        await probe_input_sizes(session, ["http://x/a.png"], max_bytes=0)
    await session.close()
    with pytest.raises(RuntimeError, match="closed session"):
        await probe_input_sizes(session, ["http://x/a.png"])
    assert DEFAULT_PROBE_TIMEOUT.total == 10.0


async def test_probe_of_nothing_makes_no_requests(host: ImageHost) -> None:
    async with aiohttp.ClientSession() as session:
        assert await probe_input_sizes(session, []) == {}
    assert host.requests == []

"""Output files: real images of the requested size and format behind expiring signed URLs."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest
from PIL import Image

from runflow_async.emulator._images import ImageRenderer
from runflow_async.emulator._signing import UrlSigner
from tests.emulator.emulator_support import EDIT, FROZEN, Harness, running


async def _fetch(h: Harness, url: str) -> tuple[int, str, bytes]:
    async with h.http.get(url) as resp:  # presigned: no Authorization header
        return resp.status, resp.content_type, await resp.read()


async def _succeeded(h: Harness, **fields: Any) -> dict[str, Any]:
    run = await h.create(**fields)
    h.emu.advance(1000.0)
    done = await h.get(f"/v1/runs/{run['id']}")
    assert done["status_code"] == "succeeded"
    return done


@pytest.mark.parametrize(
    ("fields", "size", "pil_format", "content_type"),
    [
        ({}, (1024, 768), "PNG", "image/png"),
        (
            {"image_size": "portrait_16_9", "output_format": "jpeg"},
            (576, 1024),
            "JPEG",
            "image/jpeg",
        ),
        (
            {"image_size": {"width": 320, "height": 200}, "output_format": "webp"},
            (320, 200),
            "WEBP",
            "image/webp",
        ),
        ({"image_size": "square", "output_format": "png"}, (512, 512), "PNG", "image/png"),
    ],
)
async def test_images_have_the_exact_requested_size_and_format(
    fields: dict[str, Any], size: tuple[int, int], pil_format: str, content_type: str
) -> None:
    async with running(**FROZEN) as h:
        run = await _succeeded(h, input=fields)
        status, served_type, data = await _fetch(h, run["output"]["outputs"][0]["url"])
    assert status == 200
    assert served_type == content_type
    image = Image.open(io.BytesIO(data))
    assert image.format == pil_format
    assert image.size == size


async def test_every_image_of_a_multi_image_run_is_served_and_they_differ() -> None:
    urls = ["https://example.com/in.png"]
    async with running(**FROZEN) as h:
        run = await _succeeded(h, model=EDIT, input={"image_urls": urls, "num_images": 3})
        bodies = [(await _fetch(h, o["url"]))[2] for o in run["output"]["outputs"]]
        again = (await _fetch(h, run["output"]["outputs"][0]["url"]))[2]
    assert [Image.open(io.BytesIO(b)).size for b in bodies] == [(1024, 1024)] * 3
    assert len(set(bodies)) == 3
    assert again == bodies[0]


async def test_urls_expire_and_a_fresh_read_signs_them_again() -> None:
    async with running(**FROZEN, url_ttl=10.0) as h:
        run = await _succeeded(h)
        old_url = run["output"]["outputs"][0]["url"]
        assert (await _fetch(h, old_url))[0] == 200
        h.emu.advance(12.0)
        status, _, body = await _fetch(h, old_url)
        fresh = await h.get(f"/v1/runs/{run['id']}")
        new_url = fresh["output"]["outputs"][0]["url"]
        assert (await _fetch(h, new_url))[0] == 200
    assert status == 403
    assert b'"code":"URL_EXPIRED"' in body
    assert new_url != old_url


@pytest.mark.parametrize(
    "mangle",
    [
        lambda url: url[:-1] + ("0" if url[-1] != "0" else "1"),
        lambda url: url.split("?")[0],
        lambda url: url.replace("exp=", "exp=x"),
        lambda url: url.replace("exp=", "exp=%C2%B2"),  # a superscript two is no digit
        lambda url: url.replace("/0.png", "/1.png"),
    ],
)
async def test_a_tampered_url_is_403(mangle: Any) -> None:
    async with running(**FROZEN) as h:
        run = await _succeeded(h)
        status, _, body = await _fetch(h, mangle(run["output"]["outputs"][0]["url"]))
    assert status == 403
    assert b'"code":"SIGNATURE_MISMATCH"' in body


@pytest.mark.parametrize("name", ["1.png", "0.jpg", "x.png", "0"])
async def test_a_validly_signed_url_for_no_such_file_is_404(name: str) -> None:
    async with running(**FROZEN) as h:
        run = await _succeeded(h)
        queued = await h.create()
        signer = UrlSigner(h.emu.config.seed)
        clock = h.emu._state.clock
        expires = clock.epoch_seconds(clock.now() + h.emu.config.url_ttl + 2000.0)
        paths = [f"/files/{run['id']}/{name}", f"/files/{queued['id']}/0.png", "/files/nope/0.png"]
        statuses = [(await _fetch(h, signer.sign("", path, expires)))[0] for path in paths]
    assert statuses == [404, 404, 404]


async def test_a_missing_pillow_answers_500_pillow_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(**FROZEN) as h:
        run = await _succeeded(h)
        monkeypatch.setitem(sys.modules, "PIL", None)
        status, _, body = await _fetch(h, run["output"]["outputs"][0]["url"])
    assert status == 500
    assert b'"code":"PILLOW_MISSING"' in body
    assert b"runflow-async[emulator]" in body


async def test_the_image_cache_keeps_only_the_most_recent_renders() -> None:
    renderer = ImageRenderer(max_entries=2)
    first = await renderer.render("run", 0, "png", (64, 64))
    await renderer.render("run", 1, "png", (64, 64))
    assert await renderer.render("run", 0, "png", (64, 64)) is first  # a hit refreshes it
    await renderer.render("run", 2, "png", (64, 64))  # evicts index 1, the oldest
    assert await renderer.render("run", 0, "png", (64, 64)) is first
    assert len(renderer._cache) == 2
    assert ("run", 1, "png", (64, 64)) not in renderer._cache

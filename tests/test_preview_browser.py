"""The preview's gallery in a real browser: headless Chromium renders it from disk.

Skipped, saying why, where Chromium is not installed (``.ci/run`` installs
Debian's ``chromium`` when it can).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

from runflow_async._dataset.preview import write_preview
from tests.test_dataset_cli import manifest
from tests.test_preview import INJECTION, Page, make_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH (Debian: apt-get install chromium): the gallery is rendered "
    "in a real browser only where one is installed",
)


async def rendered(page: Path, profile: Path) -> str:
    """The DOM Chromium builds from ``page`` once its images have loaded (virtual time)."""
    assert CHROMIUM is not None
    result = await anyio.run_process(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        check=True,
    )
    return result.stdout.decode()


@pytest.mark.timeout(180)  # a cold browser start on a loaded machine
async def test_the_gallery_renders_every_image_and_prompt_as_text(tmp_path: Path) -> None:
    out = await make_dataset(tmp_path)
    made = write_preview(out, count=5)
    html = await rendered(made.html, tmp_path / "profile")
    dom = Page()
    dom.feed(html)
    tags = dict(dom.tags)
    body = tags["body"]
    # Set by the page's script once every <img> fired load (none fired error).
    assert body.get("data-loaded") == "5", body
    assert body.get("data-failed") == "0"
    assert [tag for tag, _ in dom.tags].count("img") == 5
    assert [tag for tag, _ in dom.tags].count("script") == 1  # the injection made none
    assert INJECTION in dom.text  # rendered as text
    assert "<title>out</title>" in html  # the injected script did not run
    shown = {r["prompt"] for r in manifest(out)[:5]}
    assert shown <= set(dom.text)  # each prompt is a caption of its own

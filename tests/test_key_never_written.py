"""The API key never reaches disk or a log record, across a whole faulty CLI session.

One end-to-end session under faults (429s, 5xx pages, dropped connections, lost
create responses, failed runs): a generate dataset interrupted by a budget and
resumed, an edit dataset with a local image (uploaded to storage), ``status``
and ``estimate``. Then every byte of every file the CLI wrote (journal with its
WAL, manifest, failures, the log, the images), everything it printed, and
every log record from every logger at DEBUG are searched for the key.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import anyio
import pytest

from runflow_async._cli.main import main
from runflow_async.emulator import Emulator, FaultRates

KEY = "rf_live_SCAN9f3c1e7a5b2d4068aa71"
SCALE = 0.001


def leaks(data: bytes) -> list[str]:
    """The forms of the key found in ``data`` (raw, JSON-escaped, base64)."""
    forms = {
        "raw": KEY.encode(),
        "base64": base64.b64encode(KEY.encode()),
        "bearer-base64": base64.b64encode(f"Bearer {KEY}".encode()),
        "utf-16": KEY.encode("utf-16-le"),
    }
    return [name for name, form in forms.items() if form in data]


def test_the_scanner_finds_a_planted_key(tmp_path: Path) -> None:
    assert leaks(f"x Authorization: Bearer {KEY} y".encode()) == ["raw"]
    assert leaks(base64.b64encode(f"Bearer {KEY}".encode())) == ["bearer-base64"]
    assert leaks(b"nothing here") == []


def every_file(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def run_cli(argv: list[str]) -> int:
    return await anyio.to_thread.run_sync(main, argv)


@pytest.mark.anyio
async def test_nothing_the_cli_writes_or_logs_contains_the_api_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's included
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a scanned test image {i}\n" for i in range(60)))
    photo = tmp_path / "photo.png"
    Image.new("RGB", (128, 96), (200, 30, 30)).save(photo)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "make it blue", "image_urls": [str(photo)]}) + "\n")
    gen, edit = tmp_path / "gen", tmp_path / "edit"
    faults = FaultRates(rate_429=0.05, rate_5xx=0.05, rate_drop=0.01, rate_lost_create=0.03)
    async with Emulator(
        api_keys=frozenset({KEY}), time_scale=SCALE, seed=12, failure_rate=0.05, faults=faults
    ) as emu:
        common = ["--base-url", emu.url, "--api-key", KEY, "--yes", "--time-scale", str(SCALE)]
        size = ["--image-size", "64x64"]
        # A budget too small for all 60 stops it part-way; the second run finishes.
        assert await run_cli(["generate", str(prompts), "--out", str(gen), *common, *size,
                              "--max-cost", "0.0005"]) == 1  # fmt: skip
        await run_cli(["generate", str(prompts), "--out", str(gen), *common, *size])
        assert await run_cli(["edit", str(jobs), "--out", str(edit), *common]) == 0
        assert await run_cli(["status", str(gen), "--json"]) == 0
        assert await run_cli(["estimate", str(prompts), "--json"]) == 0
        counters = emu.counters
    printed = capsys.readouterr()

    # The session really ran, under faults, with this key.
    assert counters.runs_created >= 61
    assert sum(counters.faults_injected.values()) > 0
    assert counters.requests_by_route["upload_put"] == 1

    written = every_file(gen) | every_file(edit)
    names = {p.name for p in written}
    assert {"journal.sqlite3", "metadata.jsonl", "log.txt"} <= names
    assert any(p.suffix == ".png" or p.suffix == ".jpg" for p in written)
    log_text = (gen / ".runflow" / "log.txt").read_text()
    assert "Retrying" in log_text or "retry" in log_text.lower()  # the log is not empty
    for path, data in written.items():
        assert leaks(data) == [], f"the API key is in {path}"
    assert leaks(printed.out.encode()) == []
    assert leaks(printed.err.encode()) == []
    assert caplog.records  # aiohttp and our own loggers said things
    for record in caplog.records:
        text = record.getMessage() + (caplog.text if record is caplog.records[-1] else "")
        assert leaks(text.encode()) == [], f"the API key is in a {record.name} log record"
        assert leaks(repr(record.__dict__).encode()) == []

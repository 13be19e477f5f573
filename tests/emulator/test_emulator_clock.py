"""The emulated clock starts at the real wall time (or an explicit anchor) and runs scaled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from runflow_async._cli.main import main
from runflow_async.emulator import EmulatorConfig
from runflow_async.emulator._clock import EPOCH, EmulatedClock
from tests.emulator.emulator_support import running

# 1000 real seconds make one emulated second: however slow the machine, the
# emulated clock moves by well under a second during a test.
STILL = {"time_scale": 1000.0, "median_duration": 1.0, "duration_sigma": 0.0}
ANCHOR = datetime(2031, 5, 6, 7, 8, 9, 250_000, tzinfo=UTC)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_by_default_timestamps_are_near_the_real_time() -> None:
    before = datetime.now(UTC)
    async with running(**STILL) as h:
        run = await h.create()
        report = h.emu.report()
    after = datetime.now(UTC)
    created = _at(run["created_at"])
    # The clock's start lies between the two readings; it moved under a second since.
    assert before - timedelta(seconds=1) <= created <= after + timedelta(seconds=1)
    assert created.utcoffset() == timedelta(0)
    # The report still counts emulated seconds from the start.
    assert 0 <= report["runs"][0]["created"] <= report["now"] < 1.0


async def test_an_explicit_anchor_makes_timestamps_deterministic() -> None:
    async with running(**STILL, clock_anchor=ANCHOR) as h:
        run = await h.create()
        h.emu.advance(3600.0)
        later = await h.create()
        done = await h.get(f"/v1/runs/{run['id']}")
    assert run["created_at"].startswith("2031-05-06T07:08:09.")
    assert later["created_at"].startswith("2031-05-06T08:08:09.")
    assert _at(done["completed_at"]) - _at(run["created_at"]) == timedelta(seconds=1)


async def test_the_former_fixed_epoch_is_one_anchor_among_others() -> None:
    async with running(**STILL, clock_anchor=EPOCH) as h:
        run = await h.create()
    assert run["created_at"].startswith("2026-01-01T00:00:00.")


async def test_an_anchor_in_another_zone_is_shown_in_utc() -> None:
    anchor = datetime(2030, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    async with running(**STILL, clock_anchor=anchor) as h:
        run = await h.create()
    assert run["created_at"].startswith("2030-01-01T00:00:00.")
    assert run["created_at"].endswith("+00:00")


async def test_an_anchor_before_the_epoch_works_too() -> None:
    anchor = datetime(2024, 2, 29, 12, 0, tzinfo=UTC)
    async with running(**STILL, clock_anchor=anchor) as h:
        run = await h.create()
        h.emu.advance(10.0)
        await h.get(f"/v1/runs/{run['id']}")  # noticed now
        report = h.emu.report()
    assert run["created_at"].startswith("2024-02-29T12:00:00.")
    (row,) = report["runs"]
    assert row["noticed"] is not None
    assert 10.0 <= row["noticed"] < 11.0


async def test_presigned_urls_expire_relative_to_the_anchored_clock() -> None:
    async with running(**STILL, clock_anchor=ANCHOR, url_ttl=600.0) as h:
        upload = await h.post(
            "/v1/asset-uploads", {"filename": "a.png", "mime_type": "image/png", "size_bytes": 3}
        )
    expires = int(parse_qs(urlsplit(upload["upload_url"]).query)["exp"][0])
    assert 600 <= expires - ANCHOR.timestamp() < 602


def test_a_naive_anchor_is_refused() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        EmulatorConfig(clock_anchor=datetime(2030, 1, 1))  # noqa: DTZ001 - the point


def test_the_clock_counts_from_its_anchor() -> None:
    clock = EmulatedClock(1000.0, ANCHOR)
    assert clock.origin == (ANCHOR - EPOCH).total_seconds()
    assert 0 <= clock.since_start(clock.now()) < 1.0
    assert EmulatedClock.iso(clock.origin) == "2031-05-06T07:08:09.250000+00:00"


@pytest.mark.parametrize("bad", ["yesterday", "2030-01-01T00:00:00"])
def test_the_clock_anchor_flag_wants_an_iso_time_with_an_offset(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["emulator", "--clock-anchor", bad])
    assert exited.value.code == 2
    assert "--clock-anchor" in capsys.readouterr().err

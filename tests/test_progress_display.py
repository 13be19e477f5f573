"""The dataset progress display (issue 14, "progress people trust").

Driven with explicit times (an injected clock): nothing here depends on how
fast the machine is.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from runflow_async._cli.progress import ProgressPrinter, fields, layout, money
from runflow_async._dataset.input import Defaults, read_generate_file
from runflow_async._dataset.pipeline import run_dataset
from runflow_async._dataset.progress import DatasetProgress
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, make_client
from tests.test_dataset_cli import cli_args, prompts_file, run_cli

ANSI = re.compile(r"\x1b\[")


class FakeTTY(io.StringIO):
    """A terminal as far as the display can tell."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def drawn(stream: io.StringIO) -> list[str]:
    """What each redraw left on the line (tqdm pads to erase a longer previous one)."""
    text = stream.getvalue()
    assert text.endswith("\n")
    assert text.count("\n") == 1  # one line, redrawn in place: never a new line before the end
    return [part for part in text[:-1].split("\r") if part]


def states(clock: Clock) -> list[DatasetProgress]:
    """A resumed million-item run going on, as the pipeline would show it."""
    p = DatasetProgress.resumed(
        1_000_000, done=600_000, failed=3_000, spent_usd=Decimal("13.8"), started=clock.now
    )
    out = [DatasetProgress(**vars(p))]
    for _ in range(3):
        p.done += 2_000
        p.failed += 7
        p.in_flight = 64
        p.spent_usd += Decimal("0.046")
        out.append(DatasetProgress(**vars(p)))
    return out


@pytest.mark.parametrize("width", [40, 80, 200])
def test_the_live_line_fits_the_terminal_and_never_wraps(width: int) -> None:
    clock = Clock()
    stream = FakeTTY()
    printer = ProgressPrinter(stream, live=True, width=width, every=0.0, clock=clock)
    for p in states(clock):
        printer(p)
        clock.now += 10
    printer.close()
    lines = drawn(stream)
    assert len(lines) == 5  # the first state, 3 updates, and the last one again on close
    for line in lines:
        assert len(line) < width  # one column spare: a full-width line wraps on some terminals
        assert not ANSI.search(line)
    last = lines[-1].rstrip()
    assert "606000/1000000" in last  # done is always shown
    assert "ETA " in last
    assert "$13.938000" in last  # spent (earlier sessions included) is always shown
    if width >= 80:
        assert "3021 failed" in last
        assert "390979 pending" in last
    if width == 200:
        assert "|#" in last  # room for a bar
        assert "64 running" in last


def test_the_rate_and_eta_are_this_sessions_own() -> None:
    # Resumed at 600,000 of 1,000,000; this session finished 6,021 in 30 s: 200.7/s.
    clock = Clock(50.0)
    p = states(clock)[-1]
    now = 80.0
    assert p.finished_now == 6_021
    assert p.rate(now) == pytest.approx(6_021 / 30)
    # The items still to do at this session's rate (not 606,021 / 30 s).
    assert p.eta_seconds(now) == pytest.approx(390_979 / (6_021 / 30))
    assert fields(p, now)["rate"] == "200.7/s"
    assert fields(p, now)["eta"] == "ETA 32:28"
    assert DatasetProgress(total=3).eta_seconds() is None  # nothing finished yet: unknown
    assert fields(DatasetProgress(total=3, started=0.0), 1.0)["eta"] == "ETA ?"


def test_items_left_for_a_later_run_are_not_in_the_eta() -> None:
    p = DatasetProgress.resumed(10, done=2, failed=0, spent_usd=Decimal(0), started=0.0)
    p.done += 4
    p.deferred = 4  # e.g. a budget stopped them: this session will not run them
    assert p.pending == 4
    assert p.to_do == 0
    assert p.eta_seconds(2.0) == 0.0
    assert fields(DatasetProgress(total=1, started=0.0, done=1), 120.0)["rate"] == "0.5/min"


def test_a_narrow_terminal_gets_short_fields_first_then_trimmed() -> None:
    clock = Clock()
    texts = fields(states(clock)[-1], clock.now + 30)
    assert layout(texts, None).count("{rf_") == 7  # width unknown: every field, no bar
    narrow = layout(texts, 39)
    assert "{rf_short_done}" in narrow
    assert "{rf_short_spent}" in narrow
    assert "{bar}" not in narrow
    assert layout(texts, 10) == "{rf_short_done}  {rf_eta}"  # tqdm trims the rest
    stream = FakeTTY()
    printer = ProgressPrinter(stream, live=True, width=12, every=0.0, clock=clock)
    printer(states(clock)[-1])
    printer.close()
    assert all(len(line) < 12 for line in drawn(stream))


def test_plain_lines_every_few_seconds_without_terminal_codes() -> None:
    clock = Clock(0.0)
    stream = io.StringIO()  # CI: stderr is not a terminal
    printer = ProgressPrinter(stream, live=False, every=5.0, clock=clock)
    p = DatasetProgress(total=10, started=0.0)
    for second in range(13):
        clock.now = float(second)
        p.done = second // 2
        printer(p)
    printer.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # at 0 s, 5 s and 10 s
    assert "\r" not in stream.getvalue()
    assert not ANSI.search(stream.getvalue())
    assert lines[0].startswith("0/10 done  0 failed  10 pending  0 running  ?/s  ETA ?")
    assert lines[2] == ProgressPrinter.line(
        DatasetProgress(total=10, done=5, started=0.0), now=10.0
    )


def test_close_shows_the_latest_progress_even_between_redraws() -> None:
    clock = Clock(0.0)
    stream = FakeTTY()
    printer = ProgressPrinter(stream, live=True, width=80, every=1.0, clock=clock)
    p = DatasetProgress(total=4, started=0.0)
    printer(DatasetProgress(**vars(p)))
    p.done = 4
    printer(p)  # within the second: not drawn yet
    assert "4/4 done" not in stream.getvalue()
    printer.close()
    printer.close()  # twice is harmless
    assert drawn(stream)[-1].startswith("4/4 done")


def test_money_is_written_like_the_summary() -> None:
    assert money(Decimal("0.000092")) == "$0.000092"
    assert money(Decimal("1.5")) == "$1.500000"
    assert money(Decimal("0.092000")) == "$0.092000"  # as the summary prints $0.092000


async def test_a_resumed_dataset_shows_earlier_spend_and_ends_on_the_summary(
    tmp_path: Path,
) -> None:
    items = read_generate_file(prompts_file(tmp_path, 8), Defaults(image_size=(64, 64)))
    out = tmp_path / "out"
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001, seed=3) as emu,
        make_client(emu.url) as client,
    ):
        first = await run_dataset(client, out, items[:4], concurrency=4)
        assert first.succeeded == 4
        assert first.spent_usd > 0
        seen: list[DatasetProgress] = []
        stream = FakeTTY()
        printer = ProgressPrinter(stream, live=True, width=80, every=0.0)

        def show(p: DatasetProgress) -> None:
            seen.append(DatasetProgress(**vars(p)))
            printer(p)

        summary = await run_dataset(client, out, items, concurrency=4, on_progress=show)
        printer.close()
    # The first line, before this session finished anything: the earlier session's work.
    assert (seen[0].done, seen[0].done_before, seen[0].spent_usd) == (4, 4, first.spent_usd)
    lines = drawn(stream)
    assert lines[0].startswith("4/8 done")
    assert money(first.spent_usd) in lines[0]
    # The last state is the summary's: counts and spent, earlier sessions included.
    assert summary.succeeded == 8
    assert (seen[-1].done, seen[-1].failed, seen[-1].pending) == (8, 0, 0)
    assert seen[-1].spent_usd == summary.spent_usd
    assert seen[-1].finished_now == 4
    assert lines[-1].startswith("8/8 done")
    assert f"{money(summary.spent_usd)} spent" in lines[-1]
    assert f"${summary.spent_usd} spent" in lines[-1]  # the very text of the summary line


async def test_a_session_after_ctrl_c_starts_from_what_was_finished(tmp_path: Path) -> None:
    items = read_generate_file(prompts_file(tmp_path, 60), Defaults(image_size=(64, 64)))
    out = tmp_path / "out"
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001, seed=4) as emu,
        make_client(emu.url) as client,
    ):
        task = asyncio.get_running_loop().create_task(
            run_dataset(client, out, items, concurrency=8, on_progress=lambda p: stop(p))
        )
        last: list[DatasetProgress] = []

        def stop(p: DatasetProgress) -> None:
            last[:] = [DatasetProgress(**vars(p))]
            if p.done >= 5 and not task.cancelling():
                task.cancel()

        with pytest.raises(asyncio.CancelledError):
            await task
        resumed: list[DatasetProgress] = []
        summary = await run_dataset(
            client,
            out,
            items,
            concurrency=8,
            on_progress=lambda p: resumed.append(DatasetProgress(**vars(p))),
        )
    assert summary.succeeded == 60
    assert resumed[0].done_before == resumed[0].done >= 5
    assert resumed[0].finished_now == 0
    assert resumed[0].rate() is None  # no rate (nor ETA) from the earlier session's items
    assert resumed[-1].finished_now == 60 - resumed[0].done
    assert resumed[-1].spent_usd == summary.spent_usd


async def test_the_cli_prints_plain_lines_from_where_earlier_sessions_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = prompts_file(tmp_path, 4)  # 64x64 images: $0.000023 each
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001) as emu:
        assert await run_cli(cli_args(inp, out, emu.url)) == 0
        with inp.open("a") as fh:
            fh.write("".join(f"one more {i}\n" for i in range(4)))
        capsys.readouterr()
        assert await run_cli(cli_args(inp, out, emu.url)) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # not a terminal: plain lines
    assert not ANSI.search(err)
    # The first line (before this session finished anything) has the earlier spend.
    assert "4/8 done  0 failed  4 pending  0 running  ?/s  ETA ?  $0.000092 spent\n" in err
    assert "8/8 done, 0 failed, 0 not finished, spent $0.000184 " in err


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
@pytest.mark.parametrize("columns", [40, 80])
def test_on_a_real_terminal_the_line_follows_its_width(tmp_path: Path, columns: int) -> None:
    # A pseudo-terminal of `columns` columns: the width tqdm reads, as a person's terminal.
    import fcntl
    import pty
    import struct
    import termios

    inp = prompts_file(tmp_path, 60)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    args = ["generate", str(inp), "--out", str(tmp_path / "out"), "--emulator", "--yes"]
    args += ["--image-size", "64x64", "--api-key", API_KEY]
    with subprocess.Popen(  # noqa: S603 - this interpreter, our arguments
        [sys.executable, "-m", "runflow_async", *args],
        env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
    ) as proc:  # fmt: skip
        os.close(slave)
        text = _read_all(master).decode()
        assert proc.wait(timeout=60) == 0
    os.close(master)
    live = [part for part in re.split(r"[\r\n]", text) if re.match(r"\d+/60( done)?  ", part)]
    assert live  # the live line was drawn
    assert all(len(part) < columns for part in live)
    assert "60/60 done, 0 failed, 0 not finished" in text
    assert not ANSI.search(text)


def test_a_terminal_of_unknown_width_gets_every_field_and_no_bar() -> None:
    clock = Clock()
    stream = FakeTTY()  # no file descriptor: tqdm cannot read a width
    printer = ProgressPrinter(stream, live=True, every=0.0, clock=clock)
    printer(states(clock)[-1])
    printer.close()
    (line,) = set(drawn(stream))
    assert line == ProgressPrinter.line(states(clock)[-1], now=clock.now)

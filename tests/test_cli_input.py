"""Bad command-line input: one line on stderr, the documented exit status, nothing sent.

Exit statuses (README, "CLI"): 0 done, 1 failed/unfinished or declined, 2 bad
usage or input, 130 interrupted. Where a run could start, an emulator in this
process is the API, and it must have seen no request at all. The confirmation
prompt is answered for real: the command runs in its own process with a
pseudo-terminal as its stdin, and gets end-of-input or SIGINT while it waits.
"""

from __future__ import annotations

import io
import logging
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runflow_async._cli.main import _parser, main
from runflow_async._cli.options import verbose
from runflow_async._pricing import PRESET_SIZES
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY
from tests.test_dataset_cli import SCALE, cli_args, prompts_file, run_cli

ROOT = Path(__file__).resolve().parent.parent
# What the console script runs (`python -m runflow_async._cli.main` adds a runpy warning).
COMMAND = [
    sys.executable,
    "-c",
    "import sys; from runflow_async._cli.main import main; sys.exit(main())",
]
# The same, with Ctrl-C as an interactive shell leaves it (a test run in the
# background inherits SIGINT ignored, and Python then never sees it).
INTERACTIVE = [
    sys.executable,
    "-c",
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from runflow_async._cli.main import main; sys.exit(main())",
]


def status_of(argv: list[str]) -> int | str | None:
    """``main``'s exit status, whether returned or raised (argparse exits on usage errors)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "read-only"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    # Root writes through mode bits; an immutable folder is read-only even for root.
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], check=False).returncode:  # noqa: S603
        pytest.skip("running as root without chattr: no folder is read-only")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)  # noqa: S603


# -- --out ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["a file", "inside a file", "read-only", "inside read-only"])
@pytest.mark.parametrize("command", ["generate", "edit"])
async def test_an_unusable_out_is_refused_before_anything_is_sent(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    where: str,
    command: str,
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    out = {"a file": afile, "inside a file": afile / "out"}.get(where)
    if out is None:
        ro: Path = request.getfixturevalue("read_only_dir")
        out = ro if where == "read-only" else ro / "new" / "out"
    inp = prompts_file(tmp_path, 2)
    if command == "edit":
        inp = tmp_path / "jobs.jsonl"
        inp.write_text('{"prompt": "p", "image_urls": ["https://example.com/a.png"]}\n')
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        argv = cli_args(inp, out, emu.url)
        argv[0] = command
        assert await run_cli(argv) == 2
        assert sum(emu.counters.requests_by_route.values()) == 0
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"runflow-async {command}: --out {out} is not a")
    assert afile.read_text() == "not a folder\n"


def test_the_demo_refuses_an_out_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["demo", "--out", str(afile), "--count", "1"]) == 2
    assert one_line(capsys.readouterr().err) == f"runflow-async demo: --out {afile} is not a folder"


# -- numbers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-cost", "nan"),
        ("--max-cost", "NaN"),
        ("--max-cost", "sNaN"),
        ("--max-cost", "inf"),
        ("--max-cost", "-Infinity"),
        ("--max-cost", "-1"),
        ("--max-cost", "0"),
        ("--max-cost", "0.000"),
        ("--max-cost", "five"),
        ("--max-cost", ""),
        ("--concurrency", "0"),
        ("--concurrency", "-3"),
        ("--concurrency", "many"),
        ("--time-scale", "0"),
        ("--time-scale", "nan"),
        ("--time-scale", "inf"),
        ("--time-scale", "-1"),
        ("--time-scale", "fast"),
    ],
)
async def test_a_bad_number_is_a_usage_error_and_nothing_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        argv = cli_args(prompts_file(tmp_path, 2), tmp_path / "out", emu.url)
        argv[argv.index("--time-scale") : argv.index("--time-scale") + 2] = []
        code = await anyio.to_thread.run_sync(status_of, [*argv, flag, value])
        assert sum(emu.counters.requests_by_route.values()) == 0
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"runflow-async generate: error: argument {flag}: ")
    assert line.endswith("(see runflow-async generate --help)")
    assert not (tmp_path / "out").exists()


# -- the confirmation prompt -----------------------------------------------------


class Terminal(io.StringIO):
    """A stdin that says it is a terminal (the in-process twin of the pty tests)."""

    def isatty(self) -> bool:
        return True


class CtrlC(Terminal):
    def readline(self, size: int | None = -1, /) -> str:  # type: ignore[override]
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("stdin", "code"), [(Terminal(""), 1), (CtrlC(), 130)], ids=["eof", "ctrl-c"]
)
async def test_no_answer_at_the_prompt_submits_nothing_in_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stdin: Terminal,
    code: int,
) -> None:
    monkeypatch.setattr(sys, "stdin", stdin)
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        argv = cli_args(prompts_file(tmp_path, 2), tmp_path / "out", emu.url)
        argv.remove("--yes")
        assert await run_cli(argv) == code
        assert sum(emu.counters.requests_by_route.values()) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last == (
        "runflow-async: nothing submitted" if code == 1 else "runflow-async generate: interrupted"
    )


def _at_the_prompt(argv: list[str], answer: bytes | signal.Signals) -> tuple[int, str, str]:
    """Run the CLI with a pty as stdin; once it asks, type ``answer`` or send the signal."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Our own arguments; a real process and terminal are the point of the test.
    proc = subprocess.Popen(  # noqa: S603
        [*INTERACTIVE, *argv], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    os.close(slave)
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdout, stderr = proc.stdout.fileno(), proc.stderr.fileno()
    seen = {stdout: b"", stderr: b""}
    try:
        deadline = time.monotonic() + 60
        while b"[y/N]" not in b"".join(seen.values()):
            assert proc.poll() is None, seen
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select(list(seen), [], [], 0.1)
            for fd in ready:
                seen[fd] += os.read(fd, 65536)
        if isinstance(answer, bytes):
            os.write(master, answer)
        else:
            proc.send_signal(answer)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    return proc.returncode, (seen[stdout] + out).decode(), (seen[stderr] + err).decode()


@pytest.mark.parametrize(
    ("answer", "code", "last"),
    [
        (b"\x04", 1, "runflow-async: nothing submitted"),  # Ctrl-D: end of input
        (signal.SIGINT, 130, "runflow-async generate: interrupted"),  # Ctrl-C
        (b"n\n", 1, "runflow-async: nothing submitted"),
    ],
    ids=["eof", "ctrl-c", "no"],
)
async def test_the_prompt_on_a_terminal_takes_eof_and_ctrl_c_as_no(
    tmp_path: Path, answer: bytes | signal.Signals, code: int, last: str
) -> None:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        argv = cli_args(prompts_file(tmp_path, 2), tmp_path / "out", emu.url)
        argv.remove("--yes")
        status, out, err = await anyio.to_thread.run_sync(_at_the_prompt, argv, answer)
        assert sum(emu.counters.requests_by_route.values()) == 0
    assert status == code, err
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 12  # the estimate, the question, the answer
    if answer == b"n\n":  # the terminal echoes the answer's newline, not stderr
        assert err.endswith(f"[y/N] {last}\n")
    else:  # no newline was typed: the command ends the question's line itself
        assert err.strip().splitlines()[-1] == last
    assert out == ""  # the question is on stderr: stdout is for --json


async def test_yes_on_a_terminal_runs_the_dataset(tmp_path: Path) -> None:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        argv = cli_args(prompts_file(tmp_path, 2), tmp_path / "out", emu.url, "--json")
        argv.remove("--yes")
        status, out, err = await anyio.to_thread.run_sync(_at_the_prompt, argv, b"y\n")
        assert emu.counters.runs_created == 2
    assert status == 0, err
    assert '"succeeded": 2' in out


# -- the emulator's port -------------------------------------------------------


def test_the_emulator_on_a_port_in_use_says_so_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(  # noqa: S603
            [*COMMAND, "emulator", "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert (
        line == f"runflow-async emulator: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert done.stdout == ""


async def test_an_emulator_that_cannot_bind_cleans_up_its_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The app's startup (its callback sender) ran; a failed bind must run its cleanup too.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        emu = Emulator(port=busy.getsockname()[1])
        with caplog.at_level(logging.ERROR), pytest.raises(OSError, match="in use"):
            await emu.start()
    assert emu._runner is None
    await emu.aclose()


# -- help, -v, estimate --------------------------------------------------------


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


def test_help_shows_the_defaults_and_every_size_preset(capsys: pytest.CaptureFixture[str]) -> None:
    generate = help_of(capsys, "generate")
    assert "runs at once (default: 16)" in generate
    for name, (width, height) in PRESET_SIZES.items():
        assert f"{name} {width}x{height}" in generate
    assert "64-2048 a side" in generate
    assert "(default: None)" not in generate
    assert "(default: runflow-demo)" in help_of(capsys, "demo")
    assert "(default: 4)" in help_of(capsys, "demo")
    emulator = help_of(capsys, "emulator")
    assert "TCP port (0: any free one) (default: 8787)" in emulator
    assert "(default: 0.5)" in emulator
    assert "(default: [])" not in emulator
    assert "2 bad usage or input" in help_of(capsys)


async def test_verbose_logs_the_library_on_stderr_and_never_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("runflow_async")
    handlers, level = list(logger.handlers), logger.level
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        emu.faults.next("create", Fault.status(503))  # a retry, logged at INFO
        argv = cli_args(prompts_file(tmp_path, 1), tmp_path / "out", emu.url, "-v")
        assert await run_cli(argv) == 0
    err = capsys.readouterr().err
    assert "INFO runflow_async: " in err
    assert "POST /v1/models/" in err
    assert API_KEY not in err
    assert (logger.handlers, logger.level) == (handlers, level)  # nothing left behind
    # Without -v, the same retry is not on stderr (it is in the folder's log).
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        emu.faults.next("create", Fault.status(503))
        argv = cli_args(prompts_file(tmp_path, 1), tmp_path / "quiet", emu.url)
        assert await run_cli(argv) == 0
    assert "Retrying" not in capsys.readouterr().err


def test_vv_logs_debug_records_and_blanks_out_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("runflow_async")
    with verbose(2, ["sk-the-key", ""]):
        assert logger.getEffectiveLevel() == logging.DEBUG
        logger.debug("sending %s to %s", "Bearer sk-the-key", "the API")
        logger.debug("plain %d", 7)
    with verbose(1, []):
        assert logger.getEffectiveLevel() == logging.INFO
        logger.debug("not shown")
    logger.info("not shown either")
    err = capsys.readouterr().err
    assert "DEBUG runflow_async: sending Bearer [redacted] to the API" in err
    assert "DEBUG runflow_async: plain 7" in err
    assert "sk-the-key" not in err
    assert "not shown" not in err


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["-vv", "estimate", "p.txt"], 2),
        (["estimate", "p.txt", "-vv"], 2),
        (["-v", "emulator"], 1),
        (["emulator", "--verbose"], 1),
        (["status", "d"], None),
    ],
)
def test_verbose_may_come_before_or_after_the_command(argv: list[str], level: int | None) -> None:
    assert _parser().parse_args(argv).verbose == level


def test_estimate_prints_its_result_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = prompts_file(tmp_path, 3)
    assert main(["estimate", str(inp), "--image-size", "square_hd"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith("Estimate: 3 runs, 3 images, 3.00 MP, $0.018")
    assert "  assumes: " in captured.out

"""The command line: demo end to end, the emulator command, and the example script."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import aiohttp
import anyio
import pytest

from runflow_async._cli.main import main
from runflow_async.emulator import Emulator
from tests.conftest import TIME_SCALE, make_client
from tests.test_http import unused_port

ROOT = Path(__file__).resolve().parent.parent


def test_demo_writes_images_and_reports_matching_costs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path), "--count", "3"]) == 0
    out = capsys.readouterr().out
    files = sorted(tmp_path.glob("00000/*.png"))  # the first shard's subfolder
    assert len(files) == 3
    for f in files:
        assert str(f) in out
    lines = dict(line.split(":", 1) for line in out.splitlines() if "cost" in line)
    estimated = Decimal(lines["Estimated cost"].strip().lstrip("$"))
    billed = Decimal(lines["Billed cost"].strip().lstrip("$"))
    assert estimated == billed > 0


def test_demo_rejects_a_bad_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--count", "0"]) == 2
    assert "--count" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("stop", "ignore_sigint"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["ctrl-c", "sigterm", "ctrl-c-when-started-in-the-background"],
)
async def test_emulator_command_serves_until_stopped(stop: int, ignore_sigint: bool) -> None:
    port = unused_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def background() -> None:  # what a non-interactive shell's `&` does to its children
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    # A real process is the point of this test; the arguments are our own.
    proc = subprocess.Popen(  # noqa: ASYNC220, S603
        [sys.executable, "-m", "runflow_async", "emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        env=env,
        preexec_fn=background if ignore_sigint else None,  # runs before any thread exists
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(1000):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/v1/health") as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await anyio.sleep(0.005)
            else:
                pytest.fail("the emulator did not start")
    finally:
        proc.send_signal(stop)
        try:
            out, _ = proc.communicate(timeout=10)
        finally:
            proc.kill()
    assert proc.returncode == 0
    assert f"127.0.0.1:{port}" in out.decode()


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_generate_one_example_runs_against_the_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example("generate_one")
    async with Emulator(time_scale=TIME_SCALE) as emu:
        monkeypatch.setenv("RUNFLOW_BASE_URL", emu.url)
        monkeypatch.setenv("RUNFLOW_API_KEY", "example-key")
        # The example's own client, with waits scaled like the emulator's clock.
        assert await example.main(tmp_path, make_client(emu.url, api_key="example-key")) == 0
    assert len([p async for p in anyio.Path(tmp_path).glob("*.png")]) == 1
    assert "billed $" in capsys.readouterr().out


async def test_batch_example_runs_against_the_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example("batch_with_budget")
    async with Emulator(time_scale=TIME_SCALE) as emu:
        assert await example.main(tmp_path, make_client(emu.url)) == 0
        billed = emu.counters.billed_usd
    out = capsys.readouterr().out
    assert len([p async for p in anyio.Path(tmp_path).glob("*.png")]) == 12
    assert f"billed ${billed}" in out
    assert "12 runs, 12 images" in out


async def test_callback_example_runs_against_the_emulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example("callback_batch")
    assert await example.main(tmp_path, time_scale=TIME_SCALE) == 0
    out = capsys.readouterr().out
    assert len([p async for p in anyio.Path(tmp_path).glob("*.png")]) == 10
    assert "10 callbacks accepted" in out
    assert "10 creates, 0 run reads" in out


def test_python_dash_m_runs_the_command_without_a_warning() -> None:
    # For when the console script is not on PATH; `-m runflow_async._cli.main` warned (runpy).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-m", "runflow_async", "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("runflow-async ")
    assert done.stderr == ""

"""One run per dataset folder; leftovers of a killed download are swept; odd reads end one item."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from runflow_async import (
    APIResponseError,
    ConfigurationError,
    GenerateRequest,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
)
from runflow_async._cli.main import main
from runflow_async._dataset.folder_lock import exclusive_folder
from runflow_async._http.download import TEMP_SUFFIX, write_atomic
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, TIME_SCALE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def test_a_second_run_on_a_busy_folder_is_refused(tmp_path: Path) -> None:
    with (
        exclusive_folder(tmp_path),
        pytest.raises(ConfigurationError, match="Another runflow-async process"),
        exclusive_folder(tmp_path),
    ):
        pass  # pragma: no cover - never entered
    with exclusive_folder(tmp_path):  # released on exit
        pass


def test_a_killed_download_leaves_nothing_once_the_folder_is_opened_again(
    tmp_path: Path,
) -> None:
    write_atomic(tmp_path / "kept.png", b"png")
    stale = tmp_path / f".item-0.png.k2j3h4{TEMP_SUFFIX}"
    stale.write_bytes(b"half an image")  # what kill -9 mid-download leaves
    with exclusive_folder(tmp_path):
        assert not stale.exists()
    assert (tmp_path / "kept.png").read_bytes() == b"png"
    assert [p.name for p in tmp_path.iterdir() if p.name != ".runflow"] == ["kept.png"]


@pytest.mark.anyio
async def test_the_cli_refuses_a_folder_another_run_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu:
        argv = ["generate", str(prompts), "--out", str(out), "--base-url", emu.url]
        argv += ["--api-key", API_KEY, "--yes", "--time-scale", str(TIME_SCALE)]
        with exclusive_folder(out):  # another process would hold it like this
            code = await anyio.to_thread.run_sync(main, argv)
        created = emu.counters.runs_created
    assert code == 1
    assert created == 0
    assert "Another runflow-async process" in capsys.readouterr().err


@pytest.mark.anyio
async def test_an_unreadable_run_ends_its_item_not_the_batch(
    inline_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def api(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            ref = json.loads(await request.read())["client_ref"]
            run_id = "bad" if "bad" in ref else "good"
            return web.json_response({"id": run_id, "status_code": "queued"}, status=201)
        if request.path.endswith("/bad"):
            return web.json_response({"status_code": "succeeded"})  # no id: not a run
        output = {"outputs": [{"url": "https://files.invalid/0.png"}]}
        return web.json_response(
            {"id": "good", "status_code": "succeeded", "cost": "0.01", "output": output}
        )

    url = await inline_server(api)
    client = RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=TIME_SCALE),
        poll=PollPolicy(time_scale=TIME_SCALE),
        wait_strategy="per_run",
    )
    async with client, client.batch() as batch:
        bad = batch.submit(GenerateRequest(prompt="x", client_ref="bad-1"))
        good = batch.submit(GenerateRequest(prompt="y", client_ref="good-1"))
    assert isinstance((await bad.wait()).error, APIResponseError)
    assert (await good.wait()).ok
    assert batch.unfinished_run_ids == ["bad"]  # it exists: listed for collection


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    from runflow_async._http.download import write_atomic

    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.png", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.png").stat().st_mode) == 0o640

"""One item never takes the run down; a bad local edit input stops everything before billing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from runflow_async import ClientClosedError, CustomImageSize, GenerateRequest, Outcome, RunRequest
from runflow_async._batch.hooks import WorkItem
from runflow_async._cli.main import main
from runflow_async._dataset.input import Defaults, read_edit_file, read_generate_file
from runflow_async._dataset.pipeline import run_dataset
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY, TIME_SCALE, make_client


async def run_cli(argv: list[str]) -> int:
    """``main`` in a worker thread: its own event loop; ours keeps serving the emulator."""
    return await anyio.to_thread.run_sync(main, argv)


def cli_args(command: str, inp: Path, out: Path, url: str) -> list[str]:
    return [
        command, str(inp), "--out", str(out), "--base-url", url, "--api-key", API_KEY,
        "--yes", "--time-scale", str(TIME_SCALE), "--image-size", "64x64",
    ]  # fmt: skip


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def photo(path: Path) -> Path:
    Image.new("RGB", (64, 64), (10, 120, 200)).save(path)
    return path


def jobs(tmp_path: Path, *images: str) -> Path:
    path = tmp_path / "jobs.jsonl"
    lines = [json.dumps({"prompt": f"edit {n}", "image_urls": [i]}) for n, i in enumerate(images)]
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "content",
    [b'{"error": "not an image"}', b"<html>nope</html>", b"plain text, named .png"],
    ids=["json", "html", "text"],
)
async def test_a_non_image_edit_input_is_one_line_and_nothing_is_sent(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    photo(tmp_path / "a.png")
    photo(tmp_path / "c.png")
    (tmp_path / "b.png").write_bytes(content)
    inp = jobs(tmp_path, "a.png", "b.png", "c.png")
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu:
        code = await run_cli(cli_args("edit", inp, tmp_path / "out", emu.url))
        counters = emu.counters
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2  # the documented usage/input error
    assert sum(counters.requests_by_route.values()) == 0
    assert counters.runs_created == 0
    assert len(err) == 1
    assert str(inp) in err[0]
    assert "line 2" in err[0]
    assert "b.png: not a PNG, JPEG, WebP or GIF image" in err[0]


async def test_a_disk_error_for_one_item_ends_only_that_item(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = tmp_path / "prompts.txt"
    inp.write_text("".join(f"a tiny test image number {i}\n" for i in range(6)))
    items = read_generate_file(inp, Defaults(image_size=(64, 64)))
    out = tmp_path / "out"
    blocked = out / "00000" / f"{items[2].key}-0.png"  # in the first shard's subfolder
    blocked.mkdir(parents=True)  # a directory where one image goes: renaming onto it fails
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu:
        first = await run_cli(cli_args("generate", inp, out, emu.url))
        err = capsys.readouterr().err
        [failure] = rows(out / "failures.jsonl")
        done_first = len(rows(out / "metadata.jsonl"))
        blocked.rmdir()
        second = await run_cli(cli_args("generate", inp, out, emu.url))
        created = emu.counters.runs_created
    assert first == 1  # the documented partial-failure code
    assert "Traceback" not in err
    assert "5/6 done" in err
    assert done_first == 5  # its siblings all finished
    assert failure["key"] == items[2].key
    assert failure["error_type"] == "IsADirectoryError"
    assert failure["collectable"] is True
    assert failure["run_id"]
    assert second == 0
    assert len(rows(out / "metadata.jsonl")) == 6
    assert created == 6  # the blocked item's run was collected, not created again


async def test_downloads_that_break_the_image_check_end_their_items_not_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = tmp_path / "prompts.txt"
    inp.write_text("".join(f"prompt {i}\n" for i in range(5)))
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu:
        # Every item's download and its second try (after a fresh read) are pages.
        emu.faults.next("file", Fault.not_image(html=True), times=10)
        argv = [*cli_args("generate", inp, out, emu.url), "--json"]
        first = await run_cli(argv)
        captured = capsys.readouterr()
        failed = rows(out / "failures.jsonl")
        left = [p for p in out.iterdir() if p.suffix == ".png" or p.name.endswith(".rfa-part")]
        second = await run_cli(argv)
        created = emu.counters.runs_created
    summary = json.loads(captured.out)
    assert first == 1
    assert "Traceback" not in captured.err
    assert summary["not_finished"] == {"to collect": 5}
    assert {f["error_type"] for f in failed} == {"DownloadError"}
    assert all(f["collectable"] and f["run_id"] for f in failed)
    assert left == []  # no page saved as an image, no temporary file
    assert second == 0
    assert len(rows(out / "metadata.jsonl")) == 5
    assert created == 5


async def test_an_upload_that_fails_ends_only_its_item_and_nothing_is_billed(
    tmp_path: Path,
) -> None:
    # The file was an image at the pre-flight check and is not one any more
    # when its turn comes: its upload is refused, its siblings go on.
    for name in ("a.png", "b.png", "c.png"):
        photo(tmp_path / name)
    items = read_edit_file(jobs(tmp_path, "a.png", "b.png", "c.png"), Defaults())
    (tmp_path / "b.png").write_bytes(b'{"changed": true}')
    out = tmp_path / "out"
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        summary = await run_dataset(client, out, items)
        counters = emu.counters
    assert (summary.succeeded, summary.failed, summary.pending) == (2, 0, 1)
    assert list(summary.reasons) == ["upload"]
    assert counters.runs_created == 2
    assert counters.requests_by_route["upload_put"] == 2


async def _engine_outcomes(client: Any, items: list[WorkItem]) -> list[Outcome]:
    outcomes: list[Outcome] = []

    async def read(engine: Any) -> None:
        async for outcome in engine.outcomes:
            outcomes.append(outcome)

    async with client.engine() as engine, anyio.create_task_group() as tg:
        tg.start_soon(read, engine)
        for item in items:
            await engine.put(item)
        await engine.end_input()
    return sorted(outcomes, key=lambda o: o.index)


async def test_a_prepare_hook_that_raises_ends_only_its_item(emulator: Emulator) -> None:
    async def broken(request: RunRequest) -> RunRequest:
        raise ValueError("this item's upload failed")

    tiny = GenerateRequest(prompt="a fox", image_size=CustomImageSize(width=64, height=64))
    async with make_client(emulator.url) as client:
        first, second = await _engine_outcomes(
            client,
            [
                WorkItem(0, tiny, prepare=broken),
                WorkItem(1, tiny),
            ],
        )
    assert isinstance(first.error, ValueError)
    assert first.run_id is None
    assert second.ok
    assert emulator.counters.runs_created == 1


async def test_a_prepare_hook_that_finds_the_client_closed_still_ends_the_batch(
    emulator: Emulator,
) -> None:
    async def closed(request: RunRequest) -> RunRequest:
        raise ClientClosedError("closed under us")

    async with make_client(emulator.url) as client:
        with pytest.raises(ClientClosedError):
            await _engine_outcomes(
                client, [WorkItem(0, GenerateRequest(prompt="x"), prepare=closed)]
            )
    assert emulator.counters.runs_created == 0

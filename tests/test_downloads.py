"""Downloads: streamed to disk, capped, checked to be an image; a bad one is collected later."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from runflow_async import APIConnectionError, DownloadError, NotFoundError, RunflowClient
from runflow_async._cli.main import _parser
from runflow_async._dataset.input import Defaults, read_generate_file
from runflow_async._dataset.pipeline import run_dataset
from runflow_async.emulator import Emulator, Fault, FaultRates
from runflow_async.emulator._cli import _config
from tests.conftest import API_KEY, TIME_SCALE, make_client

TINY = {"image_size": (64, 64)}


def listing(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir())


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _one_image(client: RunflowClient, **fields: Any) -> str:
    result = await client.generate("a fox", **{**TINY, **fields})
    return result.images[0].url


# -- the client's download ---------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [Fault.not_image(), Fault.not_image(html=True), Fault.html_ok(), Fault.oversized(0)],
    ids=["json-as-png", "html-as-png", "html-page", "tiny-json"],
)
async def test_a_page_served_as_the_image_is_refused_and_nothing_is_written(
    tmp_path: Path, fault: Fault
) -> None:
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        url = await _one_image(client)
        emu.faults.next("file", fault)
        with pytest.raises(DownloadError) as info:
            await client.download(url, tmp_path / "out.png")
        again = await client.download(url, tmp_path / "out.png")  # the real one
    assert info.value.code == "not_an_image"
    assert "?" not in str(info.value)  # the signed query string is a credential
    assert again.content_type == "image/png"
    assert listing(tmp_path) == ["out.png"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_image_over_the_cap_is_refused_and_nothing_is_written(
    tmp_path: Path, chunked: bool
) -> None:
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        url = await _one_image(client)
        emu.faults.next("file", Fault.oversized_image(300_000, chunked=chunked))
        with pytest.raises(DownloadError) as info:
            await client.download(url, tmp_path / "big.png", max_bytes=200_000)
        emu.faults.next("file", Fault.oversized_image(150_000, chunked=chunked))
        under = await client.download(url, tmp_path / "ok.png", max_bytes=200_000)
    assert info.value.code == "too_large"
    assert "200000 bytes" in str(info.value)
    assert (under.size, under.content_type) == (150_000, "image/png")
    assert listing(tmp_path) == ["ok.png"]


async def test_a_large_image_is_streamed_never_held_whole_in_memory(tmp_path: Path) -> None:
    size = 24 * 1024 * 1024
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        url = await _one_image(client)
        emu.faults.next("file", Fault.oversized_image(size, chunked=True))
        tracemalloc.start()
        try:
            saved = await client.download(url, tmp_path / "large.png")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert saved.size == (tmp_path / "large.png").stat().st_size == size
    assert peak < size // 3  # a few chunks in flight, never the whole body


async def test_a_dropped_download_is_retried(tmp_path: Path) -> None:
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        url = await _one_image(client)
        emu.faults.next("file", Fault.drop(), times=2)
        saved = await client.download(url, tmp_path / "x.png")
        emu.faults.next("file", Fault.drop(), times=100)
        before = emu.counters.requests_by_route["file"]
        with pytest.raises(APIConnectionError):
            await client.download(url, tmp_path / "y.png")
        tries = emu.counters.requests_by_route["file"] - before
    assert saved.content_type == "image/png"
    # Three attempts (aiohttp itself may resend once on a reused connection).
    assert 3 <= tries <= 6
    assert listing(tmp_path) == ["x.png"]


async def test_name_by_type_names_the_file_by_what_it_is(tmp_path: Path) -> None:
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        url = await _one_image(client, output_format="jpeg")
        kept = await client.download(url, tmp_path / "as-asked.png")
        named = await client.download(url, tmp_path / "by-type.png", name_by_type=True)
    assert (kept.path.name, kept.content_type) == ("as-asked.png", "image/jpeg")
    assert (named.path.name, named.content_type) == ("by-type.jpg", "image/jpeg")
    assert named.path.read_bytes().startswith(b"\xff\xd8\xff")


async def test_max_bytes_must_be_positive(tmp_path: Path) -> None:
    async with make_client("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="max_bytes"):
            await client.download("http://127.0.0.1:9/x.png", tmp_path / "x.png", max_bytes=0)


# -- the dataset pipeline ------------------------------------------------------------


def _items(tmp_path: Path, n: int) -> list[Any]:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"a tiny test image number {i}\n" for i in range(n)))
    return read_generate_file(path, Defaults(image_size=(64, 64)))


BAD_DOWNLOADS = {
    "not-image": Fault.not_image(),
    "oversized": Fault.oversized_image(300_000),
    "404": Fault.status(404, "FILE_NOT_FOUND"),
}


@pytest.mark.parametrize("name", ["not-image", "oversized"])  # 403/404: test_dataset_cli
async def test_one_bad_download_is_fetched_again_with_a_fresh_url(
    tmp_path: Path, name: str
) -> None:
    items = _items(tmp_path, 3)
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu:
        emu.faults.next("file", BAD_DOWNLOADS[name])
        async with make_client(emu.url) as client:
            summary = await run_dataset(client, out, items, max_image_bytes=200_000)
        counters = emu.counters
    assert (summary.succeeded, summary.pending, summary.exit_code) == (3, 0, 0)
    assert counters.requests_by_route["file"] == 4  # one fetched twice
    assert counters.runs_created == 3


@pytest.mark.parametrize("name", list(BAD_DOWNLOADS))
async def test_a_download_that_stays_bad_is_collected_on_the_next_run_never_recreated(
    tmp_path: Path, name: str
) -> None:
    items = _items(tmp_path, 4)
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu:
        # One download at a time: the first item gets both bad answers (its
        # download, and the one after reading the run again).
        emu.faults.next("file", BAD_DOWNLOADS[name], times=2)
        async with make_client(emu.url) as client:
            first = await run_dataset(
                client, out, items, download_concurrency=1, max_image_bytes=200_000
            )
            [failure] = rows(out / "failures.jsonl")
            shard = out / "00000"
            images_first = sorted(p.name for p in shard.glob("*.*") if p.suffix in (".png", ".jpg"))
            second = await run_dataset(client, out, items, max_image_bytes=200_000)
        counters = emu.counters
    assert (first.succeeded, first.failed, first.pending, first.exit_code) == (3, 0, 1, 1)
    assert first.reasons == {"to collect": 1}
    expected = NotFoundError.__name__ if name == "404" else DownloadError.__name__
    assert failure["error_type"] == expected
    assert failure["collectable"] is True
    assert failure["run_id"]
    assert len(images_first) == 3  # nothing of the bad one, no temporary file
    assert not list(out.rglob(f".{failure['key']}*"))
    assert (second.succeeded, second.pending, second.exit_code) == (4, 0, 0)
    assert rows(out / "failures.jsonl") == []
    assert {r["key"] for r in rows(out / "metadata.jsonl")} == {i.key for i in items}
    assert counters.runs_created == 4  # collected by its run id, never created again


async def test_download_faults_at_a_rate_end_with_every_image_in_a_few_runs(
    tmp_path: Path,
) -> None:
    faults = FaultRates(
        rate_not_image=0.1,
        rate_oversized_image=0.1,
        oversized_image_bytes=300_000,
        rate_download_404=0.1,
        applies_to=frozenset({"file"}),
    )
    items = _items(tmp_path, 20)
    out = tmp_path / "out"
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, seed=4, faults=faults
    ) as emu:
        async with make_client(emu.url) as client:
            # One download at a time: the seeded draws meet the items in one order.
            summaries = [
                await run_dataset(
                    client, out, items, download_concurrency=1, max_image_bytes=200_000
                )
                for _ in range(6)
            ]
        counters = emu.counters
    assert summaries[0].pending > 0  # some downloads failed twice in a row
    assert summaries[-1].succeeded == 20
    assert counters.runs_created == 20
    injected = counters.faults_injected
    assert injected["not_image"] > 0
    assert injected["oversized_image"] > 0
    assert injected["status_404"] > 0
    assert all(
        (out / r["file_name"]).stat().st_size < 200_000 for r in rows(out / "metadata.jsonl")
    )


# -- the emulator's knobs -------------------------------------------------------------


def test_download_fault_flags_reach_the_fault_rates() -> None:
    flags = ["--rate-not-image", "0.1", "--rate-oversized-image", "0.2"]
    flags += ["--rate-download-404", "0.05", "--oversized-image-bytes", "1000"]
    args = _parser().parse_args(["emulator", *flags, "--fault-routes", "create,file"])
    rates = _config(args).faults
    assert (rates.rate_not_image, rates.rate_oversized_image) == (0.1, 0.2)
    assert (rates.rate_download_404, rates.oversized_image_bytes) == (0.05, 1000)
    assert rates.total == pytest.approx(0.35)


def test_download_fault_rates_need_a_file_route(capsys: pytest.CaptureFixture[str]) -> None:
    from runflow_async._cli.main import main

    assert main(["emulator", "--rate-not-image", "0.5"]) == 2
    assert "need a file route" in capsys.readouterr().err
    with pytest.raises(ValueError, match="oversized_image_bytes"):
        FaultRates(oversized_image_bytes=-1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultRates(rate_download_404=2, applies_to=frozenset({"file"}))


def test_download_faults_apply_only_to_file_routes() -> None:
    emu = Emulator()
    for fault in (Fault.not_image(), Fault.oversized_image(10)):
        assert fault.download_only
        with pytest.raises(ValueError, match="only applies to"):
            emu.faults.next("get_run", fault)
        emu.faults.next("asset_file", fault)
    with pytest.raises(ValueError, match="must not be negative"):
        Fault.oversized_image(-1)


async def test_a_404_then_a_re_read_without_images_leaves_the_run_to_collect(
    tmp_path: Path,
) -> None:
    # The IndexError: the fresh read after a 404 shows no outputs at all.
    items = _items(tmp_path, 2)
    out = tmp_path / "out"
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        emu.faults.next("file", Fault.status(404, "FILE_NOT_FOUND"))
        emu.faults.next("get_run", Fault.null_output())  # the pipeline's re-read
        first = await run_dataset(client, out, items)
        [failure] = rows(out / "failures.jsonl")
        second = await run_dataset(client, out, items)
        counters = emu.counters
    assert counters.faults_injected == {"status_404": 1, "null_output": 1}
    assert (first.succeeded, first.reasons) == (1, {"to collect": 1})
    assert (failure["error_type"], failure["collectable"]) == ("APIResponseError", True)
    assert "without image 0" in failure["error"]
    assert second.succeeded == 2
    assert counters.runs_created == 2


async def test_a_download_costs_one_thread_hop_at_most_and_a_small_one_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each hop to a worker thread waits for the GIL behind the others: counted, not timed."""
    hops: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    umask = os.umask(0o022)
    os.umask(umask)
    size = 24 * 1024 * 1024
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        url = await _one_image(client)
        small = await client.download(url, tmp_path / "small.png")
        small_hops, hops[:] = list(hops), []
        emu.faults.next("file", Fault.oversized_image(600_000, chunked=True))
        held = await client.download(url, tmp_path / "held.png")
        held_hops, hops[:] = list(hops), []
        emu.faults.next("file", Fault.oversized_image(size, chunked=True))
        large = await client.download(url, tmp_path / "large.png")
    assert small_hops == []  # written on the loop: a thread hop costs more
    assert len(held_hops) == 1  # create, write, chmod and rename in one call
    assert len(hops) <= size // (1024 * 1024) + 2  # by the megabyte, not by the 64 KiB chunk
    for saved in (small, held, large):
        data = saved.path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (saved.size, saved.sha256)
        assert saved.path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert listing(tmp_path) == ["held.png", "large.png", "small.png"]


async def test_a_body_refused_after_it_was_spilled_to_disk_leaves_nothing(tmp_path: Path) -> None:
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        url = await _one_image(client)
        emu.faults.next("file", Fault.oversized_image(5 * 1024 * 1024, chunked=True))
        with pytest.raises(DownloadError) as info:
            await client.download(url, tmp_path / "big.png", max_bytes=4 * 1024 * 1024)
        (tmp_path / "taken.png").mkdir()  # a folder where the file goes: the rename fails
        with pytest.raises(IsADirectoryError):
            await client.download(url, tmp_path / "taken.png")
    assert info.value.code == "too_large"
    assert listing(tmp_path) == ["taken.png"]
    assert list((tmp_path / "taken.png").iterdir()) == []


async def test_a_download_opens_one_file_its_own_created_with_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel applies the umask at creation: no file is read to learn it, no chmod after."""
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu,
        make_client(emu.url) as client,
    ):
        url = await _one_image(client)
        await client.download(url, tmp_path / "new" / "first.png")  # its folder made
        opened: list[str] = []
        real_open, real_os_open = builtins.open, os.open

        def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(str(file))
            return real_open(file, *args, **kwargs)

        def counting_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
            opened.append(str(path))
            return real_os_open(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(os, "open", counting_os_open)
        old = os.umask(0o027)
        try:
            saved = await client.download(url, tmp_path / "new" / "x.png")
        finally:
            os.umask(old)
            monkeypatch.undo()
    assert len(opened) == 1, opened
    assert Path(opened[0]).parent == tmp_path / "new"  # the hidden file beside it
    assert saved.path.stat().st_mode & 0o777 == 0o640
    assert listing(tmp_path / "new") == ["first.png", "x.png"]

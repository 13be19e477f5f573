"""Sharded formats (issue 14): kill -9 mid-way, resume, load with ``datasets``: each item once."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from runflow_async.emulator import Emulator
from tests.conftest import API_KEY
from tests.test_dataset_cli import cli_args, kill_when, manifest, prompts_file, run_cli

N = 24


def load(fmt: str, out: Path) -> list[dict[str, Any]]:
    import datasets  # heavy: imported only here

    if fmt == "webdataset":
        files = sorted(str(p) for p in out.glob("shard-*.tar"))
        table = datasets.load_dataset(
            "webdataset", data_files=files, split="train", cache_dir=str(out.parent / "hf-cache")
        )
        return [{**r["json"], "image": r["png"]} for r in table]
    return list(
        datasets.load_dataset(
            fmt, data_dir=str(out), split="train", cache_dir=str(out.parent / "hf-cache")
        )
    )


@pytest.mark.parametrize("fmt", ["imagefolder", "parquet", "webdataset"])
async def test_killed_then_resumed_each_item_once(tmp_path: Path, fmt: str) -> None:
    inp = prompts_file(tmp_path, N)
    out = tmp_path / "out"
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=0.01, median_duration=5.0, seed=3
    ) as emu:
        args = cli_args(inp, out, emu.url, "--format", fmt, "--shard-size", "5", scale=0.01)
        await kill_when(args, out, "succeeded", 8)
        assert await run_cli(args) == 0
        assert emu.counters.runs_created == N  # nothing created twice
    rows = manifest(out)
    assert len(rows) == N
    records = await anyio.to_thread.run_sync(load, fmt, out)
    assert len(records) == N
    by_run = {r["run_id"]: r for r in rows}
    assert len({r["run_id"] for r in records}) == N  # every item exactly once
    for record in records:
        row = by_run[record["run_id"]]
        assert (record["prompt"], record["seed"]) == (row["prompt"], row["seed"])
        assert record["image"].size == (row["width"], row["height"]) == (64, 64)
    assert not list((out / ".runflow" / "staging").glob("*.png"))  # all packed or in place
    if fmt == "imagefolder":
        folders = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.isdigit())
        assert folders == ["00000", "00001", "00002", "00003", "00004"]
        assert all(len(list((out / f).iterdir())) <= 5 for f in folders)
        assert all(r["file_name"].split("/")[0] in folders for r in rows)


# webdataset 1.0.2 leaves its tar files to the garbage collector (not ours: tarfile closes).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_webdataset_package_reads_the_shards(tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001) as emu:
        args = cli_args(prompts_file(tmp_path, 4), out, emu.url, "--format", "webdataset")
        assert await run_cli(args) == 0
    shards = sorted(str(p) for p in out.glob("shard-*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert len(samples) == 4
    assert all(s["png"].size == (64, 64) and s["json"]["prompt"] for s in samples)
    with tarfile.open(shards[0]) as tar:  # a finalised shard is whole
        assert len(tar.getnames()) == 8


async def test_a_folder_keeps_its_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    inp = prompts_file(tmp_path, 2)
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001) as emu:
        assert await run_cli(cli_args(inp, out, emu.url, "--format", "parquet")) == 0
        assert await run_cli(cli_args(inp, out, emu.url, "--format", "webdataset")) != 0
        assert "holds a parquet dataset" in capsys.readouterr().err
        assert await run_cli(cli_args(inp, out, emu.url, "--shard-size", "9")) != 0
        assert await run_cli(cli_args(inp, out, emu.url)) == 0  # as it was made
        assert emu.counters.runs_created == 2


@pytest.mark.parametrize("fmt", ["imagefolder", "parquet", "webdataset"])
async def test_an_edit_dataset_of_local_inputs_killed_then_resumed_each_item_once(
    tmp_path: Path, fmt: str
) -> None:
    from PIL import Image

    count = 12
    lines = []
    for i in range(count):
        local = tmp_path / f"in{i}.png"
        Image.new("RGB", (96, 64), (10 * i, 120, 200)).save(local)
        lines.append(json.dumps({"prompt": f"make it night {i}", "image_urls": [local.name]}))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f"{line}\n" for line in lines))
    out = tmp_path / "out"
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=0.01, median_duration=5.0, seed=4
    ) as emu:
        args = ["edit", *cli_args(jobs, out, emu.url, "--format", fmt, "--shard-size", "5")[1:]]
        args[args.index("--image-size") : args.index("--image-size") + 2] = []  # follows input
        args[args.index("--time-scale") + 1] = "0.01"
        await kill_when(args, out, "succeeded", 4)
        assert await run_cli(args) == 0
        assert emu.counters.runs_created == count  # nothing created twice
        uploads = emu.counters.requests_by_route["upload_put"]
    assert count <= uploads <= 2 * count  # a killed item's upload may be made again, unbilled
    rows = manifest(out)
    records = await anyio.to_thread.run_sync(load, fmt, out)
    assert len(rows) == len(records) == count
    by_run = {r["run_id"]: r for r in rows}
    assert len({r["run_id"] for r in records}) == count  # every item exactly once
    for record in records:
        row = by_run[record["run_id"]]
        assert record["prompt"] == row["prompt"]
        assert record["image"].size == (row["width"], row["height"]) == (96, 64)
        if fmt == "webdataset":  # the sample's JSON names its inputs
            assert record["inputs"], record


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
async def test_a_sharded_folder_has_a_card_that_loads_it_and_a_preview(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from runflow_async._dataset.preview import write_preview

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001) as emu:
        args = cli_args(prompts_file(tmp_path, 7), out, emu.url, "--format", fmt)
        assert await run_cli([*args, "--shard-size", "3"]) == 0
    header = (out / "README.md").read_text().split("---\n")[1]
    meta = yaml.safe_load(header)
    pattern = {"parquet": "train-*.parquet", "webdataset": "shard-*.tar"}[fmt]
    assert meta["configs"][0]["data_files"][0]["path"] == [pattern]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 7
    assert meta["dataset_info"]["splits"][0]["num_bytes"] > 0
    made = write_preview(out, count=5, columns=5)
    assert made.images == 5
    import datasets  # heavy: imported only here

    def load() -> Any:  # the README's configs, no builder named
        return datasets.load_dataset(
            str(out), split="train", cache_dir=str(out.parent / "hf-cache")
        )

    table = await anyio.to_thread.run_sync(load)
    assert table.num_rows == 7
    prompts = sorted(r["prompt"] for r in manifest(out))
    if fmt == "parquet":
        assert sorted(table["prompt"]) == prompts
        assert {record["image"].size for record in table} == {(64, 64)}
    else:
        assert sorted(r["json"]["prompt"] for r in table) == prompts
        assert {r["png"].size for r in table} == {(64, 64)}


async def test_the_layout_is_the_one_the_journal_recorded_else_read_from_the_files(
    tmp_path: Path,
) -> None:
    import shutil

    from runflow_async._dataset.listing import layout

    folder, packed = tmp_path / "folder", tmp_path / "packed"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001) as emu:
        assert await run_cli(cli_args(prompts_file(tmp_path, 2), folder, emu.url)) == 0
        args = cli_args(prompts_file(tmp_path, 2), packed, emu.url, "--format", "parquet")
        assert await run_cli(args) == 0
    (folder / "shard-000000.tar").write_bytes(b"a user's own file, not a shard")
    assert layout(folder) == "imagefolder"  # as its journal says
    assert layout(packed) == "parquet"
    shutil.rmtree(packed / ".runflow")  # a folder copied without its journal
    assert layout(packed) == "parquet"

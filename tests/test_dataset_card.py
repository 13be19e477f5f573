"""The dataset card: README.md with a Hugging Face YAML header, rewritten each session."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from runflow_async._dataset.card import redact_command, sha256_of
from runflow_async._dataset.preview import write_preview
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY
from tests.test_dataset_cli import cli_args, failures, manifest, prompts_file, run_cli


def front_matter(out: Path) -> tuple[dict[str, Any], str]:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    meta = yaml.safe_load(header)
    assert isinstance(meta, dict)
    return meta, body


async def test_the_card_parses_matches_the_folder_and_never_holds_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNFLOW_API_KEY", API_KEY)
    inp = prompts_file(tmp_path, 12)
    out = tmp_path / "out"
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=0.001, seed=3, failure_rate=0.25
    ) as emu:
        argv = cli_args(inp, out, emu.url)
        argv[argv.index("--api-key") : argv.index("--api-key") + 2] = [f"--api-key={API_KEY}"]
        await run_cli(argv)
        billed = emu.counters.billed_usd
    rows, failed = manifest(out), failures(out)
    assert failed  # some runs failed on purpose
    meta, body = front_matter(out)
    assert meta["task_categories"] == ["text-to-image"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["license"] == "other"  # the placeholder, for the user to fill in
    assert "FILL IN" in (out / "README.md").read_text()
    info = meta["dataset_info"]
    assert info["splits"] == [
        {"name": "train", "num_examples": len(rows), "num_bytes": info["dataset_size"]}
    ]
    assert info["dataset_size"] == sum((out / r["file_name"]).stat().st_size for r in rows)
    features = {f["name"]: f["dtype"] for f in info["features"]}
    assert features["image"] == "image"
    assert features["prompt"] == features["run_id"] == "string"
    assert features["seed"] == features["width"] == "int64"
    assert set(features) == {*rows[0]} - {"file_name"} | {"image"}
    assert meta["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": ["metadata.jsonl", "**/*.png"]}],
        }
    ]
    succeeded = len({r["key"] for r in rows})
    assert f"{succeeded} succeeded, {len(failed)} failed, 0 not finished (of 12)" in body
    assert f"Total billed: ${billed}" in body
    assert billed == sum(Decimal(r["cost_usd"]) for r in rows)
    assert f"`{sha256_of(inp)}`" in body
    assert "black-forest-labs/flux-2-klein-9b" in body
    assert f"Endpoint: `{emu.url}`" in body
    assert f"runflow-async generate {inp} --out {out}" in body
    assert "'--api-key=***'" in body
    assert "Time span: 20" in body
    assert "unknown" not in body
    for path in out.rglob("*"):  # no file of the folder holds the key
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    assert not list(out.glob(".README.md.*"))  # no temporary card left


async def test_the_card_loads_the_folder_on_its_own_and_counts_every_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001) as emu:
        assert await run_cli(cli_args(prompts_file(tmp_path, 3), out, emu.url)) == 0
        card = (out / "README.md").read_text()
        (out / "README.md").write_text(card.replace("license: other", "license: cc-by-4.0"))
        assert await run_cli(cli_args(prompts_file(tmp_path, 5), out, emu.url)) == 0
        billed = emu.counters.billed_usd
    meta, body = front_matter(out)
    assert meta["license"] == "cc-by-4.0"  # the user's license survives the rewrite
    assert "5 succeeded, 0 failed, 0 not finished (of 5)" in body
    assert f"Total billed: ${billed}" in body  # both sessions
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 5
    write_preview(out)  # hidden in .preview/: no loader takes the sheet for data
    import datasets  # heavy: imported only here

    def load() -> Any:  # the README's configs, no builder named
        return datasets.load_dataset(
            str(out), split="train", cache_dir=str(out.parent / "hf-cache")
        )

    table = await anyio.to_thread.run_sync(load)
    assert table.num_rows == 5
    assert sorted(table["prompt"]) == sorted(r["prompt"] for r in manifest(out))
    assert {record["image"].size for record in table} == {(64, 64)}


async def test_an_edit_dataset_card_says_image_to_image(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 120, 200)).save(tmp_path / "photo.png")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "make it night", "image_urls": ["photo.png"]}) + "\n")
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001) as emu:
        argv = ["edit", *cli_args(jobs, out, emu.url)[1:]]
        assert await run_cli(argv) == 0
    meta, body = front_matter(out)
    assert meta["task_categories"] == ["image-to-image"]
    assert "black-forest-labs/flux-2-klein-9b/edit" in body
    assert API_KEY not in body


def test_secret_flags_and_known_secrets_are_hidden() -> None:
    argv = ["runflow-async", "generate", "p.txt", "--api-key", "k1", "--hf-token=t2", "--out", "d"]
    assert redact_command(argv) == (
        "runflow-async generate p.txt --api-key '***' '--hf-token=***' --out d"
    )
    assert redact_command(["x", "--base-url", "https://u:s3cret@h", "s3cret"], ["s3cret", ""]) == (
        "x --base-url 'https://u:***@h' '***'"
    )
    assert redact_command(["x", "--api-key"]) == "x --api-key"


async def test_a_card_that_cannot_be_written_leaves_the_dataset_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    (out / "README.md").mkdir(parents=True)  # in the card's way
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001) as emu:
        assert await run_cli(cli_args(prompts_file(tmp_path, 2), out, emu.url)) == 0
    assert len(manifest(out)) == 2
    assert (out / "README.md").is_dir()
    assert not list(out.glob(".README.md.*"))
    assert "the dataset card was not written" in caplog.text


def test_images_held_as_bytes_are_counted_without_a_file() -> None:
    from runflow_async._dataset.card import _columns
    from runflow_async._dataset.listing import Entry

    rows, types, suffixes, size = _columns([Entry(row={"prompt": "p", "seed": None}, data=b"x")])
    assert (rows, types, suffixes, size) == (1, {"prompt": "string", "seed": "string"}, set(), 1)

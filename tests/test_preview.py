"""``runflow-async preview DIR``: the contact sheet, the gallery, and what it refuses."""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from runflow_async._cli.main import main
from runflow_async._dataset import preview
from runflow_async._dataset.listing import Entry, entries
from runflow_async._dataset.preview import CAPTION, PAD, THUMB, sheet_size, write_preview
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY
from tests.test_dataset_cli import cli_args, manifest, run_cli

INJECTION = '<script>document.title="pwned"</script> & "quotes" <img src=x onerror=alert(1)>'
PROMPTS = [INJECTION, *(f"a tiny test image number {i}" for i in range(8))]


async def make_dataset(tmp_path: Path, prompts: list[str] = PROMPTS) -> Path:
    inp = tmp_path / "prompts.txt"
    inp.write_text("".join(f"{p}\n" for p in prompts))
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001) as emu:
        argv = cli_args(inp, out, emu.url)
        argv[argv.index("64x64")] = "96x64"
        assert await run_cli(argv) == 0
    return out


def occupied(sheet: Image.Image, x: int, y: int, width: int, height: int) -> bool:
    """Whether the box holds anything but the sheet's background."""
    colors = sheet.crop((x, y, x + width, y + height)).getcolors(maxcolors=1 << 16)
    return colors is None or colors != [(width * height, preview.BACKGROUND)]


async def test_the_sheet_has_the_documented_size_and_one_cell_per_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await make_dataset(tmp_path)
    capsys.readouterr()
    assert main(["preview", str(out), "--count", "7", "--columns", "3"]) == 0
    printed = capsys.readouterr().out
    sheet_path = out / ".preview" / "contact-sheet.png"
    assert f"Contact sheet: {sheet_path} (7 images, 3x3)" in printed
    with Image.open(sheet_path) as sheet:
        sheet.load()
    # 3 columns, 3 rows (7 images): the module doc's layout.
    assert sheet_size(7, 3) == (3 * THUMB + 4 * PAD, 3 * (THUMB + CAPTION) + 4 * PAD, 3, 3)
    assert sheet.size == (3 * 192 + 4 * 8, 3 * (192 + 3 * 15 + 8) + 4 * 8)
    cells = []
    for index in range(9):
        x = PAD + (index % 3) * (THUMB + PAD)
        y = PAD + (index // 3) * (THUMB + CAPTION + PAD)
        shown, caption = (
            occupied(sheet, x, y, THUMB, THUMB),
            occupied(sheet, x, y + THUMB, THUMB, CAPTION),
        )
        assert shown == caption  # every image has its prompt under it
        cells.append(shown)
    assert cells == [True] * 7 + [False] * 2
    # Each image is shown whole, centred in its cell, at its own size (96x64 fits the box).
    first = next(iter(entries(out)))
    with Image.open(first.path or "") as image:
        original = image.convert("RGB")
    left, top = PAD + (THUMB - 96) // 2, PAD + (THUMB - 64) // 2
    assert sheet.crop((left, top, left + 96, top + 64)).tobytes() == original.tobytes()


class Page(HTMLParser):
    """The gallery's elements and visible text, as a parser (not a browser) reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


async def test_the_gallery_escapes_prompts_and_needs_no_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await make_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative DIR works too
    made = write_preview(Path("out"), count=24)
    assert made.images == 9
    page = Page()
    page.feed(made.html.read_text())
    tags = [tag for tag, _ in page.tags]
    assert tags.count("script") == 1  # only the page's own
    assert tags.count("img") == 9
    assert INJECTION in page.text  # shown as text, whole
    for tag, attrs in page.tags:
        if tag == "img":
            assert (attrs["src"] or "").startswith("data:image/jpeg;base64,")  # inline
        if tag == "a":  # links to the full image, relative to the page
            assert (made.html.parent / (attrs["href"] or "")).resolve().is_file()
    rows = {r["run_id"]: r for r in manifest(out)}
    for row in rows.values():
        assert row["run_id"] in page.text
        assert str(row["seed"]) in page.text
        assert row["cost_usd"] in page.text
    csp = next(a["content"] for t, a in page.tags if a.get("http-equiv"))
    assert "default-src 'none'" in (csp or "")


async def test_the_preview_follows_file_name_into_subfolders(tmp_path: Path) -> None:
    out = await make_dataset(tmp_path, PROMPTS[1:5])
    rows = manifest(out)
    lines = []
    for number, row in enumerate(rows):
        shard = out / f"{10 + number // 2:05d}"  # other subfolders than the writer's own
        shard.mkdir(exist_ok=True)
        base = Path(row["file_name"]).name
        (out / row["file_name"]).rename(shard / base)
        lines.append(json.dumps({**row, "file_name": f"{shard.name}/{base}"}))
    for outside in ("../outside.png", "/etc/passwd", "", "a/../../b.png", "C:/x.png"):
        lines.append(json.dumps({**rows[0], "file_name": outside}))  # never read
    lines.append("not json")
    lines.append(json.dumps({"prompt": "a row without an image"}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    found = list(entries(out))
    assert [e.path for e in found] == [(out / json.loads(x)["file_name"]) for x in lines[:4]]
    (out / ".preview").mkdir()
    (out / ".preview" / ".index.html.0123.tmp").write_text("a killed preview's")
    made = write_preview(out, count=10, columns=2)
    assert sorted(p.name for p in (out / ".preview").iterdir()) == [
        "contact-sheet.png",
        "index.html",
    ]
    assert (made.images, made.columns, made.rows) == (4, 2, 2)
    assert Entry(row={}, data=b"png").read() == b"png"


def test_a_long_prompt_wraps_to_three_lines_and_ends_with_dots() -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=12)
    lines = preview._wrap("word " * 200, font, THUMB)
    assert len(lines) == 3
    assert lines[-1].endswith("...")
    assert all(font.getlength(line) <= THUMB for line in lines)
    cut = preview._wrap("x" * 500, font, THUMB)
    assert len(cut) == 3
    assert all(font.getlength(line) <= THUMB for line in cut)
    assert preview._wrap("short", font, THUMB) == ["short"]
    assert preview._wrap("", font, THUMB) == []


async def test_bad_folders_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "metadata.jsonl").write_text("")
    cases = {
        "missing": "missing is not a folder",
        "empty": "is not a dataset folder (no metadata.jsonl)",
        "nothing": "has no images yet",
    }
    for name, message in cases.items():
        assert main(["preview", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err
        assert err.count("\n") == 1
    assert main(["preview", str(tmp_path), "--count", "1001"]) == 2
    assert "--count must be at most 1000" in capsys.readouterr().err
    out = await make_dataset(tmp_path, PROMPTS[1:2])
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "PIL", None)  # Pillow not installed
    assert main(["preview", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "runflow-async preview: preview needs Pillow: "
        "pip install 'runflow-async[emulator]' (or pillow)\n"
    )


def test_an_unreadable_image_is_a_red_square(tmp_path: Path) -> None:
    thumb = preview._thumbnail(Entry(row={}, data=b"not an image"))
    assert thumb.size == (THUMB, THUMB)
    assert thumb.getpixel((0, 0)) == (200, 60, 60)


def test_the_demo_ends_with_the_sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--count", "2"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"Contact sheet: {tmp_path / 'demo' / '.preview' / 'contact-sheet.png'}"
    with Image.open(tmp_path / "demo" / ".preview" / "contact-sheet.png") as sheet:
        assert sheet.size == sheet_size(2, 6)[:2]
    assert (tmp_path / "demo" / "README.md").is_file()


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    def fail(_: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        preview._atomic(tmp_path / "index.html", fail)
    assert list(tmp_path.iterdir()) == []


def test_an_image_inside_a_shard_has_no_link() -> None:
    from runflow_async._dataset.preview_html import Tile, render_html

    page = render_html("t", [Tile(b"jpeg", 1, 1, "p", [("seed", "1")])], total=3)
    assert "<a " not in page
    assert "The first 1 of 3 images." in page

"""Reading PROMPTS and JOBS files: every format, every problem, defaults, stable keys."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from runflow_async._core.errors import RunflowError
from runflow_async._core.requests import CustomImageSize, EditRequest, GenerateRequest
from runflow_async._dataset.input import (
    MAX_LOCAL_IMAGE_BYTES,
    DatasetItem,
    Defaults,
    InputFileError,
    parse_size,
    read_edit_file,
    read_generate_file,
    sniff_kind,
)

NO_DEFAULTS = Defaults()
KEY = re.compile(r"[0-9a-f]{24}-\d+")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *rows: Any) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def image(path: Path, size: int = 100) -> Path:
    # A PNG by its signature (the magic bytes are checked); the rest is not read.
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (size - 8))
    return path


def problems(path: Path, *, edit: bool = False, defaults: Defaults = NO_DEFAULTS) -> list[Any]:
    with pytest.raises(InputFileError) as info:
        (read_edit_file if edit else read_generate_file)(path, defaults)
    assert info.value.path == path
    return info.value.problems


def generate(path: Path, defaults: Defaults = NO_DEFAULTS) -> list[GenerateRequest]:
    items = read_generate_file(path, defaults)
    requests = [item.request for item in items]
    assert all(isinstance(r, GenerateRequest) for r in requests)
    return requests  # type: ignore[return-value]


# -- parse_size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("square_hd", "square_hd"),
        (" landscape_16_9 ", "landscape_16_9"),
        ("1024x768", (1024, 768)),
        ("64X2048", (64, 2048)),
    ],
)
def test_parse_size_reads_presets_and_width_x_height(text: str, size: object) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["huge", "", "1024", "1024x", "x768", "63x512", "512x2049", "\uff11\uff10\uff12\uff14x768"],
)
def test_parse_size_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match=r"not an image size: .* \(a preset such as square_hd"):
        parse_size(text)


# -- .txt ---------------------------------------------------------------------------------


def test_txt_has_one_prompt_per_line_with_comments_and_blanks_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.txt",
        "\ufeff# a comment\n  a red fox  \n\n   \n\t# indented comment\nblue sky\r\n",
    )
    items = read_generate_file(path, NO_DEFAULTS)
    assert [(i.ordinal, i.line, i.request.prompt) for i in items] == [
        (0, 2, "a red fox"),
        (1, 6, "blue sky"),
    ]
    assert all(i.metadata == {} and i.local_images == () and i.local_positions == () for i in items)
    assert items[0].request.client_ref is None
    assert items[0].request.metadata is None


def test_suffixes_are_case_insensitive(tmp_path: Path) -> None:
    assert len(read_generate_file(write(tmp_path / "P.TXT", "fox\n"), NO_DEFAULTS)) == 1


# -- .jsonl -------------------------------------------------------------------------------


def test_jsonl_takes_every_generate_field_and_metadata(tmp_path: Path) -> None:
    row = {
        "prompt": "a fox",
        "seed": 7,
        "num_inference_steps": 4,
        "image_size": {"width": 512, "height": 768},
        "num_images": 2,
        "sync_mode": False,
        "enable_safety_checker": True,
        "output_format": "webp",
        "callback_url": "https://example.com/hook",
        "metadata": {"source": "set-1", "tags": ["a"]},
    }
    path = jsonl(tmp_path / "p.jsonl", row, {"prompt": "plain", "seed": None, "metadata": None})
    first, second = read_generate_file(path, NO_DEFAULTS)
    assert first.request.input_payload() == {
        k: v for k, v in row.items() if k not in ("callback_url", "metadata")
    }
    assert first.request.callback_url == "https://example.com/hook"
    assert first.metadata == {"source": "set-1", "tags": ["a"]}
    assert second.request.input_payload() == {"prompt": "plain"}  # null means absent
    assert second.metadata == {}


def test_jsonl_image_size_may_be_written_as_width_x_height(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "p.jsonl",
        {"prompt": "a", "image_size": "1024x576"},
        {"prompt": "b", "image_size": "square"},
    )
    a, b = generate(path)
    assert a.image_size == CustomImageSize(width=1024, height=576)
    assert b.image_size == "square"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            '{"prompt": "a",',
            "not valid JSON (Expecting property name enclosed in double quotes at column 16)",
        ),
        ('{"prompt": "a", "seed": NaN}', "not valid JSON (NaN is not allowed)"),
        ('["a fox"]', "not a JSON object (got an array)"),
        ('"a fox"', "not a JSON object (got a string)"),
        ("42", "not a JSON object (got a number)"),
        ("true", "not a JSON object (got a boolean)"),
        ("null", "not a JSON object (got null)"),
        ('{"seed": 1}', "prompt: Field required"),
        ('{"prompt": "   "}', "prompt: must not be blank"),
        ('{"prompt": ""}', "prompt: String should have at least 1 character"),
        ('{"prompt": 5}', "prompt: Input should be a valid string"),
        ('{"prompt": "a", "seed": -1}', "seed: Input should be greater than or equal to 0"),
        ('{"prompt": "a", "num_images": "2"}', "num_images: Input should be a valid integer"),
        (
            '{"prompt": "a", "output_format": "gif"}',
            "output_format: Input should be 'jpeg', 'png' or 'webp'",
        ),
        ('{"prompt": "a", "image_size": "10x10"}', "image_size: not an image size: '10x10'"),
        ('{"prompt": "a", "colour": "red"}', "colour: unknown field"),
        ('{"prompt": "a", "client_ref": "mine"}', "client_ref: unknown field (we set it)"),
        (
            '{"prompt": "a", "image_urls": []}',
            "image_urls: unknown field (edit jobs go to `runflow-async edit`)",
        ),
        ('{"prompt": "a", "metadata": [1]}', "metadata: must be a JSON object"),
    ],
)
def test_jsonl_line_problems(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path / "p.jsonl", '{"prompt": "fine"}\n' + line + "\n")
    [(number, why)] = problems(path)
    assert number == 2
    assert why.startswith(reason)


def test_all_problems_are_reported_together_with_line_numbers(tmp_path: Path) -> None:
    lines = [
        '{"prompt": "ok"}',
        "",
        '{"prompt": " "}',
        "{oops",
        '{"prompt": "a", "seed": -1, "x": 1}',
    ]
    lines += ["[]"] * 4
    path = write(tmp_path / "jobs.jsonl", "\n".join(lines))
    with pytest.raises(InputFileError) as info:
        read_generate_file(path, NO_DEFAULTS)
    err = info.value
    assert [n for n, _ in err.problems] == [3, 4, 5, 5, 6, 7, 8, 9]
    assert err.problems[2:4] == [
        (5, "x: unknown field"),
        (5, "seed: Input should be greater than or equal to 0"),
    ]
    assert str(err).startswith(
        f"{path}: line 3: prompt: must not be blank; line 4: not valid JSON ("
    )
    assert str(err).endswith("; line 6: not a JSON object (got an array); and 3 more")
    assert isinstance(err, RunflowError)
    assert isinstance(err, ValueError)


# -- .csv ---------------------------------------------------------------------------------


def test_csv_converts_columns_and_treats_empty_cells_as_absent(tmp_path: Path) -> None:
    text = (
        "prompt, seed ,num_images,num_inference_steps,sync_mode,enable_safety_checker,"
        "image_size,output_format,metadata\n"
        'a fox,7,2,4,yes,0,1024x768,png,"{""id"": 1}"\n'
        "\n"
        "blue sky,,,,,,,,\n"
        '"multi\nline",-0,1,1,TRUE,No,square,, \n'
        "short row,1\n"
    )
    items = read_generate_file(write(tmp_path / "p.csv", text), NO_DEFAULTS)
    assert [i.line for i in items] == [2, 4, 6, 7]
    assert items[0].request.input_payload() == {
        "prompt": "a fox",
        "seed": 7,
        "num_inference_steps": 4,
        "image_size": {"width": 1024, "height": 768},
        "num_images": 2,
        "sync_mode": True,
        "enable_safety_checker": False,
        "output_format": "png",
    }
    assert items[0].metadata == {"id": 1}
    assert items[1].request.input_payload() == {"prompt": "blue sky"}
    assert items[2].request.input_payload()["sync_mode"] is True
    assert items[2].request.prompt == "multi\nline"
    assert items[3].request.seed == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prompt,colour\na,red\n", [(1, "unknown column 'colour'")]),
        ("prompt,client_ref\na,r\n", [(1, "unknown column 'client_ref' (we set it)")]),
        ("prompt,seed,seed\na,1,2\n", [(1, "column 'seed' appears 2 times")]),
        ("prompt,seed\na,1.5\n", [(2, "seed: not a whole number: '1.5'")]),
        ("prompt,num_images\na,two\n", [(2, "num_images: not a whole number: 'two'")]),
        ("prompt,sync_mode\na,maybe\n", [(2, "sync_mode: not true/false, 1/0 or yes/no: 'maybe'")]),
        ("prompt,image_size\na,huge\n", [(2, "image_size: not an image size: 'huge'")]),
        ("prompt,metadata\na,{x}\n", [(2, "metadata: not valid JSON (")]),
        ("prompt,metadata\na,[1]\n", [(2, "metadata: must be a JSON object")]),
        ("prompt,seed\na,1,extra\n", [(2, "more cells than the header has columns")]),
        ("seed\n1\n", [(2, "prompt: Field required")]),
        (
            "prompt\n" + "x" * (200 * 1024) + "\n",
            [(2, "not valid CSV (field larger than field limit")],
        ),
    ],
)
def test_csv_problems(tmp_path: Path, text: str, expected: list[tuple[int, str]]) -> None:
    found = problems(write(tmp_path / "p.csv", text))
    assert [
        (n, why[: len(prefix)]) for (n, why), (_, prefix) in zip(found, expected, strict=True)
    ] == expected


def test_csv_with_an_unknown_column_still_checks_every_row(tmp_path: Path) -> None:
    found = problems(write(tmp_path / "p.csv", "prompt,seed,colour\na,x,red\n,1,blue\n"))
    assert found == [
        (1, "unknown column 'colour'"),
        (2, "seed: not a whole number: 'x'"),
        (3, "prompt: Field required"),
    ]


# -- whole-file problems ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("p.txt", "# only comments\n\n"),
        ("p.jsonl", "\n  \n"),
        ("p.csv", ""),
        ("h.csv", "prompt,seed\n\n"),
    ],
)
def test_a_file_without_items_is_an_error(tmp_path: Path, name: str, text: str) -> None:
    assert problems(write(tmp_path / name, text)) == [(0, "no items: the file holds no prompts")]


def test_an_unknown_suffix_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "prompts.md", "a fox\n")
    with pytest.raises(
        InputFileError, match=r"prompts.md: unsupported file type '.md' \(use .txt, .jsonl, .csv\)$"
    ):
        read_generate_file(path, NO_DEFAULTS)
    jobs = write(tmp_path / "jobs.txt", "a")
    assert problems(jobs, edit=True) == [(0, "unsupported file type '.txt' (use .jsonl)")]
    assert problems(path, edit=True) == [(0, "unsupported file type '.md' (use .jsonl)")]


def test_unreadable_files_are_errors(tmp_path: Path) -> None:
    assert problems(tmp_path / "missing.txt") == [(0, "cannot read it: No such file or directory")]
    (tmp_path / "bad.txt").write_bytes(b"fox\n\xff\xfe\n")
    assert problems(tmp_path / "bad.txt") == [(0, "not UTF-8 text (byte 4)")]


# -- defaults -----------------------------------------------------------------------------


def test_defaults_apply_only_where_the_line_is_silent(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "p.jsonl",
        {"prompt": "a"},
        {"prompt": "b", "image_size": "square", "num_images": 1, "output_format": "png", "seed": 5},
    )
    defaults = Defaults(image_size="768x512", num_images=3, output_format="webp", base_seed=100)
    a, b = generate(path, defaults)
    seed = a.input_payload()["seed"]
    assert isinstance(seed, int)
    assert 0 <= seed < 2**31
    assert a.input_payload() == {
        "prompt": "a",
        "seed": seed,
        "image_size": {"width": 768, "height": 512},
        "num_images": 3,
        "output_format": "webp",
    }
    assert b.input_payload() == {
        "prompt": "b",
        "seed": 5,
        "image_size": "square",
        "num_images": 1,
        "output_format": "png",
    }


def test_a_default_seed_follows_the_line_not_its_position(tmp_path: Path) -> None:
    defaults = Defaults(base_seed=2**31 - 2)
    first = generate(write(tmp_path / "p.csv", "prompt,seed\na,\nb,42\nc,\nc,\n"), defaults)
    moved = generate(write(tmp_path / "q.csv", "prompt,seed\nnew,\nc,\na,\nb,42\nc,\n"), defaults)
    seeds = {r.prompt: r.seed for r in first}
    assert seeds["b"] == 42  # a line's own seed wins
    assert (moved[2].seed, moved[3].seed) == (seeds["a"], 42)  # unmoved by the insertion
    assert {moved[1].seed, moved[4].seed} == {first[2].seed, first[3].seed}  # "c" twice
    assert first[2].seed != first[3].seed  # identical lines get distinct seeds
    assert all(s is not None and 0 <= s < 2**31 for s in (r.seed for r in first))
    other = generate(write(tmp_path / "r.csv", "prompt,seed\na,\n"), Defaults(base_seed=7))
    assert other[0].seed != seeds["a"]  # the base seed still matters


def test_a_bad_default_is_reported_on_every_line(tmp_path: Path) -> None:
    found = problems(write(tmp_path / "p.txt", "a\nb\n"), defaults=Defaults(num_images=9))
    reason = "num_images: Input should be less than or equal to 4"
    assert found == [(1, reason), (2, reason)]


# -- keys ---------------------------------------------------------------------------------


def keys(items: list[DatasetItem]) -> list[str]:
    return [i.key for i in items]


def test_keys_are_stable_across_reads_and_appends(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "a fox\nblue sky\n")
    first = keys(read_generate_file(path, NO_DEFAULTS))
    assert all(KEY.fullmatch(k) for k in first)
    assert keys(read_generate_file(path, NO_DEFAULTS)) == first
    write(path, "a fox\n# new comment\n\nblue sky\ngreen sea\n")
    assert keys(read_generate_file(path, NO_DEFAULTS))[:2] == first
    same_as_jsonl = jsonl(
        tmp_path / "p.jsonl", {"prompt": "a fox"}, {"prompt": "blue sky", "metadata": {}}
    )
    assert keys(read_generate_file(same_as_jsonl, NO_DEFAULTS)) == first


def test_duplicate_lines_get_distinct_keys(tmp_path: Path) -> None:
    a, b, c = keys(read_generate_file(write(tmp_path / "p.txt", "fox\nfox\ncat\n"), NO_DEFAULTS))
    assert a.endswith("-0")
    assert b == a[:-2] + "-1"
    assert c.endswith("-0")
    assert c[:-2] != a[:-2]


def test_keys_follow_the_request_after_defaults_and_the_metadata(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", {"prompt": "fox"}, {"prompt": "fox", "metadata": {"id": 2}})
    plain, tagged = keys(read_generate_file(path, NO_DEFAULTS))
    assert plain[:-2] != tagged[:-2]
    seeded = keys(read_generate_file(path, Defaults(base_seed=1)))
    assert seeded[0] != plain
    assert keys(read_generate_file(path, Defaults(base_seed=1))) == seeded


# -- edit jobs ----------------------------------------------------------------------------


def test_edit_jobs_keep_urls_and_check_local_files(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    rel = image(tmp_path / "imgs" / "a.png")
    absolute = image(tmp_path / "b.png")
    path = jsonl(
        tmp_path / "jobs.jsonl",
        {
            "prompt": "make it blue",
            "image_urls": ["https://x.test/1.png", "imgs/a.png", str(absolute), absolute.as_uri()],
            "metadata": {"id": 1},
        },
        {"prompt": "only urls", "image_urls": ["http://x.test/2.png"], "seed": 3},
    )
    first, second = read_edit_file(path, Defaults(num_images=2))
    assert isinstance(first.request, EditRequest)
    assert first.request.image_urls == [
        "https://x.test/1.png",
        "https://local.invalid/1",
        "https://local.invalid/2",
        "https://local.invalid/3",
    ]
    assert first.local_images == (rel, absolute, absolute)
    assert first.local_positions == (1, 2, 3)
    assert first.request.num_images == 2
    assert first.metadata == {"id": 1}
    assert (second.local_images, second.local_positions, second.request.seed) == ((), (), 3)


def test_relative_paths_are_relative_to_the_jobs_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    image(tmp_path / "data" / "a.png")
    jsonl(tmp_path / "data" / "jobs.jsonl", {"prompt": "p", "image_urls": ["a.png"]})
    monkeypatch.chdir(tmp_path)
    [item] = read_edit_file(Path("data/jobs.jsonl"), NO_DEFAULTS)
    assert item.local_images == ((tmp_path / "data" / "a.png").resolve(),)
    assert item.local_images[0].is_absolute()


def test_home_paths_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    image(tmp_path / "a.png")
    [item] = read_edit_file(
        jsonl(tmp_path / "j.jsonl", {"prompt": "p", "image_urls": ["~/a.png"]}), NO_DEFAULTS
    )
    assert item.local_images == (tmp_path.resolve() / "a.png",)


def test_the_key_of_an_edit_job_names_the_local_file_not_the_placeholder(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    path = jsonl(
        tmp_path / "j.jsonl",
        {"prompt": "p", "image_urls": ["a.png"]},
        {"prompt": "p", "image_urls": ["b.png"]},
        {"prompt": "p", "image_urls": ["https://local.invalid/0"]},
    )
    a, b, url = keys(read_edit_file(path, NO_DEFAULTS))
    assert len({a[:-2], b[:-2], url[:-2]}) == 3
    assert keys(read_edit_file(path, NO_DEFAULTS)) == [a, b, url]


def test_edit_local_file_problems(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.touch()
    os.truncate(big, MAX_LOCAL_IMAGE_BYTES + 1)  # sparse: no disk used
    limit = image(tmp_path / "limit.png", 10)
    os.truncate(limit, MAX_LOCAL_IMAGE_BYTES)
    (tmp_path / "empty.png").touch()
    (tmp_path / "folder").mkdir()
    path = jsonl(
        tmp_path / "j.jsonl",
        {"prompt": "p", "image_urls": ["missing.png"]},
        {"prompt": "p", "image_urls": ["limit.png", "big.png"]},
        {"prompt": "p", "image_urls": ["empty.png", "folder", "ftp://x.test/a.png"]},
        {"prompt": "p", "image_urls": ["https://ok.test/a.png", 5]},
        {"prompt": "p", "image_urls": "https://not-a-list.test/a.png"},
        {"prompt": "p", "image_urls": ["limit.png"] * 5},
        {"prompt": "p", "image_urls": []},
        {"prompt": "p"},
        {"prompt": "p", "image_urls": ["file:///nowhere/x.png", "https://"]},
        {"prompt": "p", "image_urls": ["data:image/png;base64," + "A" * 1000]},
    )
    assert problems(path, edit=True) == [
        (1, f"image_urls[0]: {tmp_path / 'missing.png'}: No such file or directory"),
        (2, f"image_urls[1]: {big}: file is 52428801 bytes, over the 50 MiB upload limit"),
        (3, f"image_urls[0]: {tmp_path / 'empty.png'}: file is empty"),
        (3, f"image_urls[1]: {tmp_path / 'folder'}: not a regular file"),
        (3, "image_urls[2]: ftp://x.test/a.png: not an http(s) URL, a file:// URL or a path"),
        (4, "image_urls: item 1 must be a URL string or an Asset, not int"),
        (5, "image_urls: Input should be a valid list"),
        (6, "image_urls: List should have at most 4 items after validation, not 5"),
        (7, "image_urls: List should have at least 1 item after validation, not 0"),
        (8, "image_urls: Field required"),
        (9, "image_urls[0]: /nowhere/x.png: No such file or directory"),
        (9, "image_urls: item 1: is not a complete http(s) URL"),
        (
            10,
            "image_urls: item 0: data: URIs are sent only with allow_data_uris=True (whether "
            "the API accepts them is not settled); otherwise pass the image as a local file, "
            "which is uploaded",
        ),
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_local_file_is_a_problem(tmp_path: Path) -> None:
    secret = image(tmp_path / "secret.png")
    secret.chmod(0)
    try:
        found = problems(
            jsonl(tmp_path / "j.jsonl", {"prompt": "p", "image_urls": ["secret.png"]}), edit=True
        )
    finally:
        secret.chmod(0o600)
    assert found == [(1, f"image_urls[0]: {secret}: Permission denied")]


def test_edit_jobs_read_jsonl_problems_like_generate(tmp_path: Path) -> None:
    path = write(
        tmp_path / "j.jsonl",
        '{"image_urls": ["https://x.test/a.png"]}\n[1]\n'
        '{"prompt": "p", "image_urls": ["https://x.test/a.png"], "colour": 1}\n',
    )
    assert problems(path, edit=True) == [
        (1, "prompt: Field required"),
        (2, "not a JSON object (got an array)"),
        (3, "colour: unknown field"),
    ]


# -- sniff_kind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("p.txt", '{"image_urls": []}\n', "generate"),
        ("p.csv", "prompt,image_urls\n", "generate"),
        (
            "j.jsonl",
            '\n{bad\n[1]\n{"prompt": "p", "image_urls": ["a.png"]}\n{"prompt": "q"}\n',
            "edit",
        ),
        ("p.JSONL", '{"prompt": "q"}\n{"prompt": "p", "image_urls": ["a.png"]}\n', "generate"),
        ("e.jsonl", "", "generate"),
    ],
)
def test_sniff_kind(tmp_path: Path, name: str, text: str, kind: str) -> None:
    assert sniff_kind(write(tmp_path / name, text)) == kind


def test_sniff_kind_of_a_missing_jsonl_is_an_input_error(tmp_path: Path) -> None:
    assert sniff_kind(tmp_path / "missing.txt") == "generate"
    with pytest.raises(InputFileError, match="cannot read it"):
        sniff_kind(tmp_path / "missing.jsonl")

"""Lean items (issue 12): a line is kept as its validated values, the request rebuilt when sent.

Memory measured with ``tracemalloc`` (counts of bytes, not timings): an item
held for the whole run no longer carries a pydantic request (about 1.2 KB a
line before). The rebuilt request is the one the line validated to.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

from runflow_async._core.requests import EditRequest, GenerateRequest, build_request
from runflow_async._dataset.input import Defaults, read_edit_file, read_generate_file
from tests.test_dataset_input import image


def test_an_item_holds_its_line_in_a_few_hundred_bytes(tmp_path: Path) -> None:
    n = 5000
    path = tmp_path / "prompts.txt"
    path.write_text(
        "".join(f"a photo of a small red house number {i} by the sea\n" for i in range(n))
    )
    gc.collect()
    tracemalloc.start()
    try:
        items = read_generate_file(path, Defaults(image_size=(64, 64), base_seed=1))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(items) == n
    # key, prompt, seed, the item itself: about 450 bytes (a request model: 1.2 KB more).
    assert held / n < 700


def test_the_rebuilt_request_is_the_validated_one(tmp_path: Path) -> None:
    line = {
        "prompt": "a fox",
        "seed": 7,
        "num_inference_steps": 4,
        "image_size": "64x80",
        "num_images": 2,
        "sync_mode": False,
        "enable_safety_checker": True,
        "output_format": "webp",
        "callback_url": "https://example.com/hook",
        "metadata": {"tag": "x"},
    }
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(line) + "\n" + json.dumps({"prompt": "plain"}) + "\n")
    first, plain = read_generate_file(path, Defaults(output_format="png"))
    fields = {k: v for k, v in line.items() if k != "metadata"}
    expected = build_request(GenerateRequest, {**fields, "image_size": (64, 80)})
    assert first.request == expected
    assert first.request.model_fields_set == expected.model_fields_set
    assert first.request.input_payload() == expected.input_payload()
    assert first.metadata == {"tag": "x"}
    assert first.value("output_format") == "webp"
    assert plain.request == GenerateRequest(prompt="plain", output_format="png")
    assert plain.metadata == {}
    assert plain.value("seed") is None
    sent = plain.request_with(client_ref="rfa-x")
    assert sent.client_ref == "rfa-x"
    assert sent.to_body() == {
        "input": {"prompt": "plain", "output_format": "png"},
        "client_ref": "rfa-x",
    }
    assert plain.request.client_ref is None  # the item itself is unchanged


def test_an_edit_item_rebuilds_its_placeholders_and_keeps_its_files(tmp_path: Path) -> None:
    image(tmp_path / "in.png")
    path = tmp_path / "jobs.jsonl"
    urls = ["https://example.com/a.png", "in.png"]
    path.write_text(json.dumps({"prompt": "edit it", "image_urls": urls}) + "\n")
    (item,) = read_edit_file(path, Defaults())
    assert item.kind == "edit"
    assert isinstance(item.request, EditRequest)
    assert item.request.image_urls == ["https://example.com/a.png", "https://local.invalid/1"]
    assert item.local_images == ((tmp_path / "in.png").absolute(),)
    assert item.image_inputs == tuple(urls)

"""``runflow-async demo``: the dataset pipeline end to end on the embedded emulator.

A few prompts go through the real client over real HTTP on loopback: estimate,
batch, downloads, journal, ``metadata.jsonl``. Re-running it on the same folder
resumes (nothing is generated twice). It ends with the folder's card and preview.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from runflow_async._client.client import RunflowClient
from runflow_async._core.config import PollPolicy, RetryPolicy
from runflow_async._core.estimate import estimate_requests
from runflow_async._dataset.card import CardSource, sha256_of
from runflow_async._dataset.input import Defaults, read_generate_file
from runflow_async._dataset.outputs import MANIFEST, DatasetSummary
from runflow_async._dataset.pipeline import run_dataset
from runflow_async._dataset.preview import Preview, write_preview
from runflow_async._pricing import PricingPolicy

__all__ = ["DemoFile", "DemoReport", "run_demo"]

DEMO_PROMPTS = (
    "A neon-lit Tokyo alleyway at night, wet reflections on asphalt",
    "A lighthouse on a cliff at dawn, long exposure sea",
    "A bowl of ramen photographed from above, soft window light",
    "A paper-craft fox in an autumn forest, macro lens",
)


@dataclass(frozen=True, slots=True)
class DemoFile:
    """One image the demo wrote."""

    path: Path
    size: int
    sha256: str


@dataclass
class DemoReport:
    """What the demo made and what it cost."""

    out_dir: Path
    emulator_url: str
    summary: DatasetSummary | None = None
    files: list[DemoFile] = field(default_factory=list)
    estimated_usd: Decimal = Decimal(0)
    billed_usd: Decimal = Decimal(0)
    preview: Preview | None = None


async def run_demo(out_dir: Path, *, count: int = 4, time_scale: float = 0.01) -> DemoReport:
    """Start the emulator and run a ``count``-prompt dataset into ``out_dir``.

    Args:
        out_dir: The dataset folder.
        count: How many prompts (cycling through the demo prompts).
        time_scale: Real seconds per emulated second (0.01: a 2 s run takes 20 ms).
    """
    from runflow_async.emulator import Emulator  # the emulator is only needed here

    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        lines = [f"{DEMO_PROMPTS[i % len(DEMO_PROMPTS)]} (#{i + 1})" for i in range(count)]
        prompts.write_text("\n".join(lines) + "\n")
        items = read_generate_file(prompts, Defaults(image_size="landscape_4_3", base_seed=1000))
        digest = sha256_of(prompts)
    policy = PricingPolicy()
    async with Emulator(time_scale=time_scale, seed=2026, pricing=policy) as emu:
        report = DemoReport(out_dir=out_dir, emulator_url=emu.url)
        report.estimated_usd = estimate_requests(
            [i.request for i in items], policy=policy
        ).total_usd
        async with RunflowClient(
            "demo-key",
            base_url=emu.url,
            retry=RetryPolicy(time_scale=time_scale),
            poll=PollPolicy(time_scale=time_scale),
        ) as client:
            command = f"runflow-async demo --out {out_dir} --count {count}"
            card = CardSource("generate", command, emu.url, digest)
            report.summary = await run_dataset(client, out_dir, items, concurrency=4, card=card)
    report.billed_usd = report.summary.spent_usd
    for line in (out_dir / MANIFEST).read_text().splitlines():
        row = json.loads(line)
        path = out_dir / row["file_name"]
        report.files.append(DemoFile(path, path.stat().st_size, row["sha256"]))
    report.preview = write_preview(out_dir)  # the emulator needs Pillow: so does this
    return report

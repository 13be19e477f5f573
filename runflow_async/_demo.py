"""``runflow-async demo``: a few images through the real client against the embedded emulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import anyio

from runflow_async._client import RunflowClient
from runflow_async._config import PollPolicy, RetryPolicy
from runflow_async._download import DownloadedFile
from runflow_async._pricing import PricingPolicy
from runflow_async._requests import GenerateRequest, ImagePreset

__all__ = ["DemoReport", "run_demo"]

DEMO_PROMPTS: tuple[tuple[str, ImagePreset], ...] = (
    ("A neon-lit Tokyo alleyway at night, wet reflections on asphalt", "landscape_4_3"),
    ("A lighthouse on a cliff at dawn, long exposure sea", "portrait_4_3"),
    ("A bowl of ramen photographed from above, soft window light", "square_hd"),
    ("A paper-craft fox in an autumn forest, macro lens", "landscape_16_9"),
)


@dataclass
class DemoReport:
    """What the demo made and what it cost."""

    out_dir: Path
    emulator_url: str
    files: list[DownloadedFile] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    estimated_usd: Decimal = Decimal(0)
    billed_usd: Decimal = Decimal(0)


async def run_demo(out_dir: Path, *, count: int = 4, time_scale: float = 0.01) -> DemoReport:
    """Start the emulator, generate ``count`` images through real HTTP, save them.

    Args:
        out_dir: Where the images go.
        count: How many prompts to run (cycling through the demo prompts).
        time_scale: Real seconds per emulated second (0.01: a 2 s run takes 20 ms).
    """
    from runflow_async.emulator import Emulator  # the emulator is only needed here

    policy = PricingPolicy()
    requests = [
        GenerateRequest(prompt=prompt, image_size=size, seed=1000 + i, output_format="png")
        for i, (prompt, size) in ((i, DEMO_PROMPTS[i % len(DEMO_PROMPTS)]) for i in range(count))
    ]
    async with Emulator(time_scale=time_scale, seed=2026, pricing=policy) as emu:
        report = DemoReport(out_dir=out_dir, emulator_url=emu.url)
        report.estimated_usd = sum(
            (policy.generate_cost(r.size, r.images_per_run) for r in requests), Decimal(0)
        )
        async with RunflowClient(
            "demo-key",
            base_url=emu.url,
            retry=RetryPolicy(time_scale=time_scale),
            poll=PollPolicy(time_scale=time_scale),
        ) as client:

            async def one(index: int, request: GenerateRequest) -> None:
                result = await client.run(request)
                report.run_ids.append(result.run_id)
                report.billed_usd += result.cost_usd or Decimal(0)
                for n, image in enumerate(result.images):
                    dest = out_dir / f"{index:03d}-{n}-{result.run_id[-12:]}.png"
                    report.files.append(await client.download(image, dest))

            async with anyio.create_task_group() as tg:
                for index, request in enumerate(requests):
                    tg.start_soon(one, index, request)
    report.files.sort(key=lambda f: f.path)
    return report

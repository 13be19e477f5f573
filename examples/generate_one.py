"""Generate one image and save it.

Run against the emulator:

    runflow-async emulator --port 8787 --time-scale 0.01 &
    RUNFLOW_BASE_URL=http://127.0.0.1:8787 RUNFLOW_API_KEY=demo python examples/generate_one.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from runflow_async import RunError, RunflowClient


async def main(out: Path, client: RunflowClient | None = None) -> int:
    # RUNFLOW_API_KEY and RUNFLOW_BASE_URL are read by the constructor.
    async with client or RunflowClient() as client:
        try:
            result = await client.generate(
                "A neon-lit Tokyo alleyway at night, wet reflections on asphalt",
                image_size="landscape_4_3",
                output_format="png",
                seed=7,
            )
        except RunError as exc:
            print(f"run {exc.run_id} did not succeed: {exc}", file=sys.stderr)
            return 1
        for n, image in enumerate(result.images):
            saved = await client.download(image, out / f"{result.run_id}-{n}.png")
            print(f"{saved.path} ({image.width}x{image.height}, sha256 {saved.sha256[:12]})")
        print(f"billed ${result.cost_usd} for run {result.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))))

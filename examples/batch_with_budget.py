"""Generate a small dataset under a budget, saving images as they finish.

Run against the emulator:

    runflow-async emulator --port 8787 --time-scale 0.01 &
    RUNFLOW_BASE_URL=http://127.0.0.1:8787 RUNFLOW_API_KEY=demo \\
        python examples/batch_with_budget.py out/
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from runflow_async import BudgetExceededError, GenerateRequest, RunflowClient

PROMPTS = [f"A watercolour postcard of city number {i}, soft morning light" for i in range(12)]


async def main(out: Path, client: RunflowClient | None = None) -> int:
    requests = [
        GenerateRequest(prompt=p, image_size="square", seed=i) for i, p in enumerate(PROMPTS)
    ]
    async with client or RunflowClient() as client:
        estimate = await client.estimate(requests)
        print(f"estimate: {estimate.summary()}")
        try:
            async with client.batch(max_concurrency=4, max_cost_usd="0.05") as batch:
                batch.submit_many(requests)
                async for outcome in batch.as_completed():
                    if outcome.result is None:
                        print(f"#{outcome.index} failed: {outcome.error}", file=sys.stderr)
                        continue
                    image = outcome.result.images[0]
                    saved = await client.download(image, out / f"{outcome.index:03d}.png")
                    print(f"#{outcome.index} {saved.path} ${outcome.billed_usd}")
        except BudgetExceededError as exc:
            print(f"refused before sending anything: {exc}", file=sys.stderr)
            return 2
    report = batch.cost_report()
    print(f"estimated ${report.estimated_usd}, billed ${report.billed_usd}")
    return 0 if all(f.outcome and f.outcome.ok for f in batch.futures) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))))

"""A batch that waits by signed callback instead of polling, on the embedded emulator.

    python examples/callback_batch.py out/

The emulator POSTs each finished run to a local CallbackReceiver, signed with a
secret this script creates through the API. Against the real API, run the
receiver where Runflow can reach it and pass that address::

    secret = ...  # from client.create_callback_secret(...), stored once
    async with CallbackReceiver([secret], host="0.0.0.0", port=8080,
                                public_url="https://hooks.example.com/runflow/callbacks") as rx:
        async with client.batch(callbacks=rx) as batch: ...
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from runflow_async import (
    CallbackReceiver,
    GenerateRequest,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
)
from runflow_async.emulator import Emulator

PROMPTS = [f"An ink sketch of lighthouse number {i} in a storm" for i in range(10)]


async def main(out: Path, *, time_scale: float = 0.01) -> int:
    requests = [
        GenerateRequest(prompt=p, image_size="square", seed=i) for i, p in enumerate(PROMPTS)
    ]
    async with (
        Emulator(api_keys=frozenset({"example-key"}), time_scale=time_scale, seed=1) as emu,
        RunflowClient(
            "example-key",
            base_url=emu.url,
            retry=RetryPolicy(time_scale=time_scale),
            poll=PollPolicy(time_scale=time_scale),
        ) as client,
    ):
        secret = await client.create_callback_secret("example")
        async with CallbackReceiver([secret.plain_secret.get_secret_value()]) as rx:
            async with client.batch(max_concurrency=4, callbacks=rx, max_cost_usd="0.10") as batch:
                batch.submit_many(requests)
                async for outcome in batch.as_completed():
                    if outcome.result is None:
                        print(f"#{outcome.index} failed: {outcome.error}", file=sys.stderr)
                        continue
                    image = outcome.result.images[0]
                    saved = await client.download(image, out / f"{outcome.index:03d}.png")
                    print(f"#{outcome.index} {saved.path} ${outcome.billed_usd}")
            counters = rx.counters
        reads = emu.counters.requests_by_route
        print(
            f"{counters.accepted} callbacks accepted, {counters.duplicates} duplicates; "
            f"{reads['create']} creates, {reads['get_run']} run reads, "
            f"{reads['list_runs']} list reads; billed ${batch.billed_usd}"
        )
    return 0 if all(f.outcome and f.outcome.ok for f in batch.futures) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))))

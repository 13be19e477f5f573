"""What share of the CLI's client CPU goes to the journal and the dataset writers (issue 14).

Runs ``runflow-async generate`` in this process under ``cProfile`` with a CPU
timer, against an emulator already serving at ``--base-url``, then counts the
cumulative time of each *entry* into the journal and writer modules (a function
of theirs called from outside them), so nested calls are counted once::

    runflow-async emulator --port 8797 --api-key k --time-scale 0.01 &
    python benchmarks/profile_journal_share.py --prompts 20000 --base-url http://127.0.0.1:8797

Profiling inflates Python calls more than C ones: read the share as an estimate.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WRITERS = (
    "_dataset/journal",
    "_dataset/manifest.py",
    "_dataset/packed.py",
    "_dataset/shards.py",
    "_dataset/placement.py",
    "_dataset/failures.py",
    "_dataset/card.py",
    "_dataset/outputs.py",
)


def inside(func: tuple[str, int, str]) -> bool:
    return any(name in func[0] for name in WRITERS)


def share(stats: pstats.Stats) -> tuple[float, float, list[tuple[float, str]]]:
    """(total CPU, CPU entered into the writers, the largest entries)."""
    entries: list[tuple[float, str]] = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for func, (_cc, _nc, _tt, _ct, callers) in raw.items():
        if inside(func):
            spent = sum(v[3] for caller, v in callers.items() if not inside(caller))
            if spent:
                where = func[0].split("runflow_async/")[-1]
                entries.append((spent, f"{where}:{func[1]} {func[2]}"))
    total: float = stats.total_tt  # type: ignore[attr-defined]
    return total, sum(s for s, _ in entries), sorted(entries, reverse=True)[:8]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20_000)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="k")
    parser.add_argument("--format", default="imagefolder")
    args = parser.parse_args()
    from runflow_async._cli.main import main as cli

    with tempfile.TemporaryDirectory() as work:
        prompts = Path(work) / "prompts.txt"
        prompts.write_text("".join(f"a profiled picture {i}\n" for i in range(args.prompts)))
        argv = ["generate", str(prompts), "--out", str(Path(work) / "out"), "--yes"]
        argv += ["--base-url", args.base_url, "--time-scale", "0.01", "--image-size", "64x64"]
        argv += ["--format", args.format]
        os.environ["RUNFLOW_API_KEY"] = args.api_key
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        try:
            code = cli(argv)
        finally:
            profile.disable()
    total, writers, top = share(pstats.Stats(profile))
    print(f"exit {code}; CPU {total:.1f} s, journal and writers {writers:.2f} s")
    print(f"share: {100 * writers / total:.1f}% (target < 10%)")
    for spent, where in top:
        print(f"  {spent:7.2f} s  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

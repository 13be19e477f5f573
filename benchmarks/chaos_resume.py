"""Chaos resume: ``runflow-async generate`` under the fault mix, killed with SIGKILL and re-run.

The emulator runs in its own process with the fault mix of ``chaos_soak.py``
(429s, 5xx on status reads, lost creates, dropped connections, failed runs) and
a credit that runs out before the end. The CLI, in its own process, pointed at it
through ``RUNFLOW_BASE_URL``/``RUNFLOW_API_KEY``, generates a prompts file into a
folder and is killed with ``kill -9`` at 5 random (seeded) moments: each once a
random number of items has finished, plus a random few milliseconds. After the
kills it is run once more until it stops by itself (the credit runs out: 402),
the credit is topped up (``POST /_emulator/credit``), and a final run completes
the dataset. (Should a final run leave an item unfinished, which takes a
``client_ref`` lookup failing five times in a row, the command is run again, as
a user would, at most twice more; ``final_runs`` says how many it took.)

Then the emulator's own run listing is the ground truth, and the folder must
match it: every prompt has an image in ``metadata.jsonl`` or a line in
``failures.jsonl`` (not both, nothing twice); each image is on disk with its
SHA-256, from the one run the emulator billed for that prompt, at that cost; no
prompt was billed twice across all the restarts; nothing was billed past
``--max-cost``. One JSON line; exit status 1 when a target is missed.

    python benchmarks/chaos_resume.py --prompts 10000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))
# The baseline: another checkout's client (e.g. the code before issue 11) against
# this checkout's emulator (which has every fault). The emulator always runs from ROOT.
CLIENT_ROOT = Path(os.environ.get("RUNFLOW_CHAOS_CLIENT", ROOT)).resolve()
if CLIENT_ROOT != ROOT:  # import its runflow_async first; `benchmarks` stays this one's
    sys.path.insert(0, str(CLIENT_ROOT))
    import runflow_async  # noqa: F401

    sys.path.remove(str(CLIENT_ROOT))

from benchmarks.chaos_emulator import (  # noqa: E402
    API_KEY,
    ChaosMix,
    Ledger,
    all_runs,
    emulator_process,
    post_json,
    settled_counters,
    total_price,
)
from runflow_async import CustomImageSize, GenerateRequest  # noqa: E402

SIZE = "64x64"
FINAL_RUNS = 3
KILLS_WITHIN = 0.6


@dataclass(frozen=True)
class ResumeSettings:
    """One resume soak: how many prompts, how many kills, under what limits."""

    prompts: int = 10_000
    kills: int = 5
    concurrency: int = 32
    time_scale: float = 0.01
    seed: int = 6
    credit_fraction: Decimal = Decimal("0.9")
    budget_fraction: Decimal = Decimal("1.1")
    timeout: float = 900.0
    mix: ChaosMix = field(default_factory=ChaosMix)


def prompt(i: int) -> str:
    return f"chaos resume prompt {i}"


def finished(out: Path) -> int:
    """Items the journal records as finished (succeeded or failed); 0 before it exists."""
    path = out / ".runflow" / "journal.sqlite3"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM items WHERE state IN ('succeeded', 'failed')"
            ).fetchone()
    except sqlite3.Error:
        return 0  # being created, or locked for a moment
    return int(row[0])


@dataclass
class Cli:
    """Starts ``runflow-async generate`` against the emulator, in its own process."""

    url: str
    work: Path
    settings: ResumeSettings
    max_cost: Decimal
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.work / "out"

    async def start(self) -> asyncio.subprocess.Process:
        env = {**os.environ, "PYTHONPATH": str(CLIENT_ROOT)}
        env.update(RUNFLOW_BASE_URL=self.url, RUNFLOW_API_KEY=API_KEY)
        argv = [sys.executable, "-m", "runflow_async", "generate"]
        argv += [str(self.work / "prompts.txt"), "--out", str(self.out), "--yes", "--json"]
        argv += ["--time-scale", str(self.settings.time_scale), "--image-size", SIZE]
        argv += ["--concurrency", str(self.settings.concurrency), "--max-cost", str(self.max_cost)]
        n = len(self.runs)
        with (
            (self.work / f"run-{n}.out").open("wb") as stdout,
            (self.work / f"run-{n}.err").open("wb") as stderr,
        ):
            # Run from the work folder: `python -m` puts the current directory
            # first on sys.path, ahead of PYTHONPATH (the client under test).
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=self.work,
            )

    async def run(self, at: int | None, delay: float, deadline: float) -> None:
        """Run once; SIGKILL it ``delay`` s after ``at`` items have finished (None: never)."""
        before = finished(self.out)
        child = Child(await self.start())
        try:
            sent = await self._kill_at(child, at, delay, deadline)
            status = await child.proc.wait()
        finally:
            child.close()
        self.runs.append(
            {
                "kill_at_finished": at,
                "kill_delay_s": round(delay, 3),
                # By the outcome, not the intent: a child that ended by itself just
                # before the kill (a zombie takes a signal silently) was not killed.
                "killed": sent and status == -signal.SIGKILL,
                "exit": status,
                "finished_before": before,
                "finished_after": finished(self.out),
            }
        )

    async def _kill_at(self, child: Child, at: int | None, delay: float, deadline: float) -> bool:
        """Kill ``child`` at the kill point (True if signalled there); kill a hang, if any."""
        while child.proc.returncode is None and time.monotonic() < deadline:
            if at is not None and finished(self.out) >= at:
                await asyncio.sleep(delay)
                return child.kill()  # once: it is dying, whatever returncode says yet
            await asyncio.sleep(0.005)
        if child.proc.returncode is None:  # past the deadline: a hang
            child.kill()
        return False


class Child:
    """A started process, signalled through a pidfd, never by its pid.

    asyncio's child watcher (a thread, on Python 3.11) reaps a child the moment it
    exits and only later sets ``proc.returncode``, so ``returncode is None`` does not
    mean the pid is still this child's: a kill by pid can meet ``ProcessLookupError``
    (the old soak's flake: a second kill, meant for hangs, right after the first) or,
    were the pid reused, another process. The pidfd, opened while the child starts
    up, names this process only; once it is reaped a signal is simply refused.
    (Without pidfds, outside Linux, the pid is used and a vanished one tolerated.)
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._pidfd: int | None = None
        self._gone = False
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(proc.pid)
            except ProcessLookupError:  # died during its start-up and already reaped
                self._gone = True

    def kill(self) -> bool:
        """SIGKILL the process; False if it had already been reaped."""
        if self._gone:
            return False
        try:
            if self._pidfd is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            else:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        """Release the pidfd; idempotent."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
            self._gone = True


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audit_folder(
    out: Path, prompts: Sequence[str], ledger: Ledger, runs: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Check the folder against the emulator's runs; every count should be 0."""
    rows = read_jsonl(out / "metadata.jsonl")
    fails = read_jsonl(out / "failures.jsonl")
    by_id = {run["id"]: run for run in runs}
    imaged = Counter(row["prompt"] for row in rows)
    failed = Counter(row["prompt"] for row in fails)
    wanted = set(prompts)
    bad_rows = 0
    for row in rows:
        run = by_id.get(row["run_id"], {})
        path = out / row["file_name"]
        ok = (
            run.get("status_code") == "succeeded"
            and run.get("input", {}).get("prompt") == row["prompt"]
            and Decimal(run.get("cost") or "-1") == Decimal(row["cost_usd"])
            and path.is_file()
            and hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
        )
        bad_rows += not ok
    for row in fails:
        run = by_id.get(row["run_id"] or "", {})
        bad_rows += row["run_id"] is not None and run.get("status_code") != "failed"
    listed = {row["file_name"] for row in rows}
    skip = {"metadata.jsonl", "failures.jsonl", "README.md"}  # README: the dataset card
    # Images sit in their shard's subfolder (``00000/KEY-0.png``, as ``file_name`` says).
    ours = {".runflow", ".preview"}
    files = (p for p in out.rglob("*") if p.is_file() and not ours.intersection(p.parts))
    names = (p.relative_to(out).as_posix() for p in files)
    extra = [name for name in names if name not in skip and name not in listed]
    # A download killed mid-write leaves its hidden temp file (``.<name>.<random>``);
    # `datasets` skips hidden files, so these are reported apart from stray files.
    temps = [name for name in extra if Path(name).name.startswith(".")]
    delivered = {row["run_id"] for row in rows}
    spent = sum((Decimal(row["cost_usd"]) for row in rows), Decimal(0))
    return {
        "images": len(rows),
        "failures": len(fails),
        "failure_reasons": dict(Counter(row["error_type"] for row in fails)),
        "prompts_without_outcome": len(wanted - set(imaged) - set(failed)),
        "prompts_with_image_and_failure": len(set(imaged) & set(failed)),
        "duplicate_rows": sum(n - 1 for n in (imaged + failed).values()),
        "rows_for_unknown_prompts": len((set(imaged) | set(failed)) - wanted),
        "manifest_inconsistencies": bad_rows,
        "stray_files": len(extra) - len(temps),
        "temp_files_left_by_kills": len(temps),
        "paid_results_lost": sum(rid not in delivered for rid in ledger.billed_run),
        "manifest_usd": str(spent),
    }


async def resume_soak(
    url: str, work: Path, settings: ResumeSettings, credit: Decimal, cap: Decimal
) -> dict[str, Any]:
    """Kill and re-run the CLI against the emulator at ``url``; audit the folder and the bills."""
    prompts = [prompt(i) for i in range(settings.prompts)]
    (work / "prompts.txt").write_text("".join(f"{p}\n" for p in prompts))
    cli = Cli(url, work, settings, cap)
    rng = random.Random(settings.seed)
    # Each kill comes once 1 to `step` more items have finished, plus up to 20 ms,
    # with runs being created, waited on and downloaded; all within the first 60%
    # of the items, well before the credit (90%) runs out.
    last = int(settings.prompts * KILLS_WITHIN)
    step = max(1, last // max(1, settings.kills))
    started = time.monotonic()
    deadline = started + settings.timeout
    for _ in range(settings.kills):
        now = finished(cli.out)
        at = max(now + 1, min(now + rng.randint(1, step), last))
        await cli.run(at, rng.uniform(0.0, 0.02), deadline)
    await cli.run(None, 0.0, deadline)  # runs until the credit runs out (402)
    topped = await post_json(url + "/_emulator/credit", {"credit_usd": None})
    final_runs = 0
    while final_runs < FINAL_RUNS and finished(cli.out) < settings.prompts:
        await cli.run(None, 0.0, deadline)  # the final run, to completion
        final_runs += 1
    wall = time.monotonic() - started
    hung = time.monotonic() > deadline
    counters = await settled_counters(url)
    runs = await all_runs(url)
    ledger = Ledger.of(runs)
    folder = audit_folder(cli.out, prompts, ledger, runs)
    by_status = counters["responses_by_status"]
    result: dict[str, Any] = {
        "benchmark": "chaos_resume",
        "client": str(CLIENT_ROOT),
        "prompts": settings.prompts,
        "concurrency": settings.concurrency,
        "time_scale": settings.time_scale,
        "seed": settings.seed,
        "fault_mix": asdict(settings.mix),
        "cli_runs": cli.runs,
        "kills": sum(r["killed"] for r in cli.runs),
        "final_exit": cli.runs[-1]["exit"],
        "final_runs": final_runs,
        "journal_unfinished": settings.prompts - finished(cli.out),
        **folder,
        "emulator_runs_created": ledger.runs,
        "emulator_runs_billed": ledger.succeeded,
        "emulator_runs_failed": ledger.failed,
        "emulator_billed_usd": str(ledger.billed_usd),
        "duplicate_billed_runs": ledger.duplicate_billed_runs,
        "items_with_two_runs": ledger.items_created_twice,
        "runs_for_unknown_prompts": sum(p not in set(prompts) for p in ledger.created),
        "max_cost_usd": str(cap),
        "budget_overshoot_usd": str(max(Decimal(0), ledger.billed_usd - cap)),
        "credit_usd": str(credit),
        "billed_when_topped_up_usd": topped["billed_usd"],
        "creates_refused_402": by_status.get("402", 0),
        "emulator_429s": by_status.get("429", 0),
        "emulator_faults": counters["faults_injected"],
        "hung": hung,
        "wall_s": round(wall, 2),
    }
    result["missed"] = missed_targets(result)
    return result


def missed_targets(result: Mapping[str, Any]) -> list[str]:
    """The targets a result misses (empty: all met)."""
    zero = (
        "journal_unfinished",
        "prompts_without_outcome",
        "prompts_with_image_and_failure",
        "duplicate_rows",
        "rows_for_unknown_prompts",
        "manifest_inconsistencies",
        "stray_files",
        "paid_results_lost",
        "duplicate_billed_runs",
        "runs_for_unknown_prompts",
    )
    missed = [name for name in zero if result[name] != 0]
    if Decimal(result["budget_overshoot_usd"]) > 0:
        missed.append("budget_overshoot_usd")
    if result["manifest_usd"] != result["emulator_billed_usd"]:
        missed.append("manifest_usd")
    if result["final_exit"] not in (0, 1) or result["hung"]:
        missed.append("final_exit")
    return missed


def prices(settings: ResumeSettings) -> tuple[Decimal, Decimal]:
    """The emulator's credit and ``--max-cost``, as fractions of the whole dataset's price."""
    width, height = (int(side) for side in SIZE.split("x"))
    size = CustomImageSize(width=width, height=height)
    total = total_price(
        GenerateRequest(prompt=prompt(i), image_size=size) for i in range(settings.prompts)
    )
    total *= settings.mix.billing  # what the emulator bills: cost_multiplier x list price
    return total * settings.credit_fraction, total * settings.budget_fraction


async def main_async(settings: ResumeSettings, work: Path) -> dict[str, Any]:
    credit, cap = prices(settings)
    flags = ["--seed", str(settings.seed), "--time-scale", str(settings.time_scale)]
    flags += ["--credit-usd", str(credit), *settings.mix.flags()]
    async with emulator_process(*flags) as url:
        return await resume_soak(url, work, settings, credit, cap)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before 'hung'")
    parser.add_argument("--work-dir", type=Path, help="keep the folder here (default: a temp dir)")
    args = parser.parse_args(argv)
    settings = ResumeSettings(
        prompts=args.prompts,
        kills=args.kills,
        concurrency=args.concurrency,
        time_scale=args.time_scale,
        seed=args.seed,
        timeout=args.timeout,
    )
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(main_async(settings, args.work_dir.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-resume-") as work:
            result = asyncio.run(main_async(settings, Path(work)))
    print(json.dumps(result), flush=True)
    return 1 if result["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Dataset throughput: ``runflow-async generate`` end to end beside the script a user would write.

Two contenders, each in its own process, each against a fresh emulator in its
own process (same flags: scaled clock, log-normal durations, small real PNGs),
over the same prompts file, at the same run concurrency and download concurrency:

* ``cli``: ``runflow-async generate PROMPTS --out DIR --yes --json`` (creates,
  waits, downloads, the SQLite journal, ``metadata.jsonl``, ``failures.jsonl``);
* ``baseline``: :func:`baseline_script`, what a competent user writes with the
  SDK and no journal: ``client.batch`` + ``batch.as_completed()``, each finished
  run's images fetched with ``client.download`` (as many at once as the CLI
  downloads), one JSONL row per image appended to an open, buffered file.

Per contender, from the child process alone (``os.wait4`` of that pid: the
emulator is another process): wall time from spawn to exit, images per second,
client CPU (user + sys, every thread) per image, and peak RSS (``ru_maxrss``).
Both are measured end to end, interpreter start-up and reading the prompts
included.

Journal writes per item are counted in the CLI's own process without touching
its code: the child is ``python bench_dataset.py --contender cli ...``, which
sets an ``sqlite3`` trace callback on every connection (a counter: a few
hundred nanoseconds a statement) and then calls the same ``main()`` that the
``runflow-async`` script calls. SQLite reports every statement it runs (each
row of an ``executemany`` too); a *write* is an INSERT, UPDATE, DELETE or
REPLACE, a *commit* is an explicit COMMIT or a write run outside a
transaction (autocommit: its own transaction, one WAL append).

Then every output folder is audited: every prompt has exactly one manifest row
and its image on disk with the row's SHA-256, nothing failed, and the emulator
created exactly one run per prompt. Targets (issue 12): the CLI's images/s at
least 0.9x the baseline's, its CPU per image at most 1.5x, its peak RSS under
200 MB (the issue sets it at 100,000 prompts: ``--only rss``). One JSON line;
exit status 1 when a target is missed or the audit fails.

    python benchmarks/bench_dataset.py --prompts 10000
    python benchmarks/bench_dataset.py --prompts 100000 --only rss   # peak RSS, minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"
DOWNLOADS = 8  # the CLI's download concurrency (run_dataset's default)
TARGETS = {"images_per_s_ratio_min": 0.9, "cpu_per_image_ratio_max": 1.5, "peak_rss_mb_max": 200}


@dataclass(frozen=True)
class Settings:
    """One benchmark invocation: the same for every contender."""

    prompts: int = 10_000
    concurrency: int = 16
    time_scale: float = 0.01
    median: float = 2.0
    size: str = "64x64"
    seed: int = 12
    format: str = "imagefolder"


def prompt(i: int) -> str:
    return f"dataset benchmark prompt {i}"


# -- the baseline: the script a user writes (its own process) ----------------


async def baseline_script(settings: Settings, url: str, lines: list[str], out: Path) -> int:
    """``client.batch`` + ``client.download`` + a JSONL manifest; returns images saved.

    ``lines``: the prompts file's prompts (read before the loop starts); ``out``
    exists.
    """
    from runflow_async import (
        CustomImageSize,
        GenerateRequest,
        Outcome,
        PollPolicy,
        RetryPolicy,
        RunflowClient,
    )

    width, height = (int(side) for side in settings.size.split("x"))
    size = CustomImageSize(width=width, height=height)
    requests = [GenerateRequest(prompt=text, image_size=size) for text in lines]
    scale = settings.time_scale
    downloads = asyncio.Semaphore(DOWNLOADS)
    saved = 0
    async with RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=scale),
        poll=PollPolicy(time_scale=scale),
    ) as client:
        with (out / "metadata.jsonl").open("w", encoding="utf-8") as manifest:

            async def save(outcome: Outcome) -> None:
                nonlocal saved
                result = outcome.unwrap()
                for n, image in enumerate(result.images):
                    async with downloads:
                        file = await client.download(
                            image, out / f"{outcome.index:06d}-{n}.png", name_by_type=True
                        )
                    row = {
                        "file_name": file.path.name,
                        "prompt": lines[outcome.index],
                        "run_id": outcome.run_id,
                        "seed": result.run.output.seed if result.run.output else None,
                        "sha256": file.sha256,
                        "cost_usd": str(outcome.billed_usd),
                    }
                    manifest.write(json.dumps(row) + "\n")
                    saved += 1

            async with client.batch(max_concurrency=settings.concurrency) as batch:
                batch.submit_many(requests)
                async with asyncio.TaskGroup() as tg:
                    async for outcome in batch.as_completed():
                        tg.create_task(save(outcome))
    return saved


# -- the CLI, with its journal's statements counted (its own process) --------


class StatementCounter:
    """Counts what SQLite runs on every connection opened after :meth:`install`."""

    WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")

    def __init__(self) -> None:
        self.statements = self.writes = self.commits = 0
        self._in_transaction = False

    def __call__(self, sql: str) -> None:
        self.statements += 1
        verb = sql.lstrip()[:8].upper()
        if verb.startswith("WITH") and " UPDATE " in sql:  # the journal's one-statement flush
            verb = "UPDATE"
        if verb.startswith("BEGIN"):
            self._in_transaction = True
        elif verb.startswith(("COMMIT", "END", "ROLLBACK")):
            self.commits += verb.startswith(("COMMIT", "END"))
            self._in_transaction = False
        elif verb.startswith(self.WRITES):
            self.writes += 1
            self.commits += not self._in_transaction

    def install(self) -> None:
        connect = sqlite3.connect

        def counting_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn: sqlite3.Connection = connect(*args, **kwargs)
            conn.set_trace_callback(self)
            return conn

        sqlite3.connect = counting_connect  # type: ignore[assignment]


def cli_argv(settings: Settings, prompts: Path, out: Path) -> list[str]:
    return [
        "generate", str(prompts), "--out", str(out), "--yes", "--json",
        "--concurrency", str(settings.concurrency),
        "--time-scale", str(settings.time_scale),
        "--image-size", settings.size,
        "--format", settings.format,
    ]  # fmt: skip


def run_cli_counted(argv: list[str], counts: Path) -> int:
    """``runflow-async ARGV`` in this process, SQLite statements counted into ``counts``."""
    from runflow_async._cli.main import main

    counter = StatementCounter()
    counter.install()
    status = main(argv)
    counts.write_text(json.dumps(vars(counter) | {"exit": status}))
    return status


# -- the orchestrator ----------------------------------------------------------


@contextlib.contextmanager
def emulator(settings: Settings) -> Iterator[str]:
    """A fresh ``runflow-async emulator`` in its own process; yields its URL."""
    argv = [sys.executable, "-m", "runflow_async", "emulator", "--port", "0"]
    argv += ["--seed", str(settings.seed), "--time-scale", str(settings.time_scale)]
    argv += ["--median-duration", str(settings.median), "--duration-sigma", "0.5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(  # noqa: S603 - this interpreter, our own arguments
        argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
    )
    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().decode().split()  # "Runflow emulator on URL (...)"
        if len(words) < 4:
            raise RuntimeError(f"the emulator did not start (exit status {proc.wait()})")
        yield words[3]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def counters(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_emulator/counters") as resp:  # noqa: S310 - loopback
        data: dict[str, Any] = json.load(resp)
    return data


def run_contender(name: str, settings: Settings, url: str, work: Path) -> dict[str, Any]:
    """Run one contender in its own process; its own wall time, CPU and peak RSS."""
    out = work / name
    argv = [sys.executable, __file__, "--contender", name, "--url", url, "--work", str(work)]
    argv += ["--settings", json.dumps(vars(settings))]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNFLOW_BASE_URL": url}
    env["RUNFLOW_API_KEY"] = API_KEY
    with (work / f"{name}.out").open("wb") as stdout, (work / f"{name}.err").open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(  # noqa: S603 - this interpreter, our own arguments
            argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    audit = audit_folder(out, settings.prompts)
    cpu = usage.ru_utime + usage.ru_stime
    images = max(audit["images"], 1)
    line: dict[str, Any] = {
        "contender": name,
        "exit": proc.returncode,
        "images": audit["images"],
        "wall_s": round(wall, 2),
        "images_per_s": round(audit["images"] / wall, 1),
        "client_cpu_s": round(cpu, 2),
        "client_user_s": round(usage.ru_utime, 2),
        "client_sys_s": round(usage.ru_stime, 2),
        "context_switches": usage.ru_nvcsw + usage.ru_nivcsw,
        "client_cpu_ms_per_image": round(cpu * 1000 / images, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "runs_created": counters(url)["runs_created"],
        "audit": audit,
    }
    if name == "cli":
        counted = json.loads((work / "cli.counts").read_text())
        per = max(settings.prompts, 1)
        line["journal_commits_per_item"] = round(counted["commits"] / per, 3)
        line["journal_writes_per_item"] = round(counted["writes"] / per, 3)
        line["journal_statements_per_item"] = round(counted["statements"] / per, 3)
        summary = (work / "cli.out").read_text().strip().splitlines()
        line["summary"] = json.loads(summary[-1]) if summary else None
    return line


def audit_folder(out: Path, prompts: int) -> dict[str, Any]:
    """Every prompt once in ``metadata.jsonl``, its image on disk with that SHA-256."""
    from runflow_async._dataset.listing import NotADatasetError, entries

    rows, bad = [], 0
    try:  # every layout: loose files by file_name, or the bytes inside the shards
        for entry in entries(out):
            rows.append(entry.row)
            try:
                data = entry.read()
            except OSError:
                data = b""
            bad += hashlib.sha256(data).hexdigest() != entry.row.get("sha256")
    except NotADatasetError:
        pass
    seen = {row["prompt"] for row in rows}
    failures = out / "failures.jsonl"
    failed = len(failures.read_text().splitlines()) if failures.exists() else 0
    expected = {prompt(i) for i in range(prompts)}
    return {
        "images": len(rows),
        "prompts_without_image": len(expected - seen),
        "duplicate_rows": len(rows) - len(seen),
        "bad_images": bad,
        "failures": failed,
        "ok": seen == expected and len(rows) == prompts and bad == 0 and failed == 0,
    }


def judge(settings: Settings, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The JSON line: each contender's medians, the ratios, the targets met."""
    line: dict[str, Any] = {"benchmark": "dataset", **vars(settings), "downloads": DOWNLOADS}
    medians = {}
    for name, runs in results.items():
        med = dict(runs[-1])
        for key in ("wall_s", "images_per_s", "client_cpu_ms_per_image", "peak_rss_mb"):
            med[key] = statistics.median(r[key] for r in runs)
        med["repeats"] = len(runs)
        medians[name] = med
        line[name] = med
    ok = all(r["audit"]["ok"] and r["runs_created"] == settings.prompts for rs in results.values()
             for r in rs)  # fmt: skip
    targets: dict[str, Any] = {}
    cli, base = medians.get("cli"), medians.get("baseline")
    if cli is not None:
        rss = cli["peak_rss_mb"]
        targets["peak_rss_mb"] = {"value": rss, "max": TARGETS["peak_rss_mb_max"]}
        targets["peak_rss_mb"]["met"] = rss < TARGETS["peak_rss_mb_max"]
    if cli is not None and base is not None:
        speed = cli["images_per_s"] / base["images_per_s"]
        cpu = cli["client_cpu_ms_per_image"] / base["client_cpu_ms_per_image"]
        low, high = TARGETS["images_per_s_ratio_min"], TARGETS["cpu_per_image_ratio_max"]
        targets["images_per_s_ratio"] = {"value": round(speed, 3), "min": low, "met": speed >= low}
        targets["cpu_per_image_ratio"] = {"value": round(cpu, 3), "max": high, "met": cpu <= high}
    line["targets"] = targets
    line["audit_ok"] = ok
    line["met"] = ok and all(t["met"] for t in targets.values())
    return line


def orchestrate(settings: Settings, contenders: list[str], repeat: int, keep: Path | None) -> int:
    with contextlib.ExitStack() as stack:
        work = keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ds-")))
        work.mkdir(parents=True, exist_ok=True)
        (work / "prompts.txt").write_text(
            "".join(f"{prompt(i)}\n" for i in range(settings.prompts))
        )
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for n in range(repeat):
            for name in contenders:  # interleaved: both see the same machine load
                run_dir = work / f"{name}-{n}"
                run_dir.mkdir()
                (run_dir / "prompts.txt").symlink_to(work / "prompts.txt")
                with emulator(settings) as url:
                    results[name].append(run_contender(name, settings, url, run_dir))
        line = judge(settings, results)
    print(json.dumps(line), flush=True)
    return 0 if line["met"] else 1


def child(args: argparse.Namespace) -> int:
    settings = Settings(**json.loads(args.settings))
    work = Path(args.work)
    prompts, out = work / "prompts.txt", work / args.contender
    if args.contender == "cli":
        return run_cli_counted(cli_argv(settings, prompts, out), work / "cli.counts")
    lines = [line.strip() for line in prompts.read_text().splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    saved = asyncio.run(baseline_script(settings, args.url, lines, out))
    print(json.dumps({"images": saved}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=Settings.prompts)
    parser.add_argument("--concurrency", type=int, default=Settings.concurrency)
    parser.add_argument("--time-scale", type=float, default=Settings.time_scale)
    parser.add_argument("--median", type=float, default=Settings.median, help="run seconds")
    parser.add_argument("--image-size", default=Settings.size)
    parser.add_argument(
        "--format", choices=["imagefolder", "webdataset", "parquet"], default=Settings.format
    )
    parser.add_argument("--repeat", type=int, default=1, help="pairs to run; medians reported")
    parser.add_argument(
        "--only",
        choices=["all", "rss"],
        default="all",
        help="rss: the CLI alone (its peak RSS), e.g. at --prompts 100000",
    )
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    for hidden in ("--contender", "--url", "--work", "--settings"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        return child(args)
    settings = Settings(
        prompts=args.prompts,
        concurrency=args.concurrency,
        time_scale=args.time_scale,
        median=args.median,
        size=args.image_size,
        format=args.format,
    )
    contenders = ["cli"] if args.only == "rss" else ["baseline", "cli"]
    return orchestrate(settings, contenders, args.repeat, args.keep)


if __name__ == "__main__":
    sys.exit(main())

"""``benchmarks/bench_dataset.py`` at 50 prompts: it runs, and its audit holds (not timed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import bench_dataset
from benchmarks.bench_dataset import Settings, audit_folder, judge, prompt

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmark_runs_both_contenders_and_audits_their_folders(tmp_path: Path) -> None:
    n = 50
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(ROOT / "benchmarks" / "bench_dataset.py"), "--prompts", str(n)]
    argv += ["--keep", str(tmp_path / "work")]
    done = subprocess.run(argv, capture_output=True, env=env, timeout=300, check=False)  # noqa: S603
    line = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert done.returncode == (0 if line["met"] else 1)  # targets are judged, not asserted here
    assert line["audit_ok"]
    for name in ("baseline", "cli"):
        result = line[name]
        assert result["exit"] == 0
        assert result["images"] == n
        assert result["runs_created"] == n
        assert result["audit"]["ok"]
        assert result["audit"]["prompts_without_image"] == 0
        assert result["images_per_s"] > 0
        assert result["client_cpu_ms_per_image"] > 0
        assert result["peak_rss_mb"] > 10  # the child's, in MB
    cli = line["cli"]
    assert cli["summary"]["succeeded"] == n
    # Each item: its submitting mark committed before its create, in one
    # statement with the created and succeeded marks waiting (were 3 writes).
    assert 1 <= cli["journal_commits_per_item"] < 2
    assert 1 <= cli["journal_writes_per_item"] <= 2.5  # + the 50 ms flushes (was 4)
    assert cli["journal_statements_per_item"] <= 3
    assert set(line["targets"]) == {"images_per_s_ratio", "cpu_per_image_ratio", "peak_rss_mb"}


def _folder(out: Path, n: int) -> None:
    out.mkdir()
    rows = []
    for i in range(n):
        data = f"image {i}".encode()
        (out / f"{i}.png").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        rows.append({"file_name": f"{i}.png", "prompt": prompt(i), "sha256": digest})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_audit_fails_a_missing_image_a_duplicate_or_a_changed_file(tmp_path: Path) -> None:
    _folder(tmp_path / "good", 3)
    assert audit_folder(tmp_path / "good", 3)["ok"]
    _folder(tmp_path / "missing", 3)
    (tmp_path / "missing" / "1.png").unlink()
    assert audit_folder(tmp_path / "missing", 3)["bad_images"] == 1
    _folder(tmp_path / "short", 2)
    assert audit_folder(tmp_path / "short", 3)["prompts_without_image"] == 1
    _folder(tmp_path / "changed", 3)
    (tmp_path / "changed" / "2.png").write_bytes(b"other bytes")
    assert not audit_folder(tmp_path / "changed", 3)["ok"]
    _folder(tmp_path / "twice", 3)
    manifest = tmp_path / "twice" / "metadata.jsonl"
    manifest.write_text(manifest.read_text() + manifest.read_text().splitlines()[0] + "\n")
    assert audit_folder(tmp_path / "twice", 3)["duplicate_rows"] == 1
    _folder(tmp_path / "failed", 3)
    (tmp_path / "failed" / "failures.jsonl").write_text("{}\n")
    assert not audit_folder(tmp_path / "failed", 3)["ok"]


def _result(name: str, images_per_s: float, cpu_ms: float, rss: float) -> dict[str, Any]:
    audit = {"ok": True}
    return {
        "contender": name,
        "images_per_s": images_per_s,
        "client_cpu_ms_per_image": cpu_ms,
        "peak_rss_mb": rss,
        "wall_s": 1.0,
        "runs_created": 10,
        "audit": audit,
    }


def test_a_missed_target_or_a_failed_audit_fails_the_benchmark() -> None:
    settings = Settings(prompts=10)
    fair = {"baseline": [_result("baseline", 100, 2.0, 90)], "cli": [_result("cli", 95, 2.5, 90)]}
    assert judge(settings, fair)["met"]
    slow = {**fair, "cli": [_result("cli", 85, 2.5, 90)]}
    assert not judge(settings, slow)["targets"]["images_per_s_ratio"]["met"]
    costly = {**fair, "cli": [_result("cli", 95, 3.1, 90)]}
    assert not judge(settings, costly)["met"]
    heavy = {"cli": [_result("cli", 95, 2.5, 200)]}  # --only rss: the CLI alone
    assert not judge(settings, heavy)["met"]
    broken = {**fair, "cli": [{**_result("cli", 95, 2.5, 90), "runs_created": 11}]}
    assert not judge(settings, broken)["audit_ok"]
    # Medians over repeats, per contender.
    repeats = {"baseline": [_result("baseline", v, 2.0, 90) for v in (100, 10, 100)]}
    assert judge(settings, repeats)["baseline"]["images_per_s"] == 100
    assert bench_dataset.TARGETS["peak_rss_mb_max"] == 200

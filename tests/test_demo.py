"""A short variant of `make demo` runs every step: broker, backfill, training, worker, live
traffic, summary, backtest report, and leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _descendants() -> set[int]:
    """PIDs whose parent chain reaches this test process."""
    me = os.getpid()
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(d.name)] = int(fields[1])
    out = set()
    for pid in parents:
        p = pid
        while p in parents and p not in (0, 1):
            p = parents[p]
            if p == me:
                out.add(pid)
                break
    return out


def test_short_demo_runs_every_step_and_leaves_nothing_running(tmp_path: Path) -> None:
    before = _descendants()
    env = {**os.environ, "STREAM_DATA_DIR": str(tmp_path / "var"), "PYTHONUNBUFFERED": "1"}
    env.pop("STREAM_CHDB_PATH", None)  # the demo keeps its own under STREAM_DATA_DIR/demo
    args = ["--minutes", "0.25", "--users", "600", "--days", "40", "--rate", "800", "--profile", "fast"]
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "demo", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in (
        "backfilled",
        "trained and promoted models",
        "worker running",
        "streamed",
        "worker stopped",
        "backtest report",
        "no process left behind",
    ):
        assert step in out, step
    assert "predictions per model" in out and "bandit posteriors" in out
    for model in ("churn", "click", "engagement"):
        assert f"\n{model}" in out or f" {model} " in out
    demo = tmp_path / "var" / "demo"
    assert (demo / "reports" / "backtest").is_dir()
    assert any((demo / "reports" / "backtest").glob("*.html"))
    assert _descendants() <= before  # no broker JVM or worker left

"""Fault: the worker's state directory (RocksDB) is lost; the tables are rebuilt from their changelogs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from simulator import SimConfig, generate
from stream.kafka.embedded import free_port
from stream.testing import WorkerProcess, produce
from tests.faults.support import FaultRow, PredictionWatch, final_counts, metric, probe, record, topic_counts, wait
from tests.support.models import offline_scores
from tests.worker.conftest import create_topics, expected_predictions, payloads, query_worker_clickhouse

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.fault]


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    """~11.8k events of 600 users over 2 days: enough state for the rebuild to take measurable time."""
    return list(generate(SimConfig(n_users=600, days=2, seed=12)).iter_events())


def _until_ready(port: int, started: float, what: str) -> float:
    """Seconds from ``started`` until ``/readyz`` answers 200 (tables recovered, partitions progressing)."""
    return wait(lambda: probe(port, "/readyz") == 200, 120, what) - started


def test_state_dir_loss_rebuilds_the_tables_and_scores_as_an_uninterrupted_run(
    kafka_bootstrap: str, worker_env: dict[str, str], events: list[dict[str, Any]], models_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {**worker_env, "STREAM_WORKER_WEB_PORT": str(port)}
    prefix = env["STREAM_TOPIC_PREFIX"]
    create_topics(kafka_bootstrap, env)
    half = len(events) // 2
    first, second = events[:half], events[half:]
    expected = expected_predictions(events)
    produce(kafka_bootstrap, f"{prefix}session-events", payloads(first))
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-1.log") as worker:
        fresh_s = _until_ready(port, time.monotonic(), "the first worker ready")
        n_first = sum(expected_predictions(first).values())
        wait(lambda: (metric(port, "stream_predictions_total") or 0) >= n_first, 120, "the first half scored")
        assert worker.proc is not None
    state = Path(env["STREAM_STATE_DIR"])
    assert any(state.rglob("*.sst")) or any(state.rglob("CURRENT")), "the worker kept RocksDB state there"
    shutil.rmtree(state)  # the fault: the disk (or the pod's volume) is gone

    restarted = time.monotonic()
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-2.log"):
        rebuilt_s = _until_ready(port, restarted, "the tables rebuilt from their changelogs")
        produce(kafka_bootstrap, f"{prefix}session-events", payloads(second))
        watch = PredictionWatch(kafka_bootstrap, f"{prefix}predictions", expected)
        got = watch.read(timeout_s=180)
        predictions = watch.latest
    recover_s = (watch.done_at or time.monotonic()) - restarted
    users = len({e["user_id"] for e in first})
    per_10k = max(rebuilt_s - fresh_s, 0.0) * 10_000 / users
    print(
        f"\nstate dir loss: ready {rebuilt_s:.1f} s after the restart (a fresh start: {fresh_s:.1f} s) for "
        f"{users} users: about {per_10k:.0f} s of rebuild per 10k users"
    )

    # churn and engagement are functions of the user state only: an uninterrupted run scores them alike
    offline = offline_scores(models_dir, events)
    state_scored = [k for k in expected_predictions(second) if k[0] in ("churn", "engagement")]
    differ = sorted(k for k in state_scored if abs(predictions[k] - offline[k[0]][k[1]]) > 1e-6)
    rows = query_worker_clickhouse(env, "SELECT model_name, event_id FROM `publisher`.predictions FINAL")
    lost, dup_topic = topic_counts(got, expected)
    missing_final, dup_final = final_counts(rows, expected)
    line = record(FaultRow("state dir lost", lost + missing_final, dup_topic, dup_final, recover_s))
    assert (lost, missing_final, dup_final) == (0, 0, 0), line
    assert len(state_scored) > 500
    assert differ == [], f"{len(differ)} of {len(state_scored)} scores differ from an uninterrupted run: {differ[:5]}"

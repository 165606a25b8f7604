"""Fault: scale out from one worker to three, then in by SIGKILL of one, while input arrives.

The three workers share a ClickHouse server (the stand-in of tests/support/clickhouse_server.py),
as in production, so ``FINAL`` sees every worker's rows together.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.clickhouse import connect
from stream.config import load_settings
from stream.kafka.embedded import free_port
from stream.testing import WorkerProcess, produce
from tests.faults.support import (
    FaultRow,
    PredictionWatch,
    final_counts,
    metric,
    record,
    topic_counts,
    wait,
    wait_owners,
)
from tests.support.clickhouse_server import ClickHouseServer
from tests.worker.conftest import create_topics, expected_predictions, payloads

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.fault]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    with ClickHouseServer(tmp_path / "clickhouse") as srv:
        yield srv


def test_scale_out_to_three_and_in_by_sigkill_loses_nothing(
    kafka_bootstrap: str,
    worker_env: dict[str, str],
    server: ClickHouseServer,
    unique: str,
    sim_events: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    base = {
        **worker_env,
        "STREAM_CLICKHOUSE_URL": server.url,
        "STREAM_CLICKHOUSE_DATABASE": f"w_{unique}",
        "STREAM_WORKER_SESSION_TIMEOUT_S": "6",
    }
    ports = [free_port() for _ in range(3)]
    envs = [{**base, "STREAM_WORKER_WEB_PORT": str(p)} for p in ports]
    prefix, group = base["STREAM_TOPIC_PREFIX"], base["STREAM_WORKER_ID"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, base)
    third = len(sim_events) // 3
    parts = sim_events[:third], sim_events[third : 2 * third], sim_events[2 * third :]
    expected = expected_predictions(sim_events)
    workers = [
        WorkerProcess(kafka_bootstrap, env, tmp_path / f"w{i}.log", instance=str(i)) for i, env in enumerate(envs)
    ]
    try:
        workers[0].start()
        produce(kafka_bootstrap, topic, payloads(parts[0]))
        n0 = sum(expected_predictions(parts[0]).values())
        wait(lambda: (metric(ports[0], "stream_predictions_total") or 0) >= n0, 120, "the first third scored")
        workers[1].start()
        workers[2].start()
        wait_owners(kafka_bootstrap, group, topic, 3)
        produce(kafka_bootstrap, topic, payloads(parts[1]))
        wait(lambda: (metric(ports[2], "stream_predictions_total") or 0) > 0, 60, "the third worker scoring")
        workers[2].kill(signal.SIGKILL)
        killed = time.monotonic()
        produce(kafka_bootstrap, topic, payloads(parts[2]))
        watch = PredictionWatch(kafka_bootstrap, f"{prefix}predictions", expected)
        got = watch.read(timeout_s=180)
    finally:
        for w in workers:
            w.stop()
    recover_s = (watch.done_at or time.monotonic()) - killed
    ch = connect(load_settings(clickhouse_url=server.url, clickhouse_database=f"w_{unique}"), apply_schema=False)
    try:
        rows = ch.query_df("SELECT model_name, event_id FROM {db}.predictions FINAL").to_dict("records")
    finally:
        ch.close()
    lost, dup_topic = topic_counts(got, expected)
    missing_final, dup_final = final_counts(rows, expected)
    line = record(
        FaultRow("scale out to 3 workers, in by SIGKILL of one", lost + missing_final, dup_topic, dup_final, recover_s)
    )
    assert (lost, missing_final, dup_final) == (0, 0, 0), line

"""The batch idle limit on an input topic written in transactions, against the real broker.

A transactional producer ends each transaction with a commit marker: a control record that takes
the partition's last offset and that no consumer is ever handed. The worker must count the
partition caught up once the record before the marker is in, and close a lone event's batch after
``STREAM_SCORE_BATCH_IDLE_MS`` of quiet, not at ``STREAM_SCORE_BATCH_MS``
(``stream_score_batches_total{closed_by}``, counted when the batch closes, whatever the host's load).
Without the fix (the high watermark alone, which stays one past the last record delivered), 1 to 3
of these 4 batches closed at the window in three runs: always the first, whose marker was there
before the worker started; a live one only when its marker came within the idle limit.

The same marker is no lag (``stream_consumer_lag_messages``): it read 1 for good, so an idle input
written in transactions counted as a stalled partition (/readyz) after ``STREAM_STALL_WARNING_S``,
also after a restart from the committed offset (the marker's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.kafka.embedded import free_port
from stream.testing import WorkerProcess, consume, scrape_metrics, scrape_series
from tests.support.waits import wait
from tests.worker.conftest import create_topics, payloads

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _in_a_transaction(producer: Any, topic: str, events: list[dict[str, Any]]) -> None:
    producer.begin_transaction()
    for key, value in payloads(events):
        producer.produce(topic, value=value, key=key)
    producer.commit_transaction(30)


def _closed_by(port: int) -> dict[str, float]:
    return {labels["closed_by"]: value for labels, value in scrape_series(port, "stream_score_batches_total")}


def _lags(port: int) -> list[float] | None:
    """The worker's input lag per partition (None: its metrics are not served yet)."""
    try:
        return [value for _, value in scrape_series(port, "stream_consumer_lag_messages")]
    except OSError:
        return None


def test_a_lone_event_on_a_transactional_topic_closes_its_batch_at_the_idle_limit(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path, unique: str
) -> None:
    from confluent_kafka import Producer

    port = free_port()
    # the lag is exported every STREAM_STALL_WARNING_S / 2
    env = {
        **worker_env,
        "STREAM_TOPIC_PARTITIONS": "1",
        "STREAM_WORKER_WEB_PORT": str(port),
        "STREAM_STALL_WARNING_S": "2",
    }
    prefix = env["STREAM_TOPIC_PREFIX"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, env)
    # session_starts: each gets an engagement prediction, the sign that its batch was processed
    starts = [e for e in sim_events if e["event_type"] == "session_start"][:4]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"test-{unique}"})
    producer.init_transactions(30)
    # one event and its commit marker wait before the worker starts: its first fetch brings both
    _in_a_transaction(producer, topic, starts[:1])
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log"):
        for n, event in enumerate(starts, 1):
            if n > 1:  # live: one event at a time, each after the previous one's prediction
                _in_a_transaction(producer, topic, [event])
            got = consume(kafka_bootstrap, f"{prefix}predictions", until=lambda m, n=n: len(m) >= n, timeout_s=90)
            assert [orjson.loads(m.value())["event_id"] for m in got] == [e["event_id"] for e in starts[:n]]
        closed = _closed_by(port)
        wait(lambda: _lags(port) == [0.0], 30, "lag 0 past the last commit marker")
        assert scrape_metrics(port).get("stream_partition_stalls_total", 0.0) == 0.0
    # each batch held one event (no ad_request) and closed for quiet with nothing more to read
    assert closed == {"size": 0.0, "window": 0.0, "idle": float(len(starts)), "urgent": 0.0, "backlog": 0.0}, closed
    # a restart reads from the committed offset, the last commit marker's: nothing to read there
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-2.log"):
        wait(lambda: _lags(port) == [0.0], 60, "lag 0 after the restart")

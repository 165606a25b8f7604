"""Fault: the start-up race (issue 14, defect 9). In about one fresh start in three the first
assignment missed the article-events topic ("Ignoring missing topic") and the article agent got
nothing until a rebalance minutes later. ``python -m stream worker`` now creates the internal
topics before faust subscribes; ten fresh starts each show the article agent writing within 10 s of
the app's start (the log line of its GC tuning, logged before it joins the group).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream.testing import WorkerProcess, produce
from tests.faults.support import FaultRow, record, wait
from tests.worker.conftest import create_topics, payloads

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.fault]

STARTS = 10
WITHIN_S = 10.0


def _has_records(bootstrap: str, topic: str) -> bool:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fresh-start-probe"})
    try:
        md = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if md is None or md.error is not None:
            return False
        return any(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] > 0 for p in md.partitions)
    except KafkaException:  # just created: no leader yet
        return False
    finally:
        consumer.close()


def test_ten_fresh_starts_each_have_the_article_agent_processing_within_10_s(
    kafka_bootstrap: str, worker_env: dict[str, str], unique: str, sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    # impressions of many articles: every article-events partition gets some
    events = [e for e in sim_events if e["event_type"] == "article_impression"][:200]
    took: list[float] = []
    for i in range(STARTS):
        env = {
            **worker_env,
            "STREAM_TOPIC_PREFIX": f"{unique}-{i}.",
            "STREAM_WORKER_ID": f"worker-{unique}-{i}",
            "STREAM_STATE_DIR": str(tmp_path / f"state-{i}"),
            "STREAM_CHDB_PATH": str(tmp_path / f"chdb-{i}"),
        }
        create_topics(kafka_bootstrap, env)
        produce(kafka_bootstrap, f"{env['STREAM_TOPIC_PREFIX']}session-events", payloads(events))
        changelog = f"{env['STREAM_WORKER_ID']}-article-stats-changelog"
        with WorkerProcess(kafka_bootstrap, env, tmp_path / f"worker-{i}.log") as worker:
            # counted from the app's start, after the interpreter and the imports: those took 52 s
            # on a 2-core host at load 17, and are not what the start-up race is about
            worker.wait_for_log("gc thresholds", timeout_s=300)
            started = time.monotonic()
            took.append(
                wait(
                    lambda changelog=changelog: _has_records(kafka_bootstrap, changelog),
                    60,
                    f"start {i}: the article agent's first write",
                )
                - started
            )
        log = (tmp_path / f"worker-{i}.log").read_text()
        assert "Ignoring missing topic" not in log, f"start {i} missed a topic at its first assignment"
    summary = (
        f"article agent's first write after a fresh start: median {statistics.median(took):.1f} s, "
        f"max {max(took):.1f} s over {STARTS} starts ({', '.join(f'{t:.1f}' for t in took)})"
    )
    print(f"\n{summary}")
    record(
        FaultRow(
            f"{STARTS} fresh starts (seconds: the slowest start to the article agent's first write)",
            0,
            -1,
            -1,
            max(took),
        )
    )
    assert max(took) <= WITHIN_S, summary

"""Outputs over the size limit and outputs Kafka refuses, against the real broker.

* A record whose dead letter is larger than one Kafka record, between valid events of one
  partition: it is dead-lettered shrunk (``oversized``, with its size, SHA-256 and first bytes),
  the events around it are scored, and the worker commits past it and stays up.
* An output the cluster refuses: the worker logs one line and exits with code 1, without
  committing the batch; after the topic is fixed, a restart delivers it.
* A batch that can never be confirmed: the stall is logged, and SIGTERM still ends the worker
  within ``STREAM_SETTLE_TIMEOUT_S``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from stream.errors import InfraError
from stream.kafka.embedded import free_port
from stream.testing import WorkerProcess, consume, produce
from tests.support.waits import wait as _wait
from tests.worker.conftest import create_topics as _topics
from tests.worker.conftest import expected_predictions as _expected
from tests.worker.conftest import payloads as _payloads

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _committed(bootstrap: str, group: str, topic: str, partition: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        [tp] = consumer.committed([TopicPartition(topic, partition)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def _produce_one(bootstrap: str, topic: str, key: bytes, value: bytes, compression: str) -> None:
    """One record with its own producer (librdkafka checks ``message.max.bytes`` before compressing)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": compression,
            "message.max.bytes": 8 * 1024 * 1024,
            "enable.idempotence": True,
        }
    )
    errors: list[Any] = []
    producer.produce(topic, value, key, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0 and [str(e) if e else None for e in errors] == [None]


def test_oversized_records_between_valid_events_are_dead_lettered_and_the_partition_moves_on(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    prefix = worker_env["STREAM_TOPIC_PREFIX"]
    topic = f"{prefix}session-events"
    _topics(kafka_bootstrap, worker_env)
    events = sim_events[:1500]
    user = Counter(e["user_id"] for e in events).most_common(1)[0][0]
    key = user.encode()
    mine = [e for e in events if e["user_id"] == user]
    half = len(events) // 2
    # ~900 KB of valid JSON that does not compress: its base64 envelope is about 1.2 MB
    noise = base64.b64encode(random.Random(13).randbytes(675_000)).decode()
    big = orjson.dumps({"schema_version": 1, "event_id": "big", "event_type": "page_view", "pad": noise})
    # 1.5 MB that arrives gzip-compressed to a few KB, so the broker takes it
    huge = orjson.dumps({"schema_version": 1, "event_id": "huge", "pad": "z" * 1_500_000})
    assert 880_000 < len(big) < 920_000 and len(huge) > 1024 * 1024
    produce(kafka_bootstrap, topic, _payloads(events[:half]))
    _produce_one(kafka_bootstrap, topic, key, big, "lz4")
    _produce_one(kafka_bootstrap, topic, key, huge, "gzip")
    produce(kafka_bootstrap, topic, _payloads(events[half:]))
    assert any(e in events[half:] for e in mine) and any(e in events[:half] for e in mine)

    expected = _expected(events)
    with WorkerProcess(kafka_bootstrap, worker_env, tmp_path / "worker.log") as worker:
        preds = consume(
            kafka_bootstrap,
            f"{prefix}predictions",
            timeout_s=120,
            idle_s=2.0,
            until=lambda got: (
                len({(orjson.loads(m.value())["model_name"], orjson.loads(m.value())["event_id"]) for m in got})
                >= len(expected)
            ),
        )
        dlq = consume(kafka_bootstrap, f"{prefix}session-events-dlq", until=lambda got: len(got) >= 2, timeout_s=60)
        assert len(dlq) == 2, f"dead letters: {len(dlq)}"
        envelopes = {base64.b64decode(d["value_b64"])[:40]: d for d in (orjson.loads(m.value()) for m in dlq)}
        partition = next(iter(envelopes.values()))["source_partition"]
        ends = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "x"})
        _, high = ends.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        ends.close()
        _wait(
            lambda: _committed(kafka_bootstrap, worker_env["STREAM_WORKER_ID"], topic, partition) == high,
            60,
            "the worker did not commit its partition up to the end",
        )
        assert worker.proc is not None and worker.proc.poll() is None  # still up
    got = Counter((orjson.loads(m.value())["model_name"], orjson.loads(m.value())["event_id"]) for m in preds)
    assert set(got) == set(expected)  # every valid event around them was scored

    for raw in (big, huge):
        d = envelopes[raw[:40]]
        assert d["error_kind"] == "oversized"
        assert d["value_truncated"] is True
        assert d["value_size"] == len(raw)
        assert d["value_sha256"] == hashlib.sha256(raw).hexdigest()
        assert base64.b64decode(d["value_b64"]) == raw[:4096]
        assert base64.b64decode(d["key_b64"]) == key
        assert f"record is {len(raw)} bytes, more than the limit of 16384" in d["reason"]
        assert d["source_partition"] == partition
    offsets = sorted(d["source_offset"] for d in envelopes.values())
    assert offsets[1] == offsets[0] + 1 and offsets[1] < high - 1  # consecutive, with valid events after them
    assert "stopping the worker" not in (tmp_path / "worker.log").read_text()


def test_an_output_the_cluster_refuses_stops_the_worker_without_committing_its_batch(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    prefix = worker_env["STREAM_TOPIC_PREFIX"]
    topic, dlq_topic = f"{prefix}session-events", f"{prefix}session-events-dlq"
    group = worker_env["STREAM_WORKER_ID"]
    _topics(kafka_bootstrap, worker_env)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def dlq_limit(n: int) -> None:
        entry = ConfigEntry("max.message.bytes", str(n), incremental_operation=AlterConfigOpType.SET)
        for fut in admin.incremental_alter_configs(
            [ConfigResource("topic", dlq_topic, incremental_configs=[entry])]
        ).values():
            fut.result()

    first = sim_events[:300]
    produce(kafka_bootstrap, topic, _payloads(first))
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(kafka_bootstrap, worker_env, log_path).start()
    try:
        consume(kafka_bootstrap, f"{prefix}predictions", until=lambda got: len(got) >= 1, timeout_s=90)
        # an operator lowers the dead-letter topic's limit below the worker's (ensure_topics refuses
        # that at start; here it happens while the worker runs)
        dlq_limit(70_000)
        # about 180 KB as a dead letter, and it does not compress (the broker checks compressed batches)
        noise = base64.b64encode(random.Random(17).randbytes(100_000)).decode()
        bad = orjson.dumps({"schema_version": 1, "event_id": "bad", "pad": noise})
        produce(kafka_bootstrap, topic, [(b"u-bad", bad)])
        assert worker.proc is not None
        code = worker.proc.wait(60)
    finally:
        worker.stop()
    text = log_path.read_text()
    assert code == 1
    lines = [ln for ln in text.splitlines() if "stopping the worker" in ln]
    assert len(lines) == 1, lines
    assert f"output to topic '{dlq_topic}' not delivered: MSG_SIZE_TOO_LARGE" in lines[0]
    assert "max.message.bytes" in lines[0]

    # Not committed past the record: once the topic is fixed, a restart dead-letters it.
    meta = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "x"})
    parts = meta.list_topics(topic, timeout=10).topics[topic].partitions
    meta.close()
    dlq_limit(1024 * 1024)
    with WorkerProcess(kafka_bootstrap, worker_env, tmp_path / "worker-2.log"):
        dlq = consume(kafka_bootstrap, dlq_topic, until=lambda got: len(got) >= 1, timeout_s=90)
    envelope = orjson.loads(dlq[0].value())
    assert base64.b64decode(envelope["value_b64"]) == bad
    assert len(dlq) == 1
    committed = {p: _committed(kafka_bootstrap, group, topic, p) for p in parts}
    assert committed[envelope["source_partition"]] > envelope["source_offset"]  # now it is


def test_sigterm_ends_within_the_settle_timeout_when_a_batch_cannot_be_confirmed(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    env = {
        **worker_env,
        "STREAM_CLICKHOUSE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "STREAM_SETTLE_TIMEOUT_S": "3",
        "STREAM_STALL_WARNING_S": "1",
    }
    prefix = env["STREAM_TOPIC_PREFIX"]
    _topics(kafka_bootstrap, env)
    produce(kafka_bootstrap, f"{prefix}session-events", _payloads(sim_events[:300]))
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(kafka_bootstrap, env, log_path).start()
    try:
        worker.wait_for_log("ClickHouse insert into predictions failed", timeout_s=90)
        with contextlib.suppress(InfraError):  # asserted below, once the worker is gone
            worker.wait_for_log("makes no progress", timeout_s=10)
        assert worker.proc is not None
        t0 = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(45)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not end the worker within 45 s")
        took = time.monotonic() - t0
    finally:
        worker.kill(signal.SIGKILL)
    print(f"\nSIGTERM to exit with unconfirmed batches: {took:.1f} s")
    text = log_path.read_text()
    assert "gave up waiting for batches in flight after 3 s" in text
    assert took < 30
    assert "makes no progress: its oldest batch has waited" in text  # the stall was reported, not silent

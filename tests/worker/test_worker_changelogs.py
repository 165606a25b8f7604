"""The tables' changelogs, written by faust's producer on librdkafka (stream/kafka/faust_producer.py).

Every changelog record lands on its key's partition, the changelogs hold exactly what the
worker's RocksDB tables hold (each key's last value, and the offset faust keeps as persisted),
and a worker whose state directory is gone rebuilds the same tables from them.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from rocksdict import AccessType, Rdict

from stream.kafka import topics as T
from stream.kafka.embedded import free_port
from stream.kafka.partitioner import partition_for
from stream.testing import WorkerProcess, consume, produce
from tests.faults.support import metric, probe
from tests.support.waits import wait
from tests.worker.conftest import create_topics, expected_predictions, payloads

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: the key faust keeps the last changelog offset a RocksDB partition has under (faust/stores/rocksdb.py)
OFFSET_KEY = b"__faust\0offset__"
#: the tables keyed by user, co-partitioned with the input
USER_TABLES = (T.USERS_TABLE, T.AD_PENDING_TABLE, T.READS_TABLE)

Content = dict[tuple[str, int], tuple[dict[bytes, bytes], int | None]]


def _changelogs(bootstrap: str, worker_id: str) -> tuple[Content, dict[str, list[tuple[int, bytes]]]]:
    """Per (table, partition): each key's last value (deleted keys left out) and the last offset;
    per table: every record's (partition, key)."""
    content: Content = {}
    records: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for table in T.TABLES:
        values: dict[tuple[str, int], dict[bytes, bytes | None]] = defaultdict(dict)
        last: dict[tuple[str, int], int] = {}
        for msg in consume(bootstrap, f"{worker_id}-{table}-changelog", timeout_s=60):
            key = (table, msg.partition())
            values[key][msg.key()] = msg.value()
            last[key] = max(last.get(key, -1), msg.offset())
            records[table].append((msg.partition(), msg.key()))
        for key, kv in values.items():
            content[key] = ({k: v for k, v in kv.items() if v is not None}, last[key])
    return content, records


def _rocksdb(state: Path) -> Content:
    """Per (table, partition) that has a RocksDB directory: its keys and values, and its persisted offset."""
    out: Content = {}
    for table in T.TABLES:
        for path in state.rglob(f"{table}-*.db"):
            partition = int(path.name[len(table) + 1 : -len(".db")])
            db = Rdict(str(path), access_type=AccessType.read_only())
            try:
                kv = {bytes(k): bytes(v) for k, v in db.items()}
            finally:
                db.close()
            offset = kv.pop(OFFSET_KEY, None)
            if kv or offset is not None:
                out[(table, partition)] = (kv, int(offset) if offset is not None else None)
    return out


def _differences(db: Content, changelog: Content) -> list[str]:
    out = []
    for key in sorted(set(db) | set(changelog)):
        (kv_db, off_db), (kv_log, off_log) = db.get(key, ({}, None)), changelog.get(key, ({}, None))
        if kv_db != kv_log:
            out.append(f"{key}: {len(kv_db)} keys in RocksDB, {len(kv_log)} in the changelog, or other values")
        if off_db != off_log:
            out.append(f"{key}: persisted offset {off_db}, the changelog's last {off_log}")
    return out


def _articles_folded(bootstrap: str, worker_id: str) -> bool:
    """Whether the worker's group has committed every record of its article-events topic: the article
    agent folds behind the predictions, and what it has not folded at the stop, the next worker does."""
    from confluent_kafka import Consumer, TopicPartition

    topic = f"{worker_id}-{T.ARTICLE_EVENTS}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": worker_id, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return all(
            tp.offset >= consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1]
            for tp in committed
        )
    finally:
        consumer.close()


def test_changelogs_are_partitioned_like_the_input_hold_the_tables_and_rebuild_them(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    port = free_port()
    env = {**worker_env, "STREAM_WORKER_WEB_PORT": str(port)}
    assert "STREAM_FAUST_PRODUCER" not in env  # the default: librdkafka
    prefix, worker_id, partitions = env["STREAM_TOPIC_PREFIX"], env["STREAM_WORKER_ID"], 4
    create_topics(kafka_bootstrap, env)
    produce(kafka_bootstrap, f"{prefix}session-events", payloads(sim_events))
    n = sum(expected_predictions(sim_events).values())
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-1.log") as worker:
        wait(lambda: (metric(port, "stream_predictions_total") or 0) >= n, 120, "every event scored")
        wait(lambda: _articles_folded(kafka_bootstrap, worker_id), 60, "every article event folded and committed")
        worker.stop()  # SIGTERM: faust flushes its producer, commits and closes RocksDB
        assert worker.proc is not None and worker.proc.returncode == 0, (tmp_path / "worker-1.log").read_text()
    changelog, records = _changelogs(kafka_bootstrap, worker_id)
    state = Path(env["STREAM_STATE_DIR"])
    before = _rocksdb(state)

    users = {e["user_id"].encode() for e in sim_events}
    assert {k for _, k in records[T.USERS_TABLE]} == users
    for table in USER_TABLES:
        misplaced = [(p, k) for p, k in records[table] if p != partition_for(k, partitions)]
        assert records[table] and misplaced == [], f"{table}: {len(misplaced)} records off their key's partition"
    assert len(before) >= 4 * len(USER_TABLES)
    assert _differences(before, changelog) == []

    shutil.rmtree(state)  # the state is gone: the tables come back from their changelogs
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-2.log") as worker:
        wait(lambda: probe(port, "/readyz") == 200, 120, "the tables rebuilt from their changelogs")
        worker.stop()
        assert worker.proc is not None and worker.proc.returncode == 0, (tmp_path / "worker-2.log").read_text()
    after = _rocksdb(state)
    assert _differences(after, _changelogs(kafka_bootstrap, worker_id)[0]) == []
    assert after == before

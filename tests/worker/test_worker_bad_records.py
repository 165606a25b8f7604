"""Every kind of bad record, between valid events on one partition, against the real broker and chdb.

Each is dead-lettered with its reason (or, where valid, processed as it should be); the worker
stays up, commits past all of them, and the valid events around them are scored.
"""

from __future__ import annotations

import base64
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import load_settings
from stream.kafka.topics import ensure_topics
from stream.testing import WorkerProcess, consume, produce
from tests.worker.conftest import SCORABLE, query_worker_clickhouse

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
CORRUPT_USER = "u-corrupt-state"


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    except KafkaException:  # the group coordinator is still loading: ask again
        return -1
    finally:
        consumer.close()


def _wait_committed(bootstrap: str, group: str, topic: str, end: int, timeout_s: float = 90) -> int:
    deadline = time.monotonic() + timeout_s
    offset = -1
    while time.monotonic() < deadline:
        offset = _committed(bootstrap, group, topic)
        if offset >= end:
            return offset
        time.sleep(0.5)
    return offset


def test_each_kind_of_bad_record_is_dead_lettered_and_the_worker_commits_past_it(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    env = {**worker_env, "STREAM_TOPIC_PARTITIONS": "1"}  # one partition: every record in one sequence
    prefix = env["STREAM_TOPIC_PREFIX"]
    topic = f"{prefix}session-events"
    ensure_topics(kafka_bootstrap, load_settings(topic_prefix=prefix, topic_partitions=1))
    valid = [{**e, "article_id": f"a-{e['event_id']}"} if "article_id" in e else e for e in sim_events[:600]]
    start = next(e for e in valid if e["event_type"] == "session_start")
    t0 = start["event_time"]

    def ev(**fields: Any) -> dict[str, Any]:
        return {**start, **fields}

    # (key, value, expected error_kind or None when the record is valid, a fragment of the reason)
    cases: list[tuple[bytes | None, bytes | None, str | None, str]] = [
        (
            b"u-rev",
            orjson.dumps(ev(event_type="subscription", user_id="u-rev", event_id="rev", revenue=1e308)),
            "invalid",
            "field 'revenue': value 1e+308 is greater than the maximum",
        ),
        (
            b"u-utf8",
            b'{"schema_version": 1, "user_id": "caf\xc3(", "x": 1}',
            "malformed",
            "not valid UTF-8: byte 0xc3 at offset 37",
        ),
        (
            b"u-ctl",
            orjson.dumps(ev(user_id="u-ctl", event_id="ctl", geo={"country": "DE\n"})),
            "invalid",
            "field 'geo.country'",
        ),
        (b"u-tomb", None, "malformed", "tombstone"),
        (
            CORRUPT_USER.encode(),
            orjson.dumps(ev(user_id=CORRUPT_USER, event_id="corrupt")),
            "processing_error",
            "SchemaError: ",
        ),
        # valid: an integral float time, and two users sharing one event_id
        (b"u-float", orjson.dumps(ev(user_id="u-float", event_id="float", event_time=float(t0))), None, ""),
        (b"u-twin-a", orjson.dumps(ev(user_id="u-twin-a", event_id="twin")), None, ""),
        (b"u-twin-b", orjson.dumps(ev(user_id="u-twin-b", event_id="twin")), None, ""),
    ]
    payloads: list[tuple[bytes | None, bytes | None]] = [(e["user_id"].encode(), orjson.dumps(e)) for e in valid]
    step = len(payloads) // (len(cases) + 1)
    for i, (key, value, _, _) in enumerate(reversed(cases)):  # spread out, in order, between valid events
        payloads.insert((len(cases) - i) * step, (key, value))

    # The corrupt user's stored state arrives through the users table's changelog (as it would from a
    # worker of an incompatible version): restored into RocksDB, it cannot be decoded.
    users_changelog = f"{env['STREAM_WORKER_ID']}-users-changelog"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created = admin.create_topics(
        [NewTopic(users_changelog, num_partitions=1, replication_factor=1, config={"cleanup.policy": "compact"})]
    )
    created[users_changelog].result(30)
    changelog = Producer({"bootstrap.servers": kafka_bootstrap})
    changelog.produce(users_changelog, struct.pack(">q", -1) + b"\x00garbage", CORRUPT_USER.encode(), partition=0)
    assert changelog.flush(30) == 0
    produce(kafka_bootstrap, topic, payloads)
    end = len(payloads)

    scorable = [e for e in valid if e["event_type"] in SCORABLE]
    expected = Counter((SCORABLE[e["event_type"]], e["user_id"], e["event_id"]) for e in scorable)
    expected.update(
        {("engagement", u, i): 1 for u, i in [("u-float", "float"), ("u-twin-a", "twin"), ("u-twin-b", "twin")]}
    )
    n_dead = sum(kind is not None for _, _, kind, _ in cases)
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log") as worker:
        committed = _wait_committed(kafka_bootstrap, env["STREAM_WORKER_ID"], topic, end)
        assert committed == end, f"committed {committed} of {end}; see {worker.log_path}"
        assert worker.proc is not None and worker.proc.poll() is None  # still up
        preds = consume(kafka_bootstrap, f"{prefix}predictions")
        dead = consume(kafka_bootstrap, f"{prefix}session-events-dlq")
    # (chdb admits one process per directory: ask once the worker has stopped)
    rows = query_worker_clickhouse(env, "SELECT count() AS n FROM publisher.predictions FINAL WHERE event_id = 'twin'")
    archived = query_worker_clickhouse(env, "SELECT user_id, event_id FROM publisher.events FINAL")
    # the archive: every event the worker processed, once per (user, event id); none of the dead-lettered
    assert sorted((r["user_id"], r["event_id"]) for r in archived) == sorted(
        [(e["user_id"], e["event_id"]) for e in valid]
        + [("u-float", "float"), ("u-twin-a", "twin"), ("u-twin-b", "twin")]
    )

    got = Counter((p["model_name"], p["user_id"], p["event_id"]) for p in (orjson.loads(m.value()) for m in preds))
    assert got == expected  # every valid event around the bad ones scored, exactly once
    by_id = {orjson.loads(m.value())["event_id"]: orjson.loads(m.value()) for m in preds}
    assert type(by_id["float"]["event_time"]) is int and by_id["float"]["event_time"] == t0
    assert b'"event_time":' + str(t0).encode() + b"," in next(m.value() for m in preds if b'"float"' in m.value())
    assert rows == [{"n": 2}]  # two users' events with one event_id are two rows

    envelopes = [orjson.loads(m.value()) for m in dead]
    assert len(envelopes) == n_dead
    want = [(key, kind, fragment) for key, _, kind, fragment in cases if kind is not None]
    offsets = [o for o, (k, v) in enumerate(payloads) if (k, v) in {(c[0], c[1]) for c in cases if c[2]}]
    for envelope, (key, kind, fragment), offset in zip(envelopes, want, offsets, strict=True):
        assert base64.b64decode(envelope["key_b64"]) == key
        assert envelope["error_kind"] == kind
        assert fragment in envelope["reason"], envelope["reason"]
        assert envelope["source_offset"] == offset

"""The embedded broker is a real Kafka: round trips with both client libraries, topic admin."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, Producer

from stream.config import load_settings
from stream.errors import InfraError
from stream.kafka.embedded import EmbeddedKafka
from stream.kafka.topics import TOPICS, ensure_topics, partitions_of

pytestmark = pytest.mark.kafka


def _consume(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            out.append(msg)
    consumer.close()
    return out


def test_confluent_round_trip_keeps_key_headers_timestamp(kafka_bootstrap: str, unique: str) -> None:
    topic = f"rt-confluent-{unique}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    sent = [(f"user-{i}".encode(), f"value-{i}".encode(), 1_700_000_000_000 + i) for i in range(20)]
    for key, value, ts in sent:
        producer.produce(topic, value=value, key=key, timestamp=ts, headers=[("h", key + b"!")])
    assert producer.flush(30) == 0
    got = _consume(kafka_bootstrap, topic, len(sent))
    assert len(got) == len(sent)
    by_key = {m.key(): m for m in got}
    for key, value, ts in sent:
        msg = by_key[key]
        assert msg.value() == value
        assert msg.timestamp()[1] == ts
        assert dict(msg.headers())["h"] == key + b"!"


def test_aiokafka_round_trip_keeps_key_headers_timestamp(kafka_bootstrap: str, unique: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"rt-aiokafka-{unique}"

    async def run() -> list:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(
                    topic,
                    f"v{i}".encode(),
                    key=f"k{i}".encode(),
                    timestamp_ms=1_700_000_000_000 + i,
                    headers=[("n", str(i).encode())],
                )
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=f"g-{unique}"
        )
        await consumer.start()
        got = []
        try:
            async with asyncio.timeout(30):
                async for msg in consumer:
                    got.append(msg)
                    if len(got) == 10:
                        break
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert sorted((m.key, m.value, m.timestamp, tuple(m.headers)) for m in got) == sorted(
        (f"k{i}".encode(), f"v{i}".encode(), 1_700_000_000_000 + i, (("n", str(i).encode()),)) for i in range(10)
    )


def test_topic_creation_is_idempotent_and_checks_partitions(kafka_bootstrap: str, unique: str) -> None:
    settings = load_settings(topic_prefix=f"{unique}.", topic_partitions=3)
    first = ensure_topics(kafka_bootstrap, settings)
    assert set(first.values()) == {"created"}
    assert len(first) == len(TOPICS)
    second = ensure_topics(kafka_bootstrap, settings)
    assert set(second.values()) == {"exists"}

    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    for spec in TOPICS:
        assert len(md[settings.topic(spec.name)].partitions) == partitions_of(spec, settings)

    mismatched = load_settings(topic_prefix=f"{unique}.", topic_partitions=5)
    with pytest.raises(InfraError, match=r"exists with 3 partitions, expected 5"):
        ensure_topics(kafka_bootstrap, mismatched)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_two_brokers_get_different_ports_and_dirs_and_stop_cleanly() -> None:
    a, b = EmbeddedKafka(), EmbeddedKafka()
    with a, b:
        assert a.port != b.port
        assert {a.port, a.controller_port}.isdisjoint({b.port, b.controller_port})
        assert a.workdir != b.workdir
        pid_a, pid_b = a.pid, b.pid
        assert pid_a and pid_b and _alive(pid_a) and _alive(pid_b)
        a.stop()
        assert not _alive(pid_a)
        assert _alive(pid_b)
        assert a.log_path.exists() and a.log_path.stat().st_size > 0  # log kept for debugging
    assert not _alive(pid_b)


def test_broker_does_not_outlive_a_killed_parent(tmp_path) -> None:
    """kill -9 of the Python process that started the broker must not leave an orphaned JVM."""
    script = (
        "from stream.kafka.embedded import EmbeddedKafka\n"
        "import sys, time\n"
        "b = EmbeddedKafka(); b.start(); print(b.pid, flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    jvm_pid = int(proc.stdout.readline())
    assert _alive(jvm_pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while _alive(jvm_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(jvm_pid)


def test_missing_java_is_one_clear_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(InfraError, match=r"^java not found on PATH: Kafka 4 needs Java 17\+"):
        EmbeddedKafka(workdir=tmp_path).start()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restart_keeps_the_address_and_the_data(sig: int, unique: str) -> None:
    """halt()/resume(): the same port and log dir, the records written before, and new writes after."""
    topic = f"restart-{unique}"
    with EmbeddedKafka(partitions=1) as broker:
        before = (broker.bootstrap, broker.controller_port, broker.workdir)
        old_pid = broker.pid
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
        for i in range(5):
            producer.produce(topic, value=f"before-{i}".encode())
        assert producer.flush(30) == 0
        broker.halt(sig)
        assert old_pid is not None and not _alive(old_pid)
        broker.resume()
        with pytest.raises(InfraError, match=r"is running: halt\(\) it"):
            broker.resume()
        assert (broker.bootstrap, broker.controller_port, broker.workdir) == before
        assert broker.pid != old_pid
        for i in range(5):
            producer.produce(topic, value=f"after-{i}".encode())  # the same producer reconnects
        assert producer.flush(30) == 0
        got = [m.value().decode() for m in _consume(broker.bootstrap, topic, 10)]
        assert got == [f"before-{i}" for i in range(5)] + [f"after-{i}" for i in range(5)]

"""Helpers for integration tests against a real broker: a worker subprocess, produce, consume.

Users write their own integration tests with these, as this project's suite does::

    with embedded_kafka() as bootstrap, WorkerProcess(bootstrap, env) as worker:
        produce(bootstrap, "session-events", payloads)
        predictions = consume(bootstrap, "predictions", until=lambda got: len(got) >= n)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from stream.config import Settings
from stream.errors import InfraError
from stream.kafka import clients


def produce(bootstrap: str, topic: str, payloads: Iterable[tuple[bytes | None, bytes | None]],
            timestamps: Iterable[int] | None = None, *, settings: Settings | None = None) -> int:
    """Produce (key, value) pairs in order (idempotent producer: no duplicates, order per key kept).

    ``settings`` carry a secured cluster's credentials (None: a plaintext listener).
    """
    # lz4, as many production producers do: the worker must read compressed topics
    producer = clients.producer(bootstrap, settings, **{"linger.ms": 20, "enable.idempotence": True,
                                                        "compression.type": "lz4"})
    n = 0
    ts_iter = iter(timestamps) if timestamps is not None else None
    for key, value in payloads:
        kwargs: dict[str, Any] = {}
        if ts_iter is not None:
            kwargs["timestamp"] = next(ts_iter)
        while True:
            try:
                producer.produce(topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        raise InfraError(f"could not deliver every record to {topic!r} within 60 s")
    return n


def consume(bootstrap: str, topic: str, *, until: Callable[[list[Message]], bool] | None = None,
            timeout_s: float = 60.0, idle_s: float | None = None, settings: Settings | None = None) -> list[Message]:
    """Read ``topic`` from the beginning with a fresh consumer.

    Without ``until``: everything up to the high watermarks seen at the start. With ``until``:
    until ``until(messages)`` holds (then, with ``idle_s``, until nothing new came for that long).
    Stops at ``timeout_s`` either way. ``settings`` as for :func:`produce`.
    """
    consumer = clients.consumer(bootstrap, settings, **{
        "group.id": f"test-{uuid.uuid4().hex}", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            raise InfraError(f"topic {topic!r} does not exist")
        ends: dict[int, int] = {}
        for p in md.partitions:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                ends[p] = hi
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
        last = time.monotonic()
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
                last = time.monotonic()
                part, offset = msg.partition() or 0, msg.offset() or 0
                if until is None and offset + 1 >= ends.get(part, 0):
                    ends.pop(part, None)
                    if not ends:
                        break
                continue
            if until is None:
                if not ends:
                    break
            elif until(got) and (idle_s is None or time.monotonic() - last >= idle_s):
                break
    finally:
        consumer.close()
    return got


def committed_offsets(bootstrap: str, group: str, topic: str, *,
                      settings: Settings | None = None) -> dict[int, int | None]:
    """The offsets ``group`` has committed on each partition of ``topic`` (None: nothing committed)."""
    consumer = clients.consumer(bootstrap, settings, **{"group.id": group, "enable.auto.commit": False})
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            raise InfraError(f"topic {topic!r} does not exist")
        got = consumer.committed([TopicPartition(topic, p) for p in md.partitions], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in got}


def scrape_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A worker's ``/metrics``: each sample name with the sum of its values over all label sets."""
    out: dict[str, float] = {}
    for name, _, value in _scrape(port, host):
        out[name] = out.get(name, 0.0) + value
    return out


def scrape_series(port: int, name: str, host: str = "127.0.0.1") -> list[tuple[dict[str, str], float]]:
    """The labels and value of each series of the sample ``name`` in a worker's ``/metrics``."""
    return [(labels, value) for sample, labels, value in _scrape(port, host) if sample == name]


def _scrape(port: int, host: str) -> list[tuple[str, dict[str, str], float]]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(body)
            for s in family.samples]


class WorkerProcess:
    """``python -m stream worker`` in a subprocess with its own settings; its log kept in a file."""

    def __init__(self, bootstrap: str, env: Mapping[str, str], log_path: Path, instance: str = "0") -> None:
        self.env = {**os.environ, **env, "STREAM_KAFKA_BOOTSTRAP": bootstrap, "STREAM_WORKER_INSTANCE": instance,
                    "PYTHONUNBUFFERED": "1"}
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def wait_for_log(self, text: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise InfraError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            if self.log_path.exists() and text in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise InfraError(f"worker did not log {text!r} within {timeout_s:.0f}s; see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    def stop(self) -> None:
        """SIGTERM: faust shuts down cleanly (flushes the sink, commits offsets)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

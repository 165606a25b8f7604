"""Fault: the broker restarts (SIGTERM) or crashes (SIGKILL) under a running worker, same port and log dir."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.kafka.embedded import EmbeddedKafka, free_port
from stream.testing import WorkerProcess, produce
from tests.faults.support import FaultRow, PredictionWatch, final_counts, metric, record, topic_counts, wait
from tests.worker.conftest import create_topics, expected_predictions, payloads, query_worker_clickhouse

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.fault]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """A broker of this module's own: the session's broker is not restarted under the other tests."""
    b = EmbeddedKafka(workdir=tmp_path_factory.mktemp("fault-kafka"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_broker_restart_loses_nothing(
    broker: EmbeddedKafka, sig: int, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap
    port = free_port()
    env = {**worker_env, "STREAM_WORKER_WEB_PORT": str(port)}
    prefix = env["STREAM_TOPIC_PREFIX"]
    create_topics(bootstrap, env)
    half = len(sim_events) // 2
    first, second = sim_events[:half], sim_events[half:]
    expected = expected_predictions(sim_events)
    with WorkerProcess(bootstrap, env, tmp_path / "worker.log") as worker:
        produce(bootstrap, f"{prefix}session-events", payloads(first))
        n_first = sum(expected_predictions(first).values())
        wait(lambda: (metric(port, "stream_predictions_total") or 0) >= n_first, 120, "first half scored")
        broker.halt(sig)
        # the worker notices: its consumer's connection to the broker fails
        worker.wait_for_log("Connection refused", timeout_s=60)
        broker.resume()
        back = time.monotonic()
        produce(bootstrap, f"{prefix}session-events", payloads(second))
        watch = PredictionWatch(bootstrap, f"{prefix}predictions", expected)
        got = watch.read(timeout_s=180)
    recover_s = (watch.done_at or time.monotonic()) - back
    rows = query_worker_clickhouse(env, "SELECT model_name, event_id FROM `publisher`.predictions FINAL")
    lost, dup_topic = topic_counts(got, expected)
    missing_final, dup_final = final_counts(rows, expected)
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGKILL"
    line = record(FaultRow(f"broker restart ({name})", lost + missing_final, dup_topic, dup_final, recover_s))
    assert (lost, missing_final, dup_final) == (0, 0, 0), line

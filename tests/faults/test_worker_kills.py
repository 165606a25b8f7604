"""Fault: the worker is SIGKILLed three times while input keeps arriving, and restarted each time."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from stream.kafka.embedded import free_port
from stream.testing import WorkerProcess, produce
from tests.faults.support import FaultRow, PredictionWatch, final_counts, metric, record, topic_counts, wait
from tests.worker.conftest import create_topics, expected_predictions, payloads, query_worker_clickhouse
from tests.worker.test_worker_api import all_processed

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.fault]

KILLS = 3


def test_three_sigkills_under_load_lose_nothing(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    port = free_port()
    env = {**worker_env, "STREAM_WORKER_WEB_PORT": str(port)}
    prefix = env["STREAM_TOPIC_PREFIX"]
    create_topics(kafka_bootstrap, env)
    records = payloads(sim_events)
    expected = expected_predictions(sim_events)
    stop = threading.Event()

    def live_input() -> None:  # paced so that the input is still arriving at the kills
        for i in range(0, len(records), 100):
            produce(kafka_bootstrap, f"{prefix}session-events", records[i : i + 100])
            if stop.wait(0.25):
                return

    feeder = threading.Thread(target=live_input)
    feeder.start()
    try:
        for k in range(KILLS):
            worker = WorkerProcess(kafka_bootstrap, env, tmp_path / f"worker-{k}.log").start()
            try:
                # killed while it works: once it has published some predictions of its own
                wait(
                    lambda: (metric(port, "stream_predictions_total") or 0) >= 200,
                    120,
                    f"worker {k} publishing predictions",
                )
            finally:
                worker.kill(signal.SIGKILL)
        restarted = time.monotonic()
        with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-last.log"):
            feeder.join()
            watch = PredictionWatch(kafka_bootstrap, f"{prefix}predictions", expected)
            got = watch.read(timeout_s=180)
            # The killed workers may have put every prediction on the topic already, while the rows of
            # their uncommitted batches never reached ClickHouse: the last worker reads those again,
            # and has their rows once it has committed the whole input (delivery.py).
            wait(
                lambda: all_processed(kafka_bootstrap, env["STREAM_WORKER_ID"], f"{prefix}session-events"),
                180,
                "the last worker committing the whole input",
            )
    finally:
        stop.set()
        feeder.join()
    recover_s = (watch.done_at or time.monotonic()) - restarted
    rows = query_worker_clickhouse(env, "SELECT model_name, event_id FROM `publisher`.predictions FINAL")
    lost, dup_topic = topic_counts(got, expected)
    missing_final, dup_final = final_counts(rows, expected)
    line = record(
        FaultRow(f"{KILLS} SIGKILLs of the worker under load", lost + missing_final, dup_topic, dup_final, recover_s)
    )
    assert (lost, missing_final, dup_final) == (0, 0, 0), line
    # The archive (STREAM_ARCHIVE_EVENTS, on by default): every input event once in events FINAL,
    # although the killed workers' uncommitted batches were archived again by their successors.
    archived = query_worker_clickhouse(
        env, "SELECT user_id, event_id, count() AS n FROM `publisher`.events FINAL GROUP BY user_id, event_id"
    )
    assert {(r["user_id"], r["event_id"]) for r in archived} == {(e["user_id"], e["event_id"]) for e in sim_events}
    assert {r["n"] for r in archived} == {1}

"""A worker's log during a broker outage: bounded, one line per cause per interval (stream/worker/logs.py).

The broker is a dedicated embedded one: the test stops it (the session's broker serves the other
tests). Before the rate limit, aiokafka and faust logged about 80 ERROR lines a second here.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.config import load_settings
from stream.kafka.embedded import EmbeddedKafka
from stream.kafka.topics import ensure_topics
from stream.testing import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OUTAGE_S = 15.0


def test_a_broker_outage_logs_a_bounded_number_of_lines(worker_env: dict[str, str], tmp_path: Path) -> None:
    with EmbeddedKafka(workdir=tmp_path / "kafka") as broker:
        ensure_topics(broker.bootstrap, load_settings(topic_prefix=worker_env["STREAM_TOPIC_PREFIX"],
                                                      topic_partitions=int(worker_env["STREAM_TOPIC_PARTITIONS"])))
        log = tmp_path / "worker.log"
        worker = WorkerProcess(broker.bootstrap, worker_env, log).start()
        try:
            worker.wait_for_log("Worker ready")
            broker.stop()
            worker.wait_for_log("Unable connect to node", timeout_s=30)  # the outage is seen
            before = len(log.read_text(errors="replace").splitlines())
            time.sleep(OUTAGE_S)  # the span whose log is measured, not a wait for an event
            during = log.read_text(errors="replace").splitlines()[before:]
        finally:
            worker.kill()
    python_errors = [line for line in during if "[ERROR]" in line]
    print(f"\n{len(during)} lines ({len(python_errors)} Python ERROR lines) in {OUTAGE_S:.0f} s of outage")
    # One line per cause per 10 s: a handful of aiokafka causes, plus librdkafka's own line a second.
    assert len(during) < 100, "\n".join(during[:40])
    assert any("similar lines suppressed in the last" in line for line in python_errors)

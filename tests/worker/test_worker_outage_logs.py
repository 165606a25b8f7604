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
from tests.support.waits import wait

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SUPPRESSED = "similar lines suppressed in the last"


def test_a_broker_outage_logs_a_bounded_number_of_lines(worker_env: dict[str, str], tmp_path: Path) -> None:
    with EmbeddedKafka(workdir=tmp_path / "kafka") as broker:
        ensure_topics(
            broker.bootstrap,
            load_settings(
                topic_prefix=worker_env["STREAM_TOPIC_PREFIX"],
                topic_partitions=int(worker_env["STREAM_TOPIC_PARTITIONS"]),
            ),
        )
        log = tmp_path / "worker.log"
        worker = WorkerProcess(broker.bootstrap, worker_env, log).start()
        try:
            worker.wait_for_log("Worker ready")
            broker.stop()
            worker.wait_for_log("Unable connect to node", timeout_s=30)  # the outage is seen
            before = len(log.read_text(errors="replace").splitlines())
            began = time.monotonic()

            def since() -> list[str]:
                return log.read_text(errors="replace").splitlines()[before:]

            # The span measured: until the rate limit reports what it held back, one interval
            # (stream/worker/logs.py INTERVAL_S) after the first line of a cause.
            wait(
                lambda: any(SUPPRESSED in line and "[ERROR]" in line for line in since()),
                30,
                "an ERROR line reporting suppressed repeats",
            )
            span = time.monotonic() - began
            during = since()
        finally:
            worker.kill()
    python_errors = [line for line in during if "[ERROR]" in line]
    print(f"\n{len(during)} lines ({len(python_errors)} Python ERROR lines) in {span:.0f} s of outage")
    # One line per cause per 10 s: a handful of aiokafka causes, plus librdkafka's own line a second.
    assert len(during) < 100, "\n".join(during[:40])
    assert any(SUPPRESSED in line for line in python_errors)

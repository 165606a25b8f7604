"""A partition assigned to a fresh worker that its consumer never delivers from (issue 14, the start-up race).

Under heavy load a freshly started worker was seen assigned its partition, "Worker ready" logged,
and no record of it reaching the stream for over 80 s while 608 waited; only the stalled-partition
detector reported it. The cause was not pinned down (faust's and aiokafka's per-partition fetch
state; see docs/worker.md, "Start-up stalls"). The worker now re-joins its group when an assigned
partition with records waiting has delivered nothing since its assignment for
``STREAM_START_STALL_S``: the rebalance rebuilds that state.

The stall is injected here the way it looked from outside: the worker's aiokafka consumer is
paused on the input partition at its first assignment (faust never resumes it), through a
``sitecustomize`` module on the worker's ``PYTHONPATH``. The fault needs aiokafka's fetch, so the
worker runs with ``STREAM_KAFKA_FETCH=aiokafka`` (with librdkafka's fetch, aiokafka's pause
changes nothing: its fetcher never fetches).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.testing import WorkerProcess, consume, produce
from tests.worker.conftest import create_topics, expected_predictions, payloads

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

STUCK_FETCH = '''
"""Test fault (tests/worker/test_worker_start_stall.py): pause {topic}[0] in aiokafka at the first assignment."""
from faust.transport.drivers import aiokafka as driver

_assigned = driver.ConsumerRebalanceListener.on_partitions_assigned
_done = []


async def on_partitions_assigned(self, assigned):
    tps = [tp for tp in assigned if tp.topic == {topic!r} and tp.partition == 0]
    if tps and not _done:
        _done.append(True)
        self._thread._ensure_consumer().pause(*tps)
        print("FAULT: paused", tps, flush=True)
    return await _assigned(self, assigned)


driver.ConsumerRebalanceListener.on_partitions_assigned = on_partitions_assigned
'''


def test_a_partition_that_delivers_nothing_after_the_assignment_is_taken_again_by_a_rejoin(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    # the fault pauses aiokafka's fetch (module docstring)
    env = {**worker_env, "STREAM_TOPIC_PARTITIONS": "1", "STREAM_START_STALL_S": "3", "STREAM_KAFKA_FETCH": "aiokafka"}
    topic = f"{env['STREAM_TOPIC_PREFIX']}session-events"
    fault = tmp_path / "fault"
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(STUCK_FETCH.format(topic=topic))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(fault), os.environ.get("PYTHONPATH")) if p)
    events = sim_events[:300]
    want = expected_predictions(events)
    create_topics(kafka_bootstrap, env)
    produce(kafka_bootstrap, topic, payloads(events))
    log = tmp_path / "worker.log"
    with WorkerProcess(kafka_bootstrap, env, log):
        msgs = consume(
            kafka_bootstrap,
            f"{env['STREAM_TOPIC_PREFIX']}predictions",
            until=lambda got: len(got) >= sum(want.values()),
            timeout_s=60,
        )
    text = log.read_text(errors="replace")
    assert "FAULT: paused" in text, "the fault was not injected"
    got = {(orjson.loads(m.value())["model_name"], orjson.loads(m.value())["event_id"]) for m in msgs}
    assert got == set(want), f"{len(set(want) - got)} of {len(want)} predictions missing; see {log}"
    assert "re-joining the group" in text

"""A partition assigned to a fresh worker that its consumer never delivers from (issue 14, the start-up race),
and a table recovery that receives nothing from its changelog.

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
import shutil
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


def _with_fault(env: dict[str, str], topic: str, where: Path) -> dict[str, str]:
    """``env`` with STUCK_FETCH for ``topic`` on the worker's PYTHONPATH."""
    where.mkdir()
    (where / "sitecustomize.py").write_text(STUCK_FETCH.format(topic=topic))
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH")) if p)}


def test_a_partition_that_delivers_nothing_after_the_assignment_is_taken_again_by_a_rejoin(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    # the fault pauses aiokafka's fetch (module docstring)
    env = {**worker_env, "STREAM_TOPIC_PARTITIONS": "1", "STREAM_START_STALL_S": "3", "STREAM_KAFKA_FETCH": "aiokafka"}
    topic = f"{env['STREAM_TOPIC_PREFIX']}session-events"
    env = _with_fault(env, topic, tmp_path / "fault")
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


def test_a_recovery_that_receives_no_changelog_record_is_started_again_by_a_rejoin(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Seen in 2 of 22 runs of a worker leaving mid-stream: its peer's recovery of the partitions
    it took over received no changelog record for minutes (health.RecoveryWatch). Injected the same
    way: the users table's changelog paused in aiokafka at the first assignment of a worker whose
    local state is gone, so that it must restore the table from that changelog."""
    env = {**worker_env, "STREAM_TOPIC_PARTITIONS": "1", "STREAM_START_STALL_S": "3", "STREAM_KAFKA_FETCH": "aiokafka"}
    prefix = env["STREAM_TOPIC_PREFIX"]
    first, then = sim_events[:300], sim_events[300:600]
    create_topics(kafka_bootstrap, env)
    produce(kafka_bootstrap, f"{prefix}session-events", payloads(first))
    want = expected_predictions(first)
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "first.log"):  # fills the changelogs
        consume(kafka_bootstrap, f"{prefix}predictions", until=lambda got: len(got) >= sum(want.values()), timeout_s=90)
    shutil.rmtree(env["STREAM_STATE_DIR"])  # a new host: the tables come back from their changelogs
    produce(kafka_bootstrap, f"{prefix}session-events", payloads(then))
    want = expected_predictions(first + then)
    faulty = _with_fault(env, f"{env['STREAM_WORKER_ID']}-users-changelog", tmp_path / "fault")
    log = tmp_path / "worker.log"

    def complete(got: list[Any]) -> bool:
        return {(v["model_name"], v["event_id"]) for v in (orjson.loads(m.value()) for m in got)} >= set(want)

    with WorkerProcess(kafka_bootstrap, faulty, log):
        msgs = consume(kafka_bootstrap, f"{prefix}predictions", until=complete, timeout_s=90)
    text = log.read_text(errors="replace")
    assert "FAULT: paused" in text, "the fault was not injected"
    assert "the tables' recovery has read no changelog record" in text
    assert complete(msgs), f"predictions missing after the rejoin; see {log}"

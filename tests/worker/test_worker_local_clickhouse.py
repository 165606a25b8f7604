"""Several workers and tools on one host with the embedded ClickHouse, against the real broker.

The embedded ClickHouse is one local server per chdb directory (stream/clickhouse/local_server.py);
before it, each process opened chdb itself and a second one failed with "Cannot lock file
.../status". The waits watch ClickHouse, the topics, the group and the workers' /metrics; none
sleeps a fixed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.clickhouse import local_server
from stream.kafka.embedded import free_port
from stream.testing import WorkerProcess, consume, produce, scrape_metrics, scrape_series
from tests.support.waits import wait as _wait
from tests.worker.conftest import SCORABLE, create_topics, payloads, query_worker_clickhouse

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
N_EVENTS = 1200


@pytest.fixture
def events(sim_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sim_events[:N_EVENTS]


@pytest.fixture
def env(worker_env: dict[str, str]) -> Iterator[dict[str, str]]:
    try:
        yield worker_env
    finally:
        local_server.stop(Path(worker_env["STREAM_CHDB_PATH"]))


def _expected(events: list[dict[str, Any]]) -> tuple[set[tuple[str, str]], set[str]]:
    """(model, event_id) of every prediction and request_id of every decision the events call for."""
    predictions = {(SCORABLE[e["event_type"]], e["event_id"]) for e in events if e["event_type"] in SCORABLE}
    return predictions, {e["request_id"] for e in events if e["event_type"] == "ad_request"}


def _final(env: dict[str, str]) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """Predictions and decisions in ClickHouse FINAL, counted (empty while the tables do not exist)."""
    try:
        preds = query_worker_clickhouse(env, "SELECT model_name, event_id FROM publisher.predictions FINAL")
        decs = query_worker_clickhouse(env, "SELECT request_id FROM publisher.bandit_decisions FINAL")
    except Exception:  # no table yet: the first insert applies the DDL
        return Counter(), Counter()
    return Counter((r["model_name"], r["event_id"]) for r in preds), Counter(r["request_id"] for r in decs)


def _wait_final(env: dict[str, str], events: list[dict[str, Any]], timeout_s: float) -> None:
    """Every expected prediction and decision in ClickHouse FINAL, each once, nothing else."""
    predictions, decisions = _expected(events)

    def complete() -> bool:
        preds, decs = _final(env)
        return len(preds) >= len(predictions) and len(decs) >= len(decisions)

    _wait(complete, timeout_s, "every prediction and decision in ClickHouse FINAL")
    preds, decs = _final(env)
    assert set(preds) == predictions and set(preds.values()) == {1}
    assert set(decs) == decisions and set(decs.values()) == {1}


def _group_members(bootstrap: str, env: dict[str, str]) -> tuple[str, list[set[int]]]:
    """The group's state and, per member, the session-events partitions assigned to it."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    group, topic = env["STREAM_WORKER_ID"], f"{env['STREAM_TOPIC_PREFIX']}session-events"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept while its future runs: it resolves it
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=20)
    except KafkaException:  # no coordinator for the group yet
        return "UNKNOWN", []
    owned = [{tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic} for m in desc.members]
    return str(desc.state).rsplit(".", 1)[-1], [o for o in owned if o]


def _wait_stable(bootstrap: str, env: dict[str, str], members: int, timeout_s: float) -> list[set[int]]:
    got: list[list[set[int]]] = [[]]

    def stable() -> bool:
        state, got[0] = _group_members(bootstrap, env)
        return state == "STABLE" and len(got[0]) == members

    _wait(stable, timeout_s, f"a stable group of {members} workers owning session-events partitions")
    return got[0]


def _produce(bootstrap: str, env: dict[str, str], events: list[dict[str, Any]]) -> None:
    produce(bootstrap, f"{env['STREAM_TOPIC_PREFIX']}session-events", payloads(events))


def _metric(port: int, name: str) -> float:
    try:
        return scrape_metrics(port).get(name, 0.0)
    except OSError:
        return 0.0


def _owned(port: int, env: dict[str, str]) -> set[int]:
    """The session-events partitions a worker exports lag for (the ones it owns; set every 5 s)."""
    topic = f"{env['STREAM_TOPIC_PREFIX']}session-events"
    try:
        return {
            int(labels["partition"])
            for labels, _ in scrape_series(port, "stream_consumer_lag_messages")
            if labels["topic"] == topic
        }
    except OSError:
        return set()


def test_two_workers_on_one_host_share_the_embedded_clickhouse_and_score_each_event_once(
    kafka_bootstrap: str, env: dict[str, str], events: list[dict[str, Any]], tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, env)
    ports = free_port(), free_port()
    with ExitStack() as stack:
        for i, port in enumerate(ports):  # docs/worker.md's recipe: own instance and metrics port, nothing else
            stack.enter_context(
                WorkerProcess(
                    kafka_bootstrap,
                    {**env, "STREAM_WORKER_WEB_PORT": str(port)},
                    tmp_path / f"w{i}.log",
                    instance=str(i),
                )
            )
        _wait_stable(kafka_bootstrap, env, members=2, timeout_s=120)
        _produce(kafka_bootstrap, env, events)
        _wait_final(env, events, timeout_s=120)  # queried while both run
        inserted = [_metric(port, "stream_sink_rows_total") for port in ports]
        assert all(inserted), inserted  # both workers wrote to the one ClickHouse
    predictions, _ = _expected(events)
    topic = consume(kafka_bootstrap, f"{env['STREAM_TOPIC_PREFIX']}predictions", timeout_s=60)
    on_topic = Counter((p["model_name"], p["event_id"]) for p in (orjson.loads(m.value() or b"") for m in topic))
    assert set(on_topic) == predictions and set(on_topic.values()) == {1}  # none lost, none twice


def test_query_while_the_worker_runs_prints_the_count(
    kafka_bootstrap: str, env: dict[str, str], events: list[dict[str, Any]], tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events)
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "w.log") as worker:
        _wait_final(env, events, timeout_s=120)
        proc = subprocess.run(
            [sys.executable, "-m", "stream", "query", "SELECT count() AS n FROM {db}.predictions FINAL"],
            env={**os.environ, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert worker.proc is not None and worker.proc.poll() is None  # still running
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.split() == ["n", str(len(_expected(events)[0]))]


def test_the_local_server_killed_mid_stream_is_restarted_and_nothing_is_lost(
    kafka_bootstrap: str, env: dict[str, str], events: list[dict[str, Any]], tmp_path: Path
) -> None:
    half = len(events) // 2
    path = Path(env["STREAM_CHDB_PATH"])
    create_topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events[:half])
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "w.log") as worker:
        _wait_final(env, events[:half], timeout_s=120)
        first = local_server.read_endpoint(path)
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        _produce(kafka_bootstrap, env, events[half:])
        worker.wait_for_log("ClickHouse insert into predictions failed", timeout_s=60)  # it noticed
        _wait_final(env, events, timeout_s=120)
        second = local_server.read_endpoint(path)
        assert second is not None and second.pid != first.pid
        assert local_server.server_pids(path) == [second.pid]


def _committed(bootstrap: str, env: dict[str, str]) -> list[int]:
    """The group's committed offset of each session-events partition (-1001: none)."""
    from confluent_kafka import Consumer, TopicPartition

    topic = f"{env['STREAM_TOPIC_PREFIX']}session-events"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": env["STREAM_WORKER_ID"]})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    finally:
        consumer.close()
    return [tp.offset for tp in tps]


def test_a_worker_whose_clickhouse_cannot_write_does_not_stall_the_group(
    kafka_bootstrap: str, env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Workers A and C share the embedded ClickHouse; B's ClickHouse refuses every connection.

    C joining makes B give up its unconfirmed batches within STREAM_SETTLE_TIMEOUT_S: the rebalance
    completes and A and C keep processing; once B stops, its partitions' events arrive too.
    The group is established first (A alone commits on every partition), as in production.
    """
    settle_s = 4
    env = {**env, "STREAM_SETTLE_TIMEOUT_S": str(settle_s)}
    warm, first, second = sim_events[:400], sim_events[400:1400], sim_events[1400:2400]
    create_topics(kafka_bootstrap, env)
    ports = {name: free_port() for name in "abc"}
    envs = {name: {**env, "STREAM_WORKER_WEB_PORT": str(port)} for name, port in ports.items()}
    envs["b"]["STREAM_CLICKHOUSE_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with ExitStack() as stack:

        def start(name: str) -> WorkerProcess:
            return stack.enter_context(
                WorkerProcess(kafka_bootstrap, envs[name], tmp_path / f"{name}.log", instance=name)
            )

        start("a")
        _produce(kafka_bootstrap, env, warm)
        _wait_final(env, warm, timeout_s=120)
        _wait(lambda: min(_committed(kafka_bootstrap, env)) >= 0, 30, "A's commits on every partition")

        b = start("b")
        _wait_stable(kafka_bootstrap, env, members=2, timeout_s=120)
        _produce(kafka_bootstrap, env, first)
        b.wait_for_log("ClickHouse insert into predictions failed", timeout_s=90)  # B holds unconfirmed batches

        start("c")
        _wait(lambda: _group_members(kafka_bootstrap, env)[0] != "STABLE", 120, "C's join starting a rebalance")
        t0 = time.monotonic()
        _wait_stable(kafka_bootstrap, env, members=3, timeout_s=settle_s + 30)
        print(f"\nrebalance with a stuck worker: {time.monotonic() - t0:.1f} s (STREAM_SETTLE_TIMEOUT_S={settle_s})")
        b.wait_for_log(f"gave up waiting for batches in flight after {settle_s} s", timeout_s=10)

        # A and C keep progressing while B is stuck: the second events of their partitions arrive
        owned: dict[str, set[int]] = {}

        def assignment_seen() -> bool:
            """A's and C's partitions (their lag gauges) are two members' assignments; B has the third's."""
            state, members = _group_members(kafka_bootstrap, env)
            a, c = _owned(ports["a"], env), _owned(ports["c"], env)
            if state != "STABLE" or len(members) != 3 or a == c or a not in members or c not in members:
                return False
            owned["b"] = next(m for m in members if m not in (a, c))
            return True

        _wait(assignment_seen, 30, "A and C exporting lag for the partitions assigned to them")
        _produce(kafka_bootstrap, env, second)
        partition = {
            orjson.loads(m.value() or b"")["event_id"]: m.partition()
            for m in consume(kafka_bootstrap, f"{env['STREAM_TOPIC_PREFIX']}session-events", timeout_s=60)
        }
        predictions, _ = _expected([e for e in first + second if partition[e["event_id"]] not in owned["b"]])
        _wait(lambda: predictions <= set(_final(env)[0]), 90, "the events of A's and C's partitions in ClickHouse")

        assert b.proc is not None
        b.proc.send_signal(signal.SIGTERM)
        b.proc.wait(settle_s + 40)
        _wait_final(env, warm + first + second, timeout_s=120)  # B's partitions moved to A and C: nothing lost

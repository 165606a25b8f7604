"""The worker with a ClickHouse server (STREAM_CLICKHOUSE_URL), against the real broker: outages.

The server is tests/support/clickhouse_server.py, ClickHouse's HTTP interface in front of the real
engine (chdb) in a subprocess; stopping it refuses connections like a server that is down, and
starting it again on the same port and data directory is the server coming back.

Each test ends with every expected prediction and decision in ClickHouse ``FINAL`` exactly once.
The waits watch the worker's ``/metrics``, its log and ClickHouse itself; none sleeps a fixed time.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.clickhouse import ClickHouse, connect
from stream.config import load_settings
from stream.kafka.embedded import free_port
from stream.testing import WorkerProcess, committed_offsets, consume, produce, scrape_metrics, scrape_series
from stream.topics import ensure_topics
from tests.support.clickhouse_server import ClickHouseServer

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
SCORABLE = {"article_impression": "click", "session_start": "engagement", "session_end": "churn"}
ACTIVE = "stream_sink_backpressure_active"
PAUSES = "stream_sink_backpressure_pauses_total"
N_EVENTS = 1200  # a few seconds of work; enough for every batch of an outage to wait in flight


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    srv = ClickHouseServer(tmp_path / "clickhouse")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def env(worker_env: dict[str, str], server: ClickHouseServer, unique: str) -> dict[str, str]:
    return {**worker_env, "STREAM_CLICKHOUSE_URL": server.url, "STREAM_CLICKHOUSE_DATABASE": f"w_{unique}",
            "STREAM_WORKER_WEB_PORT": str(free_port())}


@pytest.fixture
def events(sim_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sim_events[:N_EVENTS]


def _expected(events: list[dict[str, Any]]) -> tuple[set[tuple[str, str]], set[str]]:
    """(model, event_id) of every prediction and request_id of every decision the events call for."""
    predictions = {(SCORABLE[e["event_type"]], e["event_id"]) for e in events if e["event_type"] in SCORABLE}
    decisions = {e["request_id"] for e in events if e["event_type"] == "ad_request"}
    return predictions, decisions


def _produce(bootstrap: str, env: dict[str, str], events: list[dict[str, Any]]) -> None:
    produce(bootstrap, f"{env['STREAM_TOPIC_PREFIX']}session-events",
            [(e["user_id"].encode(), orjson.dumps(e)) for e in events])


def _topics(bootstrap: str, env: dict[str, str]) -> None:
    ensure_topics(bootstrap, load_settings(topic_prefix=env["STREAM_TOPIC_PREFIX"],
                                           topic_partitions=int(env["STREAM_TOPIC_PARTITIONS"])))


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.2)


def _metric(env: dict[str, str], name: str) -> float | None:
    """A worker metric now; None while the worker does not serve /metrics yet."""
    try:
        return scrape_metrics(int(env["STREAM_WORKER_WEB_PORT"])).get(name)
    except OSError:
        return None


def _store(env: dict[str, str]) -> ClickHouse:
    return connect(load_settings(clickhouse_url=env["STREAM_CLICKHOUSE_URL"],
                                 clickhouse_database=env["STREAM_CLICKHOUSE_DATABASE"]), apply_schema=False)


def _final_counts(ch: ClickHouse) -> tuple[int, int]:
    """Rows in predictions FINAL and bandit_decisions FINAL (0 while the tables do not exist yet)."""
    try:
        p = ch.query_df("SELECT count() AS n FROM {db}.predictions FINAL")["n"].iloc[0]
        d = ch.query_df("SELECT count() AS n FROM {db}.bandit_decisions FINAL")["n"].iloc[0]
    except Exception:  # the worker has not applied the DDL yet
        return 0, 0
    return int(p), int(d)


def _assert_each_row_once(ch: ClickHouse, events: list[dict[str, Any]]) -> None:
    predictions, decisions = _expected(events)
    got = ch.query_df("SELECT model_name, event_id FROM {db}.predictions FINAL")
    copies = Counter(zip(got["model_name"], got["event_id"], strict=True))
    assert set(copies) == predictions  # none lost, none extra
    assert set(copies.values()) == {1}  # each once
    dec = Counter(ch.query_df("SELECT request_id FROM {db}.bandit_decisions FINAL")["request_id"])
    assert set(dec) == decisions and set(dec.values()) == {1}


def _wait_all_inserted(env: dict[str, str], events: list[dict[str, Any]], timeout_s: float) -> None:
    predictions, decisions = _expected(events)
    ch = _store(env)
    try:
        _wait(lambda: _final_counts(ch) == (len(predictions), len(decisions)), timeout_s,
              "every prediction and decision in ClickHouse")
        _assert_each_row_once(ch, events)
    finally:
        ch.close()


def _wait_backpressure(env: dict[str, str], on: bool, timeout_s: float = 60) -> None:
    _wait(lambda: _metric(env, ACTIVE) == (1.0 if on else 0.0), timeout_s,
          f"{ACTIVE} = {int(on)}")


def test_worker_with_the_server_backend_inserts_every_row_once(
        kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]],
        tmp_path: Path) -> None:
    server.start()
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events)
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log"):
        _wait_all_inserted(env, events, timeout_s=90)
        assert _metric(env, PAUSES) == 0  # ClickHouse was up throughout: no backpressure


def _ride_out_the_outage(worker: WorkerProcess, env: dict[str, str], server: ClickHouseServer,
                         events: list[dict[str, Any]]) -> None:
    """While the server is down: the inserts fail and backpressure is on; once it is up, every row arrives."""
    worker.wait_for_log("ClickHouse insert into predictions failed", timeout_s=90)
    _wait_backpressure(env, on=True)
    assert (_metric(env, PAUSES) or 0) >= 1
    server.start()
    _wait_all_inserted(env, events, timeout_s=90)
    _wait_backpressure(env, on=False, timeout_s=10)


def test_server_down_at_start_then_up_the_worker_waits_and_inserts_everything(
        kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]],
        tmp_path: Path) -> None:
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events)
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log") as worker:
        _ride_out_the_outage(worker, env, server, events)


def test_server_down_mid_stream_then_up_the_worker_inserts_everything(
        kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]],
        tmp_path: Path) -> None:
    half = len(events) // 2
    server.start()
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events[:half])
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log") as worker:
        _wait_all_inserted(env, events[:half], timeout_s=90)
        assert _metric(env, ACTIVE) == 0 and _metric(env, PAUSES) == 0
        server.stop()
        _produce(kafka_bootstrap, env, events[half:])
        _ride_out_the_outage(worker, env, server, events)
        assert _metric(env, PAUSES) == 1  # one outage, one pause


def test_sigterm_during_an_outage_exits_within_the_settle_timeout_and_a_restart_delivers_everything(
        kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]],
        tmp_path: Path) -> None:
    settle_s = 5
    env = {**env, "STREAM_SETTLE_TIMEOUT_S": str(settle_s)}
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events)
    log_path = tmp_path / "worker-1.log"
    worker = WorkerProcess(kafka_bootstrap, env, log_path).start()
    try:
        worker.wait_for_log("ClickHouse insert into predictions failed", timeout_s=90)
        assert worker.proc is not None
        t0 = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(settle_s + 40)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM did not end the worker within {settle_s + 40} s")
        took = time.monotonic() - t0
    finally:
        worker.kill(signal.SIGKILL)
    print(f"\nSIGTERM to exit during a ClickHouse outage: {took:.1f} s (STREAM_SETTLE_TIMEOUT_S={settle_s})")
    assert took < settle_s + 10
    assert f"gave up waiting for batches in flight after {settle_s} s" in log_path.read_text()

    server.start()
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-2.log"):
        _wait_all_inserted(env, events, timeout_s=90)


def test_a_new_group_commits_nothing_while_clickhouse_lacks_its_rows_and_a_sigkill_loses_none(
        kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]],
        tmp_path: Path) -> None:
    """Before the worker's own commit rule, faust committed the head of a new group's partitions
    (offset 53 within 2 s) while ClickHouse had none of their rows: after a SIGKILL they were lost."""
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events)
    port = int(env["STREAM_WORKER_WEB_PORT"])
    worker = WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-1.log").start()
    try:
        # Kafka confirms outputs while ClickHouse is down (until backpressure pauses the input) ...
        on_topic = consume(kafka_bootstrap, f"{env['STREAM_TOPIC_PREFIX']}predictions",
                           until=lambda got: len(got) > 0, timeout_s=120)
        assert on_topic

        # ... and batches have waited for ClickHouse over 3 of faust's commit intervals (1 s).
        def waited() -> bool:
            try:
                return max((v for _, v in scrape_series(port, "stream_unconfirmed_batch_age_seconds")),
                           default=0.0) > 3.0
            except OSError:
                return False
        _wait(waited, 60, "a batch waiting 3 s for ClickHouse")
        committed = committed_offsets(kafka_bootstrap, env["STREAM_WORKER_ID"],
                                      f"{env['STREAM_TOPIC_PREFIX']}session-events")
        assert set(committed.values()) <= {None, 0}, f"committed while ClickHouse has no row: {committed}"
    finally:
        worker.kill(signal.SIGKILL)
    server.start()
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-2.log"):
        _wait_all_inserted(env, events, timeout_s=120)

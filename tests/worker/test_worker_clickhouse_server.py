"""The worker with a ClickHouse server (STREAM_CLICKHOUSE_URL), against the real broker: outages.

The server is tests/support/clickhouse_server.py, ClickHouse's HTTP interface in front of the real
engine (chdb) in a subprocess; stopping it refuses connections like a server that is down, and
starting it again on the same port and data directory is the server coming back.

Each test ends with every expected prediction and decision in ClickHouse ``FINAL`` exactly once.
The waits watch the worker's ``/metrics`` and ``/readyz``, its log and ClickHouse itself; none
sleeps a fixed time. The outages are part of the fault suite (marker ``fault``, tests/faults/):
each reports its row of the suite's table.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.clickhouse import ClickHouse, connect
from stream.config import load_settings
from stream.kafka.embedded import free_port
from stream.kafka.topics import ensure_topics
from stream.testing import WorkerProcess, committed_offsets, consume, produce, scrape_metrics, scrape_series
from tests.faults.support import FaultRow, PredictionWatch, readyz, record, topic_counts, wait_owners
from tests.support.clickhouse_server import ClickHouseServer
from tests.support.waits import wait as _wait

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.fault]
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
    return {
        **worker_env,
        "STREAM_CLICKHOUSE_URL": server.url,
        "STREAM_CLICKHOUSE_DATABASE": f"w_{unique}",
        "STREAM_WORKER_WEB_PORT": str(free_port()),
    }


@pytest.fixture
def events(sim_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sim_events[:N_EVENTS]


def _expected(events: list[dict[str, Any]]) -> tuple[set[tuple[str, str]], set[str]]:
    """(model, event_id) of every prediction and request_id of every decision the events call for."""
    predictions = {(SCORABLE[e["event_type"]], e["event_id"]) for e in events if e["event_type"] in SCORABLE}
    decisions = {e["request_id"] for e in events if e["event_type"] == "ad_request"}
    return predictions, decisions


def _produce(bootstrap: str, env: dict[str, str], events: list[dict[str, Any]]) -> None:
    produce(
        bootstrap,
        f"{env['STREAM_TOPIC_PREFIX']}session-events",
        [(e["user_id"].encode(), orjson.dumps(e)) for e in events],
    )


def _topics(bootstrap: str, env: dict[str, str]) -> None:
    ensure_topics(
        bootstrap,
        load_settings(topic_prefix=env["STREAM_TOPIC_PREFIX"], topic_partitions=int(env["STREAM_TOPIC_PARTITIONS"])),
    )


def _metric(env: dict[str, str], name: str) -> float | None:
    """A worker metric now; None while the worker does not serve /metrics yet."""
    try:
        return scrape_metrics(int(env["STREAM_WORKER_WEB_PORT"])).get(name)
    except OSError:
        return None


def _store(env: dict[str, str]) -> ClickHouse:
    return connect(
        load_settings(
            clickhouse_url=env["STREAM_CLICKHOUSE_URL"], clickhouse_database=env["STREAM_CLICKHOUSE_DATABASE"]
        ),
        apply_schema=False,
    )


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


def _wait_all_inserted(
    env: dict[str, str], events: list[dict[str, Any]], timeout_s: float, report: tuple[str, str, float] | None = None
) -> None:
    """Wait until FINAL has every row; then check each is there once.

    ``report``: (fault name, Kafka bootstrap, when the fault ended): the fault suite's row is
    recorded first, with the predictions topic's duplicates and the seconds since the fault ended.
    """
    predictions, decisions = _expected(events)
    ch = _store(env)
    try:
        _wait(
            lambda: _final_counts(ch) >= (len(predictions), len(decisions)),
            timeout_s,
            "every prediction and decision in ClickHouse",
        )
        if report is not None:
            name, bootstrap, ended = report
            recover_s = time.monotonic() - ended
            got = PredictionWatch(bootstrap, f"{env['STREAM_TOPIC_PREFIX']}predictions", predictions).read(60)
            lost, dup_topic = topic_counts(got, predictions)
            final = Counter(
                zip(
                    *ch.query_df("SELECT model_name, event_id FROM {db}.predictions FINAL").to_dict("list").values(),
                    strict=True,
                )
            )
            record(
                FaultRow(
                    name, lost + len(predictions - set(final)), dup_topic, sum(n - 1 for n in final.values()), recover_s
                )
            )
        _assert_each_row_once(ch, events)
    finally:
        ch.close()


def _wait_backpressure(env: dict[str, str], on: bool, timeout_s: float = 60) -> None:
    _wait(lambda: _metric(env, ACTIVE) == (1.0 if on else 0.0), timeout_s, f"{ACTIVE} = {int(on)}")


def test_worker_with_the_server_backend_inserts_every_row_once(
    kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    server.start()
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events)
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log"):
        _wait_all_inserted(env, events, timeout_s=90)
        assert _metric(env, PAUSES) == 0  # ClickHouse was up throughout: no backpressure


def _ride_out_the_outage(
    worker: WorkerProcess,
    env: dict[str, str],
    server: ClickHouseServer,
    events: list[dict[str, Any]],
    report: tuple[str, str] | None = None,
) -> None:
    """While the server is down: the inserts fail and backpressure is on; once it is up, every row arrives.

    ``report``: (fault name, Kafka bootstrap) to record the fault suite's row.
    """
    worker.wait_for_log("ClickHouse insert into predictions failed", timeout_s=90)
    _wait_backpressure(env, on=True)
    assert (_metric(env, PAUSES) or 0) >= 1
    server.start()
    _wait_all_inserted(env, events, timeout_s=90, report=(*report, time.monotonic()) if report else None)
    _wait_backpressure(env, on=False, timeout_s=10)


def test_server_down_at_start_then_up_the_worker_waits_and_inserts_everything(
    kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events)
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log") as worker:
        _ride_out_the_outage(worker, env, server, events, report=("ClickHouse down at start", kafka_bootstrap))


def test_server_down_mid_stream_then_up_the_worker_inserts_everything(
    kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Also /readyz: 503 naming the held partitions once the outage outlasts STREAM_STALL_WARNING_S, then 200."""
    env = {**env, "STREAM_STALL_WARNING_S": "3"}
    port = int(env["STREAM_WORKER_WEB_PORT"])
    half = len(events) // 2
    server.start()
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events[:half])
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log") as worker:
        _wait_all_inserted(env, events[:half], timeout_s=90)
        assert _metric(env, ACTIVE) == 0 and _metric(env, PAUSES) == 0
        _wait(lambda: readyz(port)[0] == 200, 30, "/readyz 200 while ClickHouse is up")
        server.stop()
        _produce(kafka_bootstrap, env, events[half:])
        _wait(lambda: readyz(port)[0] == 503, 60, "/readyz 503 during the outage")
        body = readyz(port)[1]
        assert "outputs unconfirmed" in body["reasons"], body
        held = {u["partition"] for u in body["unconfirmed"]}
        assert held and all(u["oldest_batch_age_s"] >= 3 for u in body["unconfirmed"]), body  # rounded to 0.1 s
        _ride_out_the_outage(worker, env, server, events, report=("ClickHouse down mid-stream", kafka_bootstrap))
        assert _metric(env, PAUSES) == 1  # one outage, one pause
        _wait(lambda: readyz(port)[0] == 200, 30, "/readyz 200 once ClickHouse is back")


def test_sigterm_during_an_outage_exits_within_the_settle_timeout_and_a_restart_delivers_everything(
    kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]], tmp_path: Path
) -> None:
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
        _wait_all_inserted(
            env,
            events,
            timeout_s=90,
            report=("SIGTERM during a ClickHouse outage, restart", kafka_bootstrap, time.monotonic()),
        )


def test_a_new_group_commits_nothing_while_clickhouse_lacks_its_rows_and_a_sigkill_loses_none(
    kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Before the worker's own commit rule, faust committed the head of a new group's partitions
    (offset 53 within 2 s) while ClickHouse had none of their rows: after a SIGKILL they were lost."""
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events)
    port = int(env["STREAM_WORKER_WEB_PORT"])
    worker = WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-1.log").start()
    try:
        # Kafka confirms outputs while ClickHouse is down (until backpressure pauses the input) ...
        on_topic = consume(
            kafka_bootstrap, f"{env['STREAM_TOPIC_PREFIX']}predictions", until=lambda got: len(got) > 0, timeout_s=120
        )
        assert on_topic

        # ... and batches have waited for ClickHouse over 3 of faust's commit intervals (1 s).
        def waited() -> bool:
            try:
                return (
                    max((v for _, v in scrape_series(port, "stream_unconfirmed_batch_age_seconds")), default=0.0) > 3.0
                )
            except OSError:
                return False

        _wait(waited, 60, "a batch waiting 3 s for ClickHouse")
        committed = committed_offsets(
            kafka_bootstrap, env["STREAM_WORKER_ID"], f"{env['STREAM_TOPIC_PREFIX']}session-events"
        )
        assert set(committed.values()) <= {None, 0}, f"committed while ClickHouse has no row: {committed}"
    finally:
        worker.kill(signal.SIGKILL)
    server.start()
    back = time.monotonic()
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker-2.log"):
        _wait_all_inserted(
            env, events, timeout_s=120, report=("new group, ClickHouse down, SIGKILL, restart", kafka_bootstrap, back)
        )


def test_rebalance_during_an_outage_second_worker_joins_and_leaves_then_every_row_once(
    kafka_bootstrap: str, env: dict[str, str], server: ClickHouseServer, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Two rebalances while the server is down: neither stalls the group, and nothing is lost or doubled."""
    env = {**env, "STREAM_SETTLE_TIMEOUT_S": "5", "STREAM_WORKER_SESSION_TIMEOUT_S": "6"}
    env_b = {**env, "STREAM_WORKER_WEB_PORT": str(free_port())}
    group, topic = env["STREAM_WORKER_ID"], f"{env['STREAM_TOPIC_PREFIX']}session-events"
    half = len(events) // 2
    server.start()
    _topics(kafka_bootstrap, env)
    _produce(kafka_bootstrap, env, events[:half])
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "a.log") as a:
        _wait_all_inserted(env, events[:half], timeout_s=90)
        server.stop()
        _produce(kafka_bootstrap, env, events[half:])
        a.wait_for_log("ClickHouse insert into predictions failed", timeout_s=90)
        _wait_backpressure(env, on=True)
        with WorkerProcess(kafka_bootstrap, env_b, tmp_path / "b.log", instance="1") as b:
            wait_owners(kafka_bootstrap, group, topic, 2)  # the join completes although A's batches wait
            b.wait_for_log("ClickHouse insert into predictions failed", timeout_s=90)
        wait_owners(kafka_bootstrap, group, topic, 1)  # B left (SIGTERM) during the outage too
        server.start()
        _wait_all_inserted(
            env,
            events,
            timeout_s=120,
            report=("rebalance (join, leave) during a ClickHouse outage", kafka_bootstrap, time.monotonic()),
        )

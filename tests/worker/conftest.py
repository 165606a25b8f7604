"""Fixtures for worker integration tests: a small simulated history, models trained on it,
and per-test isolated settings (topic prefix, consumer group, state and chdb directories)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator import SimConfig, generate
from stream.clickhouse import DDL_DIR, ClickHouse
from stream.config import load_settings
from stream.kafka.embedded import EmbeddedKafka
from stream.kafka.topics import ensure_topics
from stream.testing import WorkerProcess
from tests.support.models import train_and_register
from tests.support.waits import wait

ROOT = Path(__file__).resolve().parents[2]
#: the model each scorable event type triggers among those of the fixture registry (``models_dir``:
#: churn, click, engagement); session_end also triggers conversion and segment, which that registry
#: lacks (a worker scores the models it has): tests/worker/test_worker_segments.py registers them
SCORABLE = {"article_impression": "click", "session_start": "engagement", "session_end": "churn"}


def create_topics(bootstrap: str, env: dict[str, str]) -> None:
    """The product's topics for a test's worker settings (prefix and partitions)."""
    ensure_topics(
        bootstrap,
        load_settings(topic_prefix=env["STREAM_TOPIC_PREFIX"], topic_partitions=int(env["STREAM_TOPIC_PARTITIONS"])),
    )


def payloads(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, value) records of events, keyed by user as producers do."""
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


def expected_predictions(events: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(model, event_id) of every prediction the events should get, once each."""
    return Counter((SCORABLE[e["event_type"]], e["event_id"]) for e in events if e["event_type"] in SCORABLE)


@pytest.fixture(scope="session")
def sim_events() -> list[dict[str, Any]]:
    """~5.6k events: 150 users over 4 days, in delivery (= event-time) order."""
    return list(generate(SimConfig(n_users=150, days=4, seed=11)).iter_events())


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, sim_events: list[dict[str, Any]]) -> Path:
    d = tmp_path_factory.mktemp("models")
    train_and_register(d, sim_events, seed=3)
    return d


@pytest.fixture
def worker_env(tmp_path: Path, unique: str, models_dir: Path) -> dict[str, str]:
    return {
        "STREAM_TOPIC_PREFIX": f"{unique}.",
        "STREAM_WORKER_ID": f"worker-{unique}",
        "STREAM_STATE_DIR": str(tmp_path / "state"),
        "STREAM_CHDB_PATH": str(tmp_path / "chdb"),
        "STREAM_MODELS_DIR": str(models_dir),
        "STREAM_WORKER_WEB_PORT": "0",
        "STREAM_MODEL_RELOAD_S": "1",
        "STREAM_TOPIC_PARTITIONS": "4",
    }


@contextmanager
def worker_clickhouse(env: dict[str, str]) -> Iterator[ClickHouse]:
    """The worker's embedded ClickHouse (its directory's local server), also while it runs, once
    every schema table exists: the worker creates them when its sink first connects, which may be
    after the records a test waited on reached Kafka."""
    from stream.clickhouse import connect

    settings = load_settings(
        chdb_path=Path(env["STREAM_CHDB_PATH"]), clickhouse_database=env.get("STREAM_CLICKHOUSE_DATABASE", "publisher")
    )
    ch = connect(settings, apply_schema=False)
    try:
        wait(lambda: _tables(ch) >= _SCHEMA_TABLES, 60, f"the worker's tables {sorted(_SCHEMA_TABLES)}")
        yield ch
    finally:
        ch.close()


def query_worker_clickhouse(env: dict[str, str], sql: str) -> list[dict[str, Any]]:
    """Rows of ``sql`` on the worker's embedded ClickHouse (see :func:`worker_clickhouse`)."""
    with worker_clickhouse(env) as ch:
        return list(json.loads(ch.query_df(sql).to_json(orient="records")))


#: every table the schema files create (the worker applies them all when its sink connects)
_SCHEMA_TABLES = frozenset(
    m.group(1)
    for f in DDL_DIR.glob("*.sql")
    for m in re.finditer(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)", f.read_text())
)


def _tables(ch: ClickHouse) -> set[str]:
    df = ch.query_df("SELECT name FROM system.tables WHERE database = {d:String}", {"d": ch.database})
    return set(df["name"]) if "name" in df.columns else set()  # no table yet: a frame without columns


@contextmanager
def worker_in_an_outage(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[WorkerProcess, Path]]:
    """A worker (and its log) on a dedicated embedded broker: ready, then the broker stopped and the outage seen."""
    with EmbeddedKafka(workdir=tmp_path / "kafka") as broker:
        ensure_topics(
            broker.bootstrap,
            load_settings(
                topic_prefix=env["STREAM_TOPIC_PREFIX"], topic_partitions=int(env["STREAM_TOPIC_PARTITIONS"])
            ),
        )
        log = tmp_path / "worker.log"
        worker = WorkerProcess(broker.bootstrap, env, log).start()
        try:
            worker.wait_for_log("Worker ready")
            broker.stop()
            worker.wait_for_log("Unable connect to node", timeout_s=30)  # the outage is seen
            yield worker, log
        finally:
            worker.kill()

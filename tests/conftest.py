"""Shared fixtures: one real Kafka broker per test session, one chdb directory per session.

The whole session shares one embedded ClickHouse directory (set through STREAM_CHDB_PATH before
anything reads settings), served by its local server (stream/clickhouse/local_server.py), and
tests isolate themselves by database. Local servers exit 5 s after their last client here, and
any still running when the session ends (the session's, those of the tests' worker directories)
are stopped then.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="publisher-stream-tests-"))
os.environ.setdefault("STREAM_CHDB_PATH", str(_SESSION_DIR / "chdb"))
os.environ.setdefault("STREAM_DATA_DIR", str(_SESSION_DIR / "var"))
os.environ.setdefault("STREAM_MODELS_DIR", str(_SESSION_DIR / "var" / "models"))
os.environ.setdefault("STREAM_STATE_DIR", str(_SESSION_DIR / "var" / "state"))
os.environ.setdefault("STREAM_REPORTS_DIR", str(_SESSION_DIR / "var" / "reports"))
os.environ.setdefault("STREAM_CHDB_SERVER_IDLE_S", "5")


@pytest.fixture(scope="session", autouse=True)
def _no_clickhouse_server_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Stop the embedded ClickHouse servers the session started (they run detached)."""
    from stream.clickhouse.local_server import servers_under, stop

    yield
    for root in (_SESSION_DIR, tmp_path_factory.getbasetemp()):
        for _, path in servers_under(root):
            stop(path)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[object]:
    """The embedded broker object (for tests that need its pid or logs)."""
    from stream.kafka.embedded import EmbeddedKafka

    broker = EmbeddedKafka(workdir=_SESSION_DIR / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: object) -> str:
    """Bootstrap address of the session's real Kafka broker."""
    return kafka_broker.bootstrap  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and database names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def ch() -> Iterator[object]:
    """A ClickHouse (embedded chdb) with the product's DDL applied, in a database of its own."""
    from tests.support.chdb import fresh_database

    with fresh_database() as store:
        yield store


@pytest.fixture(scope="module")
def ch_module() -> Iterator[object]:
    """:func:`ch` shared by the tests of one module (for data that is costly to load)."""
    from tests.support.chdb import fresh_database

    with fresh_database() as store:
        yield store

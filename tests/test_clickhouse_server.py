"""The server backend (clickhouse-connect over HTTP) against a ClickHouse server.

The server is tests/support/clickhouse_server.py: ClickHouse's HTTP interface in front of the real
engine (chdb), so the DDL, Native inserts, ``ReplacingMergeTree`` and ``FINAL`` below are
ClickHouse's own; only the network component is a stand-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from stream.clickhouse import (
    ClickHouse,
    connect,
    events_to_frame,
    frame_to_events,
    insert_by_day,
    insert_events,
    insert_records,
)
from stream.clickhouse.server_backend import ServerClickHouse
from stream.config import load_settings
from tests.support.archive import assert_same_rows, edge_events, random_events, stored_events
from tests.support.clickhouse_server import ClickHouseServer

T0 = 1_736_000_000_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    with ClickHouseServer(tmp_path / "clickhouse") as srv:
        yield srv


def _connect(server: ClickHouseServer, unique: str) -> ClickHouse:
    return connect(load_settings(clickhouse_url=server.url, clickhouse_database=f"t_{unique}"))


def _prediction(i: int, predicted_at: int, **extra: Any) -> dict[str, Any]:
    return {
        "prediction_id": f"p{i}",
        "model_name": ("churn", "click", "engagement")[i % 3],
        "model_version": "3",
        "event_id": f"e{i}",
        "user_id": f"u{i % 7}",
        "session_id": None if i % 4 == 0 else f"s{i}",
        "article_id": f"a{i}" if i % 3 == 1 else None,
        "event_time": T0 + i,
        "score": i / 100,
        "predicted_at": predicted_at,
        "feature_version": "f1",
        "schema_version": 1,
        **extra,
    }


def _decision(i: int, decided_at: int) -> dict[str, Any]:
    return {
        "decision_id": f"d{i}",
        "request_id": f"r{i}",
        "event_id": None if i % 2 else f"e{i}",
        "user_id": f"u{i % 7}",
        "context": "mobile",
        "placement": ("top_banner", "sidebar")[i % 2],
        "propensity": 0.25,
        "policy": "thompson",
        "event_time": T0 + i,
        "decided_at": decided_at,
        "schema_version": 1,
        "arm_means": {"top_banner": 0.1},
    }


def test_connect_applies_the_ddl_and_inserts_come_back_final_exact(server: ClickHouseServer, unique: str) -> None:
    ch = _connect(server, unique)
    try:
        assert isinstance(ch, ServerClickHouse)
        tables = ch.query_df(
            "SELECT name FROM system.tables WHERE database = {d:String} ORDER BY name", params={"d": ch.database}
        )["name"].tolist()
        assert {"events", "predictions", "bandit_decisions"} <= set(tables)

        # The product's insert path: DESCRIBE, then a Native insert (LowCardinality, Nullable, DateTime64).
        assert insert_records(ch, "predictions", [_prediction(i, T0 + 1000) for i in range(30)]) == 30
        # A replay: the same prediction ids later (ReplacingMergeTree keeps the later row), and new ones.
        replay = [_prediction(i, T0 + 2000, score=0.99) for i in range(20, 30)] + [
            _prediction(i, T0 + 2000) for i in range(30, 40)
        ]
        assert insert_records(ch, "predictions", replay) == 20
        assert insert_records(ch, "bandit_decisions", [_decision(i, T0 + 1000) for i in range(12)]) == 12
        assert insert_records(ch, "bandit_decisions", [_decision(i, T0 + 2000) for i in range(6)]) == 6

        raw = ch.query_df("SELECT count() AS n FROM {db}.predictions")["n"].iloc[0]
        final = ch.query_df(
            "SELECT prediction_id, score, session_id, article_id, model_name, "
            "toUnixTimestamp64Milli(event_time) AS t FROM {db}.predictions FINAL"
        )
        assert raw == 50
        assert len(final) == 40
        assert sorted(final["prediction_id"]) == sorted(f"p{i}" for i in range(40))
        by_id = final.set_index("prediction_id")
        assert by_id.loc["p25", "score"] == 0.99 and by_id.loc["p5", "score"] == 0.05
        assert by_id.loc["p4", "session_id"] is pd.NA and by_id.loc["p5", "session_id"] == "s5"
        assert by_id.loc["p1", "article_id"] == "a1" and by_id.loc["p0", "article_id"] is pd.NA
        assert by_id.loc["p7", "model_name"] == "click" and by_id.loc["p7", "t"] == T0 + 7
        decisions = ch.query_arrow(
            "SELECT count() AS n, uniqExact(decision_id) AS ids, "
            "countIf(event_id IS NULL) AS no_event FROM {db}.bandit_decisions FINAL"
        )
        assert decisions.to_pylist() == [{"n": 12, "ids": 12, "no_event": 6}]

        # events: the widest Nullable table, through the product's own flattening
        events = [
            {
                "schema_version": 1,
                "event_id": f"e{i}",
                "event_type": "article_impression",
                "user_id": "u1",
                "session_id": "s1",
                "event_time": T0 + i,
                "article_id": f"a{i}",
                "position": i,
                "device": {"type": "mobile"},
            }
            for i in range(5)
        ]
        assert insert_events(ch, events) == 5
        back = frame_to_events(ch.query_df("SELECT * FROM {db}.events ORDER BY event_id"))
        assert back == events
    finally:
        ch.command("DROP DATABASE IF EXISTS {db}")
        ch.close()


def test_errors_come_back_with_clickhouses_code_and_a_restart_keeps_the_data(
    server: ClickHouseServer, unique: str
) -> None:
    ch = _connect(server, unique)
    insert_records(ch, "predictions", [_prediction(i, T0) for i in range(3)])
    with pytest.raises(Exception, match=r"code: 60.*UNKNOWN_TABLE"):
        ch.query_df("SELECT * FROM {db}.no_such_table")
    ch.close()

    server.stop()
    with pytest.raises(Exception, match="STREAM_CLICKHOUSE_URL"):
        _connect(server, unique)  # refused while the server is down
    server.start()
    ch = _connect(server, unique)
    try:
        assert ch.query_df("SELECT count() AS n FROM {db}.predictions FINAL")["n"].iloc[0] == 3
    finally:
        ch.close()


def test_an_insert_of_many_blocks_arrives_whole(server: ClickHouseServer, unique: str) -> None:
    """clickhouse-connect sends a large Native insert as several lz4 frames; each one's rows must arrive."""
    ch = _connect(server, unique)
    try:
        events = [
            {
                "schema_version": 1,
                "event_id": f"e{i}",
                "event_type": "page_view",
                "user_id": f"u{i % 97}",
                "session_id": "s1",
                "event_time": T0 + i,
            }
            for i in range(40_000)
        ]
        assert insert_by_day(ch, "events", events_to_frame(events)) == 40_000
        got = ch.query_df("SELECT count() AS n, uniqExact(event_id) AS ids FROM {db}.events")
        assert (int(got["n"].iloc[0]), int(got["ids"].iloc[0])) == (40_000, 40_000)
    finally:
        ch.command("DROP DATABASE IF EXISTS {db}")
        ch.close()


def test_archived_events_as_compressed_json_are_the_rows_of_the_frame_insert(
    server: ClickHouseServer, unique: str
) -> None:
    """To a server, insert_events sends lz4-compressed JSON that the server flattens with input(): the
    rows equal those of a Native insert of events_to_frame, column by column, and a re-archive adds none."""
    events = edge_events() + random_events(600, seed=8, days=150)
    json_ch, frame_ch = _connect(server, unique), _connect(server, unique + "_frame")
    try:
        assert insert_events(json_ch, events) == len(events)
        assert insert_by_day(frame_ch, "events", events_to_frame(events)) == len(events)
        assert_same_rows(stored_events(json_ch), stored_events(frame_ch))
        assert insert_events(json_ch, events[:100]) == 100  # archived again after a crash
        final = json_ch.query_df("SELECT count() AS n, uniqExact(event_id) AS ids FROM {db}.events FINAL")
        assert (int(final["n"].iloc[0]), int(final["ids"].iloc[0])) == (len(events), len(events))
    finally:
        for ch in (json_ch, frame_ch):
            ch.command("DROP DATABASE IF EXISTS {db}")
            ch.close()

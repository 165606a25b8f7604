"""chdb is a real ClickHouse: DDL is idempotent, batches go in and come back, ids collapse to the right row."""

from __future__ import annotations

import datetime as dt
import logging

import orjson
import pandas as pd
import pytest

from stream.clickhouse import (
    apply_ddl,
    events_to_frame,
    frame_to_events,
    insert_by_day,
    insert_events,
    insert_records,
    warn_old_engines,
)
from stream.events.schema import parse_event
from tests.support.archive import assert_same_rows, edge_events, random_events, stored_events
from tests.support.chdb import fresh_database


def _event(i: int, **extra) -> dict:
    ev = {
        "schema_version": 1,
        "event_id": f"e{i}",
        "event_type": "article_impression",
        "user_id": f"u{i % 3}",
        "session_id": f"s{i % 3}",
        "event_time": 1_700_000_000_000 + i * 1000,
        "article_id": f"a{i}",
        "position": 1 + i % 5,
        "device": {"type": "mobile", "os": "ios"},
        "geo": {"country": "DE", "city": "Berlin", "timezone": "Europe/Berlin"},
    }
    ev.update(extra)
    return ev


def test_ddl_twice_then_insert_and_query_back(ch) -> None:
    assert apply_ddl(ch) == apply_ddl(ch)  # second run is a no-op, not an error
    events = [_event(i) for i in range(50)] + [
        _event(99, event_type="subscription", revenue=9.99, article_id=None, position=None)
    ]
    events[-1] = {k: v for k, v in events[-1].items() if v is not None}
    assert insert_events(ch, events) == 51
    df = ch.query_df("SELECT * FROM {db}.events ORDER BY event_id")
    assert len(df) == 51
    back = {e["event_id"]: e for e in frame_to_events(df)}
    for ev in events:
        assert back[ev["event_id"]] == ev
    per_user = ch.query_df("SELECT user_id, count() AS n FROM {db}.events GROUP BY user_id ORDER BY user_id")
    assert per_user["n"].tolist() == [18, 17, 16]


def test_events_table_is_partitioned_by_day(ch) -> None:
    day = 86_400_000
    insert_events(ch, [_event(i, event_time=1_700_000_000_000 + (i % 4) * day) for i in range(8)])
    parts = ch.query_df(
        "SELECT DISTINCT partition FROM system.parts WHERE database = {d:String} AND table = 'events' AND active",
        params={"d": ch.database},
    )
    assert len(parts) == 4


def test_predictions_collapse_duplicate_prediction_id(ch) -> None:
    base = {
        "model_name": "churn",
        "model_version": "3",
        "event_id": "e1",
        "user_id": "u1",
        "session_id": "s1",
        "article_id": None,
        "event_time": 1_700_000_000_000,
        "feature_version": "f1",
    }
    insert_records(ch, "predictions", [dict(base, prediction_id="p1", score=0.2, predicted_at=1_700_000_001_000)])
    # a replay produces the same prediction id again (later), plus one new prediction
    insert_records(
        ch,
        "predictions",
        [
            dict(base, prediction_id="p1", score=0.2, predicted_at=1_700_000_009_000),
            dict(base, prediction_id="p2", score=0.7, predicted_at=1_700_000_009_000),
        ],
    )
    raw = ch.query_df("SELECT count() AS n FROM {db}.predictions")["n"].iloc[0]
    final = ch.query_df("SELECT prediction_id, score FROM {db}.predictions FINAL ORDER BY prediction_id")
    assert raw == 3
    assert final["prediction_id"].tolist() == ["p1", "p2"]
    assert final["score"].tolist() == [0.2, 0.7]


def test_query_arrow_returns_arrow(ch) -> None:
    insert_events(ch, [_event(i) for i in range(5)])
    table = ch.query_arrow("SELECT event_id, position FROM {db}.events ORDER BY event_id")
    assert table.num_rows == 5
    assert table.column("event_id").to_pylist() == ["e0", "e1", "e2", "e3", "e4"]
    assert isinstance(table.to_pandas(), pd.DataFrame)


_PREDICTION = {
    "prediction_id": "p1",
    "model_name": "engagement",
    "model_version": "3",
    "event_id": "e1",
    "user_id": "u1",
    "session_id": "s1",
    "article_id": None,
    "event_time": 1_700_000_000_000,
    "feature_version": "f1",
}
EXACT = dict(_PREDICTION, score=0.257, predicted_at=1_700_000_001_000)  # no "replayed": as published
REPLAYED = dict(_PREDICTION, score=1.141, predicted_at=1_700_000_009_000, replayed=True)


def _final_scores(ch) -> list[float]:
    return ch.query_df("SELECT score FROM {db}.predictions FINAL")["score"].tolist()


@pytest.mark.parametrize("order", ["exact_first", "replayed_first", "one_insert"])
@pytest.mark.parametrize("merged", [False, True])
def test_final_keeps_the_exact_prediction_over_a_later_replayed_one(ch, order: str, merged: bool) -> None:
    """After a crash the same prediction_id comes again, scored from a state that already held its
    event: FINAL (and a merge) keep the first, exact score whatever the insert order."""
    if order == "one_insert":  # one batch mixing records with and without the field
        insert_records(ch, "predictions", [REPLAYED, EXACT])
    else:
        for rec in [EXACT, REPLAYED] if order == "exact_first" else [REPLAYED, EXACT]:
            insert_records(ch, "predictions", [rec])
    if merged:
        ch.command("OPTIMIZE TABLE {db}.predictions FINAL")
    final = ch.query_df("SELECT score, replayed FROM {db}.predictions FINAL")
    assert final.to_dict("records") == [{"score": 0.257, "replayed": 0}]
    stored = ch.query_df("SELECT replayed FROM {db}.predictions ORDER BY replayed")["replayed"].tolist()
    assert stored == ([0, 1] if order != "one_insert" and not merged else [0])  # one insert is merged at once


def test_final_keeps_the_latest_of_rows_of_one_kind(ch) -> None:
    insert_records(ch, "predictions", [dict(REPLAYED, score=0.9, predicted_at=1_700_000_020_000)])
    insert_records(ch, "predictions", [REPLAYED])  # earlier predicted_at, inserted later
    assert _final_scores(ch) == [0.9]
    insert_records(ch, "predictions", [dict(EXACT, score=0.3, predicted_at=1_700_000_000_500), EXACT])
    assert _final_scores(ch) == [0.257]


def test_a_predictions_table_of_an_older_version_takes_new_rows_and_is_reported(ch, caplog) -> None:
    """CREATE TABLE IF NOT EXISTS keeps an existing table: the DDL adds the replayed column, and
    the worker warns that its engine still keeps the latest row (it cannot be changed in place)."""
    ch.command("DROP TABLE {db}.predictions")
    ch.command("""CREATE TABLE {db}.predictions (
        prediction_id String, model_name LowCardinality(String), model_version String, event_id String,
        user_id String, session_id Nullable(String), article_id Nullable(String),
        event_time DateTime64(3, 'UTC'), score Float64, predicted_at DateTime64(3, 'UTC'),
        feature_version LowCardinality(String) DEFAULT '')
        ENGINE = ReplacingMergeTree(predicted_at) PARTITION BY toYYYYMM(event_time) ORDER BY prediction_id""")
    apply_ddl(ch)
    apply_ddl(ch)
    with caplog.at_level(logging.WARNING, logger="stream.clickhouse.base"):
        assert warn_old_engines(ch) == ["predictions"]
    assert "created by an older version" in caplog.text
    insert_records(ch, "predictions", [EXACT, REPLAYED])
    assert _final_scores(ch) == [1.141]  # the old behaviour, which the warning names

    ch.command("DROP TABLE {db}.predictions")
    apply_ddl(ch)
    assert not warn_old_engines(ch)


def test_a_segment_s_name_is_stored_as_its_label_and_older_tables_get_the_column(ch) -> None:
    """One batch mixing a segment (score: its id, label: its name) and a churn score without a label."""
    for table in ("predictions", "predictions_shadow"):  # tables created before the label column
        ch.command(f"ALTER TABLE {{db}}.{table} DROP COLUMN label")
    apply_ddl(ch)
    segment = dict(_PREDICTION, prediction_id="p2", model_name="segment", score=3.0, label="mobile-first")
    churn = dict(_PREDICTION, prediction_id="p3", model_name="churn", score=0.4)
    for table in ("predictions", "predictions_shadow"):
        insert_records(ch, table, [dict(segment, predicted_at=1_700_000_001_000), dict(churn, predicted_at=1)])
        rows = ch.query_df(f"SELECT model_name, score, label FROM {{db}}.{table} FINAL ORDER BY model_name")
        assert rows.to_dict("records") == [
            {"model_name": "churn", "score": 0.4, "label": ""},
            {"model_name": "segment", "score": 3.0, "label": "mobile-first"},
        ]


def test_archived_events_are_one_row_per_event_and_an_older_events_table_is_reported(ch, caplog) -> None:
    """The worker may archive an event again after a crash: FINAL shows it once."""
    event = {
        "event_id": "e1",
        "event_type": "page_view",
        "user_id": "u1",
        "session_id": "s1",
        "event_time": 1_700_000_000_000,
        "schema_version": 1,
    }
    insert_events(ch, [event])
    insert_events(ch, [event, {**event, "event_id": "e2"}])
    rows = ch.query_df("SELECT event_id, count() AS n FROM {db}.events FINAL GROUP BY event_id ORDER BY event_id")
    assert rows["event_id"].tolist() == ["e1", "e2"] and rows["n"].tolist() == [1, 1]
    assert not warn_old_engines(ch)

    ch.command("DROP TABLE {db}.events")
    ch.command("""CREATE TABLE {db}.events (event_id String, user_id String, event_time DateTime64(3, 'UTC'))
        ENGINE = MergeTree PARTITION BY toDate(event_time) ORDER BY (user_id, event_time, event_id)""")
    with caplog.at_level(logging.WARNING, logger="stream.clickhouse.base"):
        assert warn_old_engines(ch) == ["events"]
    assert "events the worker archives again after a crash stay there twice" in caplog.text


def test_archived_json_rows_are_those_of_the_frame_insert_column_by_column(ch) -> None:
    """insert_events (JSON, flattened by ClickHouse) stores what events_to_frame + a Native insert stored."""
    from simulator import SimConfig, generate

    dataset = generate(SimConfig(n_users=40, days=3, seed=11))
    simulated = [orjson.loads(orjson.dumps(ev)) for ev in dataset.iter_events()]  # as the worker parses them
    events = edge_events() + random_events(3000, seed=5) + simulated
    assert insert_events(ch, events) == len(events)
    with fresh_database() as reference:
        assert insert_by_day(reference, "events", events_to_frame(events)) == len(events)
        want = stored_events(reference)
    got = stored_events(ch)
    assert_same_rows(got, want)
    assert len({t.date() for t in got.column("event_time").to_pylist()}) > 100  # cut by day, in both

    # and what both hold is what the events say, for the bounds (written out here, not computed)
    edge_ids = {ev["event_id"] for ev in edge_events()}
    rows = {r["event_id"]: r for r in got.to_pylist() if r["event_id"] in edge_ids}
    utc = dt.UTC
    assert rows["lowest"] == {
        "event_id": "lowest", "event_type": "subscription", "user_id": "u1", "session_id": "s1",
        "event_time": dt.datetime(2000, 1, 1, tzinfo=utc), "article_id": None, "brand": None, "category": None,
        "position": 1, "placement": None, "request_id": None, "revenue": 0.0, "duration_ms": 0,
        "device_type": "tablet", "device_os": "", "device_browser": "", "country": "AA", "city": "",
        "timezone": "", "schema_version": 1,
    }  # fmt: skip
    assert rows["highest"]["event_time"] == dt.datetime(2100, 1, 1, tzinfo=utc)
    assert (rows["highest"]["position"], rows["highest"]["duration_ms"], rows["highest"]["revenue"]) == (
        100,
        86_400_000,
        1e9,
    )
    assert rows["highest"]["device_os"] == "o" * 32 and rows["highest"]["timezone"] == "z" * 64
    assert rows["minimal"]["event_time"] == dt.datetime(2023, 11, 14, 22, 13, 20, 123_000, tzinfo=utc)
    assert rows["minimal"]["device_type"] is None and rows["minimal"]["country"] is None
    assert rows["tiny-revenue"]["revenue"] == 5e-324 and rows["integer-revenue"]["revenue"] == 7.0
    assert rows["long-digits"]["revenue"] == 999_999_999.9999999
    assert rows["only-nested-required"]["device_os"] is None and rows["only-nested-required"]["city"] is None
    assert rows["explicit-nulls"]["article_id"] is None and rows["explicit-nulls"]["device_type"] is None
    unicode = rows["\U0001f600" * 64]
    assert unicode["user_id"] == 'Zoë \u05d0\u0627 日本 \x00\x01\n\t"\\/ \u2028\ufeff'
    assert unicode["session_id"] == "e\u0301\U0001f1e9\U0001f1ea"
    assert (unicode["device_os"], unicode["city"]) == ("iOS\u200f", "Köln")


def test_the_archive_stores_the_event_the_worker_parsed_not_its_raw_bytes(ch) -> None:
    """Of a repeated key orjson (the worker) keeps the last value, ClickHouse the first; 3.0 is an integer."""
    raw = (
        b'{"schema_version": 1, "event_id": "e1", "event_type": "article_impression", "user_id": "first",'
        b' "user_id": "last", "session_id": "s1", "event_time": 1.7e12, "article_id": "a1", "position": 3.0}'
    )
    insert_events(ch, [parse_event(raw, 10_000)])
    rows = ch.query_df("SELECT user_id, toUnixTimestamp64Milli(event_time) AS t, position FROM {db}.events")
    assert rows.to_dict("records") == [{"user_id": "last", "t": 1_700_000_000_000, "position": 3}]


def test_records_round_trip_exactly_whatever_their_values(ch) -> None:
    """Prediction and decision records go in as JSON: every float comes back to the bit, strings with
    quotes and non-ASCII come back as they were, keys that are not columns are skipped, and a score
    JSON cannot carry (NaN, infinity) is stored as it is."""
    scores = [0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 2.0 / 3.0, 0.25700000000000006]
    preds = [
        dict(_PREDICTION, prediction_id=f"p{i}", user_id=f"u'\\\"ü{i}", score=s, predicted_at=1_700_000_001_000 + i)
        for i, s in enumerate(scores)
    ]
    preds[0]["schema_version"] = 1  # published with the record, not a column
    preds[1]["replayed"] = True
    assert insert_records(ch, "predictions", preds) == len(scores)
    odd = [
        dict(_PREDICTION, prediction_id="n1", score=float("nan"), predicted_at=1_700_000_002_000),
        dict(_PREDICTION, prediction_id="n2", score=float("inf"), predicted_at=1_700_000_002_000),
    ]
    assert insert_records(ch, "predictions", odd) == 2
    back = ch.query_df(
        "SELECT prediction_id, user_id, score, replayed, toUnixTimestamp64Milli(predicted_at) AS at, "
        "toUnixTimestamp64Milli(event_time) AS et FROM {db}.predictions ORDER BY prediction_id"
    )
    rows = {r.prediction_id: r for r in back.itertuples()}
    for i, s in enumerate(scores):
        r = rows[f"p{i}"]
        assert r.score.hex() == s.hex() if s != 0 else str(r.score) == str(s)
        assert r.user_id == f"u'\\\"ü{i}"
        assert r.at == 1_700_000_001_000 + i and r.et == _PREDICTION["event_time"]
        assert r.replayed == (1 if i == 1 else 0)
    assert str(rows["n1"].score) == "nan" and rows["n2"].score == float("inf")
    decision = {
        "decision_id": "d1",
        "request_id": "r1",
        "event_id": None,
        "user_id": "u1",
        "context": "home",
        "placement": "top",
        "propensity": 1 / 3,
        "policy": "thompson",
        "event_time": 1_700_000_000_000,
        "decided_at": 1_700_000_000_007,
        "arm_means": {"top": 0.1},
        "schema_version": 1,
    }
    assert insert_records(ch, "bandit_decisions", [decision]) == 1
    got = ch.query_df(
        "SELECT decision_id, event_id, propensity, toUnixTimestamp64Milli(decided_at) AS at FROM {db}.bandit_decisions"
    ).to_dict("records")
    assert got == [{"decision_id": "d1", "event_id": None, "propensity": 1 / 3, "at": 1_700_000_000_007}]


def test_monitoring_rows_take_epoch_ms_or_timestamps_for_every_time_column(ch) -> None:
    """A table's DateTime64 columns take epoch ms whatever their names (window_start is not ``*_at``),
    and datetimes (pandas Timestamps, naive ones as UTC) to the millisecond."""
    base = {
        "model_name": "click",
        "model_version": "1",
        "pairs": 10,
        "auc": 0.7,
        "log_loss": None,
        "ece": None,
        "r2": None,
        "mae": None,
    }
    rows = [
        dict(base, window_start=1_700_000_000_001, window_end=1_700_000_060_002, computed_at=1_700_000_061_003),
        dict(
            base,
            model_version="2",
            window_start=pd.Timestamp(1_700_000_000_001, unit="ms", tz="UTC"),
            window_end=dt.datetime(2023, 11, 14, 22, 14, 20, 2000),
            computed_at=1_700_000_061_003,
        ),
    ]
    assert insert_records(ch, "model_quality", rows) == 2
    got = ch.query_df(
        "SELECT model_version, toUnixTimestamp64Milli(window_start) AS s, toUnixTimestamp64Milli(window_end) AS e, "
        "auc, isNull(log_loss) AS missing FROM {db}.model_quality ORDER BY model_version"
    ).to_dict("records")
    assert got == [
        {"model_version": "1", "s": 1_700_000_000_001, "e": 1_700_000_060_002, "auc": 0.7, "missing": 1},
        {"model_version": "2", "s": 1_700_000_000_001, "e": 1_700_000_060_002, "auc": 0.7, "missing": 1},
    ]

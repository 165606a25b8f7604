"""Histories longer than 100 days go into the day-partitioned events table (real chdb).

ClickHouse refuses more than ``max_partitions_per_insert_block`` (100) partitions in one INSERT
(TOO_MANY_PARTS); every writer of ``{db}.events`` cuts its inserts by day through one helper.
"""

from __future__ import annotations

from stream.clickhouse import insert_events

DAY_MS = 86_400_000
T0 = 1_700_000_000_000


def test_insert_events_takes_150_days_in_one_call(ch) -> None:
    events = [
        {
            "schema_version": 1,
            "event_id": f"e{d}",
            "event_type": "page_view",
            "user_id": "u1",
            "session_id": f"s{d}",
            "event_time": T0 + d * DAY_MS,
        }
        for d in range(150)
    ]
    assert insert_events(ch, events) == 150
    days = ch.query_df("SELECT uniqExact(toDate(event_time)) AS d, count() AS n FROM {db}.events")
    assert (int(days["d"].iloc[0]), int(days["n"].iloc[0])) == (150, 150)


def test_simulator_backfill_of_120_days(ch) -> None:
    from simulator import SimConfig, generate
    from simulator.sinks import backfill

    ds = generate(SimConfig(n_users=30, days=120, seed=3))
    counts = backfill(ch, ds)
    stored = ch.query_df("SELECT count() AS n, uniqExact(toDate(event_time)) AS d FROM {db}.events")
    assert counts["events"] == len(ds) == int(stored["n"].iloc[0])
    assert int(stored["d"].iloc[0]) > 100

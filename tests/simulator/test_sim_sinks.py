"""Simulator sinks against real backends: chdb (ClickHouse) and the embedded Kafka broker."""

from __future__ import annotations

import orjson
import pytest

from simulator import SimConfig, generate
from simulator.sinks import backfill, produce_dataset
from stream.kafka.io import read_topic


def test_backfill_inserts_events_and_truth(ch: object) -> None:
    ds = generate(SimConfig(n_users=200, days=5, seed=2, bot_share=0.03, missing_share=0.05))
    counts = backfill(ch, ds, batch_rows=20_000)  # type: ignore[arg-type]
    assert counts["events"] == len(ds)
    q = ch.query_df  # type: ignore[attr-defined]
    got = q("SELECT count() AS n, uniqExact(event_id) AS u, min(event_time) AS t FROM {db}.events")
    assert int(got["n"][0]) == len(ds) == int(got["u"][0])
    first_ms = int(ds.events["event_time"].min())
    assert int(got["t"].astype("datetime64[ms, UTC]").astype("int64")[0]) == first_ms
    for name, table in ds.truth_tables.items():
        assert int(q(f"SELECT count() AS n FROM {{db}}.truth_{name}")["n"][0]) == table.num_rows
    joined = q(
        "SELECT count() AS n FROM {db}.truth_article_impressions t INNER JOIN {db}.events e ON e.event_id = t.event_id"
    )
    assert int(joined["n"][0]) == ds.truth_tables["article_impressions"].num_rows


@pytest.mark.kafka
def test_stream_produces_every_record_keyed_by_user(kafka_bootstrap: str, unique: str) -> None:
    ds = generate(SimConfig(n_users=50, days=2, seed=9, malformed_share=0.01))
    topic = f"sim-{unique}"
    n = produce_dataset(ds, kafka_bootstrap, topic, rate=None, progress=False)
    assert n == len(ds) + len(ds.malformed)
    got = read_topic(kafka_bootstrap, topic, timeout_s=30)
    assert len(got) == n
    valid = [m for m in got if m.key()]
    assert len(valid) == len(ds)
    ev = orjson.loads(valid[0].value())
    assert valid[0].key() == ev["user_id"].encode()

-- Model scores. prediction_id is deterministic (model, version, user_id, event_id: see stream/ids.py), so a replayed
-- prediction has the id of the earlier row instead of counting twice. Query with FINAL for exact counts.
--
-- Which row FINAL keeps: the highest row_version. An exact row (replayed = 0: scored from the state the model asks
-- for) ranks above any replayed row (replayed = 1: scored again after a crash from a state that already held its
-- event, docs/worker.md "Delivery"), whatever the order they arrive in. Among rows of one kind the latest
-- predicted_at wins, as before (exact rows of one event are scored from the same user state).
CREATE TABLE IF NOT EXISTS {db}.predictions
(
    prediction_id   String,
    model_name      LowCardinality(String),
    model_version   String,
    event_id        String,
    user_id         String,
    session_id      Nullable(String),
    article_id      Nullable(String),
    event_time      DateTime64(3, 'UTC'),
    score           Float64,
    predicted_at    DateTime64(3, 'UTC'),
    feature_version LowCardinality(String) DEFAULT '',
    replayed        UInt8 DEFAULT 0,
    row_version     UInt64 MATERIALIZED
        bitShiftLeft(toUInt64(replayed = 0), 62) + toUInt64(greatest(toUnixTimestamp64Milli(predicted_at), 0))
)
ENGINE = ReplacingMergeTree(row_version)
PARTITION BY toYYYYMM(event_time)
ORDER BY prediction_id;

-- Tables created before the replayed column existed (ReplacingMergeTree(predicted_at)) take inserts with it. Their
-- FINAL still keeps the latest row, replayed or not, until the table is recreated (stream/clickhouse/base.py warns).
ALTER TABLE {db}.predictions ADD COLUMN IF NOT EXISTS replayed UInt8 DEFAULT 0

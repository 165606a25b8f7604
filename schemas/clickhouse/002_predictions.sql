-- Model scores. prediction_id is deterministic (model, version, user_id, event_id: see stream/ids.py), so a replayed
-- prediction replaces the earlier row instead of counting twice. Query with FINAL for exact counts.
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
    feature_version LowCardinality(String) DEFAULT ''
)
ENGINE = ReplacingMergeTree(predicted_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY prediction_id

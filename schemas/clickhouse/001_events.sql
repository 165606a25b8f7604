-- Raw session events, one row per event. Partitioned by day, ordered by user and time so that
-- per-user history reads (feature building) are sequential.
CREATE TABLE IF NOT EXISTS {db}.events
(
    event_id        String,
    event_type      LowCardinality(String),
    user_id         String,
    session_id      String,
    event_time      DateTime64(3, 'UTC'),
    article_id      Nullable(String),
    brand           LowCardinality(Nullable(String)),
    category        LowCardinality(Nullable(String)),
    position        Nullable(UInt8),
    placement       LowCardinality(Nullable(String)),
    request_id      Nullable(String),
    revenue         Nullable(Float64),
    duration_ms     Nullable(UInt32),
    device_type     LowCardinality(Nullable(String)),
    device_os       LowCardinality(Nullable(String)),
    device_browser  LowCardinality(Nullable(String)),
    country         LowCardinality(Nullable(String)),
    city            Nullable(String),
    timezone        LowCardinality(Nullable(String)),
    schema_version  UInt8 DEFAULT 1,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
-- Replacing: an event archived twice (the worker re-reads uncommitted input after a crash, an ingest is
-- run again) is one row after merges, and at once with FINAL or LIMIT 1 BY event_id.
ENGINE = ReplacingMergeTree
PARTITION BY toDate(event_time)
ORDER BY (user_id, event_time, event_id)

-- One row per ad_request decision: chosen arm and its propensity, for off-policy evaluation.
CREATE TABLE IF NOT EXISTS {db}.bandit_decisions
(
    decision_id     String,
    request_id      String,
    event_id        Nullable(String),
    user_id         String,
    context         LowCardinality(String),
    placement       LowCardinality(String),
    propensity      Float64,
    policy          LowCardinality(String),
    event_time      DateTime64(3, 'UTC'),
    decided_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(decided_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY decision_id

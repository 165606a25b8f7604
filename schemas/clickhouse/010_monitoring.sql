-- Online model quality per model version and window (stream/monitoring/outputs.py quality_rows). Worker rows (click,
-- engagement): a window is the last N joined (outcome, prediction) pairs, and window_start/window_end are its first
-- and last outcome times. Horizon rows (churn, conversion: python -m stream outcomes, stream/monitoring/horizon.py): a
-- window is a tumbling window of prediction time, window_start its start, window_end the end of the prediction times
-- past their horizon it covers, pairs those predictions. A window published again (more outcomes, a replay) has the
-- same key: FINAL keeps the latest computed_at.
-- Metrics that do not apply to the model's task, or are undefined in the window (AUC with one class), are null.
CREATE TABLE IF NOT EXISTS {db}.model_quality
(
    model_name    LowCardinality(String),
    model_version String,
    window_start  DateTime64(3, 'UTC'),
    window_end    DateTime64(3, 'UTC'),
    pairs         UInt32,
    auc           Nullable(Float64),
    log_loss      Nullable(Float64),
    ece           Nullable(Float64),
    r2            Nullable(Float64),
    mae           Nullable(Float64),
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_name, model_version, window_start);

-- Drift of each feature (and of the prediction, feature = 'prediction') against the model's training profile, per
-- tumbling window of live rows (stream/monitoring/drift.py). ks is null for discrete columns. drifted = 1 when psi
-- or ks is over its threshold (thresholds depend on the window's row count: docs/monitoring.md).
CREATE TABLE IF NOT EXISTS {db}.feature_drift
(
    model_name    LowCardinality(String),
    model_version String,
    window_start  DateTime64(3, 'UTC'),
    window_end    DateTime64(3, 'UTC'),
    feature       LowCardinality(String),
    rows          UInt32,
    psi           Float64,
    psi_threshold Float64,
    ks            Nullable(Float64),
    ks_threshold  Nullable(Float64),
    drifted       UInt8,
    computed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (model_name, model_version, feature, window_start)

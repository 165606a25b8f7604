-- Ground truth written by the audience simulator (python -m simulator backfill) beside the
-- events it generates. Never read by the worker: only by reports, backtests and tests.
-- Times are UTC. Probabilities are exact model quantities, not estimates.
CREATE TABLE IF NOT EXISTS {db}.truth_users
(
    user_id                     String,
    is_bot                      Bool,
    join_day                    Int32,
    churn_day                   Nullable(Int32),
    engagement                  Float64,
    sessions_per_day            Float64,
    churn_hazard_daily          Float64,
    click_logit                 Float64,
    video_prob                  Float64,
    newsletter_prob             Float64,
    subscription_prob           Float64,
    newsletter_member_at_start  Bool,
    subscriber_at_start         Bool,
    primary_device              LowCardinality(String),
    country                     LowCardinality(String),
    city                        String,
    timezone                    LowCardinality(String)
)
ENGINE = MergeTree
ORDER BY user_id;

-- One row per user and daily cut-off (00:00 UTC) after the user joined.
CREATE TABLE IF NOT EXISTS {db}.truth_user_daily
(
    user_id           String,
    day               Int32,
    cutoff_time       DateTime64(3, 'UTC'),
    alive             Bool,
    p_churn_30d       Float64,
    p_convert_14d     Float64,
    p_high_value_14d  Float64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(cutoff_time)
ORDER BY (user_id, cutoff_time);

CREATE TABLE IF NOT EXISTS {db}.truth_sessions
(
    session_id           String,
    user_id              String,
    start_time           DateTime64(3, 'UTC'),
    device_type          LowCardinality(String),
    expected_engagement  Float64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY (user_id, start_time, session_id);

CREATE TABLE IF NOT EXISTS {db}.truth_article_impressions
(
    event_id  String,
    p_click   Float64
)
ENGINE = MergeTree
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS {db}.truth_ad_impressions
(
    event_id     String,
    request_id   String,
    placement    LowCardinality(String),
    device_type  LowCardinality(String),
    p_click      Float64
)
ENGINE = MergeTree
ORDER BY event_id;

-- True CTR of each arm (placement x device context) per UTC day.
CREATE TABLE IF NOT EXISTS {db}.truth_ad_arms
(
    day          Int32,
    day_start    DateTime64(3, 'UTC'),
    placement    LowCardinality(String),
    device_type  LowCardinality(String),
    ctr          Float64
)
ENGINE = MergeTree
ORDER BY (placement, device_type, day)
;

-- Every article: its publish time, brand and category (indices into the simulator's world
-- vocabulary), its hidden topic, its quality's click-logit term and its exposure: feeds and
-- direct visits draw it in proportion to exp(popularity_logit - age_hours / popularity_decay_hours)
-- while it is younger than feed_max_age_hours (the last two are the simulator's settings).
CREATE TABLE IF NOT EXISTS {db}.truth_articles
(
    article_id              String,
    publish_time            DateTime64(3, 'UTC'),
    brand_index             Int32,
    category_index          Int32,
    topic                   Int32,
    quality_logit           Float64,
    popularity_logit        Float64,
    popularity_decay_hours  Float64,
    feed_max_age_hours      Float64
)
ENGINE = MergeTree
ORDER BY article_id;

-- Each user's preference term per brand, category and hidden topic (kind, key = index, weights
-- applied). User u's preference for article a is
--   truth_articles.quality_logit + logit(brand_index) + logit(category_index) + logit(topic):
-- a direct visit picks among popular articles in proportion to exp(preference). A feed click's
-- logit is truth_users.click_logit + the same terms, the topic's scaled by
-- taste_click_weight / taste_weight (0 by default), - position_decay * ln(position) + device shift.
CREATE TABLE IF NOT EXISTS {db}.truth_user_preferences
(
    user_id  String,
    kind     LowCardinality(String),
    key      Int32,
    logit    Float64
)
ENGINE = MergeTree
ORDER BY (user_id, kind, key)

"""All configuration, read from the environment (prefix ``STREAM_``) or a ``.env`` file.

This is the only module that reads environment variables. Every other module receives a
:class:`Settings` (or the values it needs) as an argument.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, FilePath, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stream.errors import ConfigError
from stream.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, record_budget
from stream.redact import protect

ROOT = Path(__file__).resolve().parent.parent

#: Kafka's limit on topic names, and the characters it allows in them.
MAX_TOPIC_LENGTH = 249
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]*")
#: The longest suffix faust adds to STREAM_WORKER_ID for an internal topic (stream/worker/app.py's tables
#: and faust's ``<id>-__assignor-__leader``), and the longest public topic name (stream/kafka/topics.py).
_LONGEST_INTERNAL_SUFFIX = len("-article-stats-changelog")
_LONGEST_PUBLIC_TOPIC = len("session-events-dlq")
_DIRECTORIES = ("chdb_path", "data_dir", "models_dir", "reports_dir", "state_dir")


class Settings(BaseSettings):
    """Runtime settings. Unset Kafka/ClickHouse addresses mean "use the embedded defaults"."""

    model_config = SettingsConfigDict(env_prefix="STREAM_", env_file=".env", extra="ignore", frozen=True)

    # --- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None, description="host:port list of an existing Kafka cluster; unset = embedded broker"
    )
    topic_partitions: int = Field(4, ge=1, le=1024, description="partitions of keyed topics")
    topic_replication: int = Field(1, ge=1, le=16, description="replication factor of new topics")
    topic_prefix: str = Field("", description="prefix added to every topic name (multi-tenant clusters)")

    # --- ClickHouse ----------------------------------------------------------------------
    clickhouse_url: str | None = Field(
        None, description="http(s)://host:port of a ClickHouse server; unset = embedded chdb"
    )
    clickhouse_user: str = Field("default", description="ClickHouse server user")
    clickhouse_password: SecretStr = Field(SecretStr(""), description="ClickHouse server password")
    clickhouse_database: str = Field("publisher", description="database holding all tables")
    clickhouse_flush_s: float = Field(
        1.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="the worker inserts each table's rows into ClickHouse this often, or sooner once they stand for "
        "half of the events in flight (ClickHouse advises about one insert a second per table); a batch is "
        "committed once its rows are in",
    )
    chdb_path: Path = Field(ROOT / "var" / "chdb", description="directory of the embedded chdb data")
    chdb_server_idle_s: float = Field(
        300.0,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="the embedded ClickHouse server of STREAM_CHDB_PATH exits after this long with no client",
    )

    # --- Paths ---------------------------------------------------------------------------
    data_dir: Path = Field(ROOT / "var", description="root of runtime data (datasets, state, logs)")
    models_dir: Path = Field(ROOT / "var" / "models", description="model registry directory")
    reports_dir: Path = Field(ROOT / "var" / "reports", description="where reports are written")

    # --- Worker --------------------------------------------------------------------------
    worker_id: str = Field("stream-worker", description="faust app id = Kafka consumer group")
    worker_instance: str = Field(
        "0",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="name of this worker process; its RocksDB dir is state_dir/<instance>",
    )
    worker_web_port: int = Field(6066, ge=0, le=65535, description="Prometheus /metrics port (0 = off)")
    api_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="port of the worker's HTTP API /v1 with /metrics and health (0 = off; docs/api.md)",
    )
    api_url: str | None = Field(
        None,
        description="this worker's API URL as the other workers reach it (distinct per worker); "
        "unset = http://<hostname>:<STREAM_API_PORT>",
    )
    api_max_body_bytes: int = Field(16_384, ge=256, le=1024**2, description="larger API request bodies get 413")
    api_forward_timeout_s: float = Field(
        2.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="how long a worker waits for the owner of a request it forwards",
    )
    api_thread: bool = Field(
        False,
        description="serve the API from a thread of its own (its own event loop), so that requests do not "
        "wait for the stream's batches; off: on the stream's event loop (docs/api.md: measured, off is faster "
        "on CPU-starved workers with the other settings at their defaults; deploy/serving.env turns it on)",
    )
    api_switch_interval_ms: float = Field(
        1.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="with STREAM_API_THREAD: how soon Python hands the GIL to a waiting thread, so how long "
        "the API's thread waits for it while a batch runs (ms; 0 = Python's own, 5)",
    )
    processing_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="with STREAM_API_THREAD: the niceness (Linux) of the worker's threads other than the API's "
        "and its decisions producer's, so that when cores are short the OS runs requests, and the broker, "
        'before batches (0: unchanged; docs/api.md, "Serving under load")',
    )
    switch_interval_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="how soon Python hands the GIL to a waiting thread of the worker (the consumer's fetch "
        "thread, the output producer's delivery reports) while a batch runs (ms; 0 = Python's own, 5; "
        "STREAM_API_SWITCH_INTERVAL_MS wins with STREAM_API_THREAD)",
    )
    recommend_max_age_hours: float = Field(
        96.0,
        gt=0,
        le=24 * 365,
        allow_inf_nan=False,
        description="recommendations leave out articles first seen longer ago than this (freshness limit)",
    )
    recommend_reads: int = Field(
        200, ge=1, le=10_000, description="recent distinct reads kept per user (user-reads table): excluded, folded in"
    )
    recommend_on_session_start: bool = Field(
        False,
        description="publish each user's top STREAM_RECOMMEND_K recommendations at every session_start to the "
        "recommendations topic (ranked once per batch, as the API ranks them; off by default: +22 % CPU per event "
        "on the compute floor, docs/api.md)",
    )
    recommend_k: int = Field(
        10, ge=1, le=100, description="recommendations published per session_start (STREAM_RECOMMEND_ON_SESSION_START)"
    )
    recommend_refresh_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="recommendation candidates (fresh articles, exposure rates) are rebuilt, and the recommendation "
        "model's alias checked, at most this often (wall clock; 0: for every request and batch; the alias also "
        "at the STREAM_MODEL_RELOAD_S timer, no more often than this)",
    )
    state_dir: Path = Field(ROOT / "var" / "state", description="RocksDB table directory")
    score_batch_size: int = Field(500, ge=1, le=100_000, description="max events per scoring batch")
    score_batch_ms: int = Field(50, ge=1, le=60_000, description="max wait in ms for a scoring batch")
    score_batch_idle_ms: int = Field(
        5,
        ge=0,
        le=60_000,
        description="a scoring batch also closes once no event came for this long (0: only size and "
        "STREAM_SCORE_BATCH_MS): a live stream's batch need not wait out the window; not while the "
        "partition has a backlog",
    )
    score_batch_backlog_ms: int = Field(
        1000,
        ge=0,
        le=60_000,
        description="while the partition has a backlog, a scoring batch stays open past STREAM_SCORE_BATCH_MS "
        "for STREAM_SCORE_BATCH_SIZE events, up to this long after its first event (0 or at most "
        "STREAM_SCORE_BATCH_MS: no longer than the window); full batches share their per-batch work",
    )
    score_batch_urgent_ads: bool = Field(
        True,
        description="a scoring batch closes as soon as it holds an ad_request (an ad server waits for its "
        "decision), without waiting for the idle limit or STREAM_SCORE_BATCH_MS; not while the partition "
        "has a backlog",
    )
    article_wait_ms: int = Field(
        0,
        ge=0,
        le=600_000,
        description="max wait in ms for article popularity to be complete up to a batch's click watermark "
        "(0: no wait, click scores then depend on read speed; 2000 makes a one-worker replay "
        "reproducible; docs/worker.md, staleness contract)",
    )
    archive_events: bool = Field(
        True,
        description="write every valid input event to the ClickHouse events table that batch training reads "
        "(one row per event identity: a ReplacingMergeTree)",
    )
    consumer_handoff: Literal["lean", "faust"] = Field(
        "lean", description="hand-off of fetched records to the streams: one task per record, or faust's own"
    )
    faust_producer: Literal["librdkafka", "aiokafka"] = Field(
        "librdkafka",
        description="producer of faust's own records (table changelogs): confluent-kafka's, or faust's aiokafka one",
    )
    kafka_fetch: Literal["aiokafka", "librdkafka"] = Field(
        "aiokafka",
        description="what fetches and decodes the worker's input records: faust's aiokafka consumer, or "
        "librdkafka (confluent-kafka) under faust's group membership, tables and commits",
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "uvloop", description="event loop of `python -m stream worker` (faust's CLI: its --loop option)"
    )
    gc_threshold: Annotated[tuple[int, int, int], NoDecode] = Field(
        (10_000, 50, 100), description="Python GC thresholds gen0,gen1,gen2 (Python's default: 700,10,10)"
    )
    gc_freeze: bool = Field(True, description="freeze the objects alive at start-up out of later GC passes")
    stream_buffer_size: int = Field(
        8192, ge=16, le=1_000_000, description="records buffered per input partition between the consumer and an agent"
    )
    consumer_max_fetch_bytes: int = Field(
        65_536,
        ge=16_384,
        le=64 * 1024**2,
        description="max bytes per partition and fetch: what one topic's backlog can make the others wait for",
    )
    consumer_fetch_min_bytes: int = Field(
        1,
        ge=1,
        le=64 * 1024**2,
        description="bytes the broker gathers for the worker's fetch before it answers, unless "
        "STREAM_CONSUMER_FETCH_MAX_WAIT_MS passes first (faust's 1; 65536 with a 10 ms wait: fewer, "
        "fuller fetches under a live stream)",
    )
    consumer_fetch_max_wait_ms: int = Field(
        1500,
        ge=0,
        le=30_000,
        description="longest the broker holds the worker's fetch for STREAM_CONSUMER_FETCH_MIN_BYTES "
        "(faust's 1500): with more than 1 byte asked, what a fetch adds to an event's latency",
    )
    output_linger_ms: int = Field(
        5,
        ge=0,
        le=1_000,
        description="how long the output producer gathers records into a request before sending "
        "(predictions, decisions, dead letters, article events)",
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        ge=MIN_MAX_MESSAGE_BYTES,
        le=1024**3,
        description="largest Kafka record batch: the producer's limit, the topics' max.message.bytes "
        "and the embedded broker's message.max.bytes",
    )
    max_event_bytes: int = Field(16_384, ge=256, description="larger records go to the dead-letter topic")
    allowed_lateness_ms: int = Field(
        5 * 60_000, ge=0, description="out-of-order events within this bound are applied in order"
    )
    worker_session_timeout_s: float = Field(
        10.0,
        ge=3,
        le=300,
        allow_inf_nan=False,
        description="Kafka group session timeout: how fast a dead worker's partitions move",
    )
    shadow_alias: str = Field(
        "challenger",
        pattern=r"^([A-Za-z0-9_.-]{1,64})?$",
        description="registry alias scored in shadow next to production, on the same rows (empty: none); its "
        "scores go to predictions-shadow only and never drive a decision",
    )
    model_reload_s: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="how often the worker checks the model alias"
    )
    settle_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="how long a shutdown or rebalance waits for batches in flight to be confirmed "
        "(the rest stay uncommitted and are read again)",
    )
    shutdown_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="longest a worker's shutdown may take: past it the worker exits with code 1, as after "
        "a crash (what it did not commit is read again); more than STREAM_SETTLE_TIMEOUT_S",
    )
    stall_warning_s: float = Field(
        60.0,
        gt=0,
        allow_inf_nan=False,
        description="a partition whose oldest unconfirmed batch is older than this, or that has messages "
        "waiting and processed none for this long, is logged as stalled and makes /readyz fail",
    )
    start_stall_s: float = Field(
        20.0,
        gt=0,
        allow_inf_nan=False,
        description="an assigned input partition with messages waiting that delivered none since its assignment "
        "for this long, or a table recovery that has read none of the changelog records it waits for in this "
        "long, makes the worker re-join its group (a rebalance), once per this period",
    )
    health_loop_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="/healthz fails once the worker's event loop has not run its 1 s heartbeat for this long",
    )

    # --- Bandits -------------------------------------------------------------------------
    placements: Annotated[tuple[str, ...], NoDecode] = Field(
        ("top_banner", "sidebar", "in_article", "footer"), description="ad placement arms"
    )
    bandit_context: Literal["none", "device"] = Field("device", description="posterior per context key")
    click_join_window_ms: int = Field(
        10 * 60_000, ge=1, description="an ad_click joins its impression within this window"
    )

    # --- Model monitoring (docs/monitoring.md) -----------------------------------------------
    monitoring: bool = Field(
        True,
        description="join click and engagement predictions with their outcomes, and export online quality and "
        "feature/loss drift per model version (Prometheus, ClickHouse model_quality and feature_drift)",
    )
    quality_window: int = Field(
        1000, ge=10, le=1_000_000, description="joined outcomes per model version that online quality is computed over"
    )
    drift_window: int = Field(
        1000, ge=10, le=1_000_000, description="scored rows per tumbling drift window of a model version"
    )
    drift_calibration_windows: int = Field(
        8,
        ge=0,
        le=1000,
        description="the first N drift windows of a model version calibrate each feature's thresholds to the "
        "stream's own variation (sessions, hours) and raise no alarm (0: thresholds for independent rows)",
    )
    monitoring_interval_s: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="how often online quality is computed, exported and written to ClickHouse",
    )

    # --- Retraining (batch_training retrain/compare, python -m stream monitor) -------------
    retrain_window_days: int = Field(
        60, ge=1, le=3650, description="`batch_training retrain` trains on the latest N days of archived events"
    )
    retrain_min_drift_days: float = Field(
        0.0,
        ge=0,
        le=3650,
        allow_inf_nan=False,
        description="`batch_training retrain --after-drift` (a retrain drift made due) waits until the drift began "
        "at least this many days of events ago, so the challenger learns enough of the changed world "
        "(at most STREAM_RETRAIN_WINDOW_DAYS; 0 = at once)",
    )
    compare_confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1,
        description="`batch_training compare` promotes a challenger only if it is better by the margin "
        "with this one-sided confidence",
    )
    monitor_metrics_url: str | None = Field(
        None,
        description="the worker's Prometheus /metrics URL that `stream monitor` scrapes for drift alarms; "
        "unset = http://127.0.0.1:STREAM_WORKER_WEB_PORT/metrics",
    )
    monitor_alarm_metric: str = Field(
        "stream_drift_alarmed_windows_total",
        pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$",
        description="the counter of alarmed drift windows per model version that `stream monitor` watches, "
        "next to stream_drift_windows_total",
    )
    monitor_persist: int = Field(
        3,
        ge=1,
        le=1000,
        description="`stream monitor` retrains after this many drift windows in a row of one model version alarmed",
    )
    monitor_interval_s: float = Field(
        60.0, gt=0, allow_inf_nan=False, description="how often `stream monitor` polls the metrics"
    )
    monitor_cooldown_s: float = Field(
        6 * 3600.0,
        ge=0,
        allow_inf_nan=False,
        description="`stream monitor` starts no retrain sooner than this after the last",
    )
    retrain_every_s: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="`stream monitor` also retrains on this schedule (0 = on drift only)",
    )
    monitor_compare: Literal["shadow", "offline"] = Field(
        "shadow",
        description="how `stream monitor` judges a new challenger: shadow = on the live events the worker scored "
        "with both (`compare --shadow`, once STREAM_SHADOW_MIN_PAIRS have outcomes), offline = at once on the "
        "latest archived events (`compare`)",
    )
    shadow_min_pairs: int = Field(
        1000,
        ge=1,
        le=100_000_000,
        description="labelled pairs (events scored by champion and challenger, outcome known) `stream monitor` "
        "waits for before the shadow compare",
    )
    shadow_max_wait_s: float = Field(
        7 * 86_400.0,
        ge=0,
        allow_inf_nan=False,
        description="how long after a challenger's registration `stream monitor` waits for STREAM_SHADOW_MIN_PAIRS "
        "(then STREAM_MONITOR_FALLBACK) and for the pairs of a kept challenger's next look (then the keep is final)",
    )
    shadow_looks: int = Field(
        3,
        ge=1,
        le=20,
        description="`stream monitor` looks at most this many times at one challenger kept in shadow, again each "
        "time its labelled pairs have grown STREAM_SHADOW_LOOK_GROWTH-fold (and by STREAM_SHADOW_MIN_PAIRS); each "
        "look tests at confidence 1 - (1 - STREAM_COMPARE_CONFIDENCE)/looks (Bonferroni); a new challenger starts "
        "again at look 1",
    )
    shadow_look_growth: float = Field(
        2.0,
        gt=1,
        le=100,
        allow_inf_nan=False,
        description="a challenger kept in shadow is looked at again once its labelled pairs are this many times "
        "those of its last look",
    )
    monitor_fallback: Literal["none", "offline"] = Field(
        "none",
        description="a challenger `stream monitor` cannot judge in shadow within STREAM_SHADOW_MAX_WAIT_S (too few "
        "pairs, or compare --shadow failing): none = the champion stays (recorded), offline = the offline compare",
    )
    monitor_outcomes: bool = Field(
        True, description="`stream monitor` runs the horizon-outcome job (as `stream outcomes --once`) at each poll"
    )

    # --- Horizon outcomes: churn and conversion quality (python -m stream outcomes) ----------
    outcomes_window_s: float = Field(
        86_400.0,
        ge=1,
        le=366 * 86_400,
        allow_inf_nan=False,
        description="`stream outcomes` writes churn and conversion quality per window of prediction time this long",
    )
    outcomes_delay_s: float = Field(
        3600.0,
        ge=0,
        allow_inf_nan=False,
        description="a churn or conversion prediction counts once the newest archived event is past its horizon by "
        "this much (events still on their way to the archive)",
    )
    outcomes_interval_s: float = Field(
        3600.0, gt=0, allow_inf_nan=False, description="how often `stream outcomes` runs (without --once)"
    )
    outcomes_metrics_port: int = Field(
        0, ge=0, le=65535, description="`stream outcomes` serves its quality gauges on this port's /metrics (0 = none)"
    )

    # --- Kafka security (passed to faust and to the confluent clients: stream/kafka/clients.py) --
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol: SASL_* authenticate, *SSL encrypt"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (required by SASL_*)")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (required by SASL_*)")
    kafka_ssl_cafile: FilePath | None = Field(
        None, description="PEM CA bundle that signed the brokers' certificates; unset = the system CAs"
    )

    # --- Misc ----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    @field_validator("placements", mode="before")
    @classmethod
    def _split_placements(cls, v: object) -> object:
        if isinstance(v, str):
            v = tuple(p.strip() for p in v.split(",") if p.strip())
        if isinstance(v, list | tuple) and (not v or len(set(v)) != len(v)):
            raise ValueError(
                "expected a comma-separated list of distinct ad placement names, at least one, like top_banner,sidebar"
            )
        return v

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError("expected http(s)://host:port of this worker's API, like http://worker-0.stream:8080")
        return v.rstrip("/")

    def api_advertised_url(self) -> str:
        """The URL the other workers forward requests for this worker's users to."""
        if self.api_url:
            return self.api_url
        import socket

        return f"http://{socket.gethostname()}:{self.api_port}"

    @field_validator("worker_id")
    @classmethod
    def _check_worker_id(cls, v: str) -> str:
        # The consumer group, and the first part of faust's internal topic names.
        return _topic_part(v, MAX_TOPIC_LENGTH - _LONGEST_INTERNAL_SUFFIX, allow_empty=False)

    @field_validator("topic_prefix")
    @classmethod
    def _check_topic_prefix(cls, v: str) -> str:
        return _topic_part(v, MAX_TOPIC_LENGTH - _LONGEST_PUBLIC_TOPIC, allow_empty=True)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, v: str | None) -> str | None:
        if v and not all(_host_port(b.strip()) for b in v.split(",")):  # empty = unset
            raise ValueError("expected a comma-separated list of host:port (no scheme), like kafka1:9092,kafka2:9092")
        return v

    @field_validator("clickhouse_url", "monitor_metrics_url")
    @classmethod
    def _check_clickhouse_url(cls, v: str | None) -> str | None:
        if v:  # empty = unset
            parts = urlsplit(v)
            try:
                parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
                port_ok = True
            except ValueError:
                port_ok = False
            if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
                raise ValueError(
                    "expected an http:// or https:// URL with a host and an optional port, like http://clickhouse:8123 "
                    "or http://worker:6066/metrics"
                )
        return v

    @field_validator(*_DIRECTORIES)
    @classmethod
    def _check_directory(cls, v: Path) -> Path:
        # Only what can be told without writing: creating the directory is checked where it is
        # created (Settings.ensure_dir), since a command that does not use it must not fail.
        for p in (v, *v.parents):
            try:
                if not p.exists():
                    continue
                is_dir = p.is_dir()
            except OSError:  # not ours to read: creating it will tell
                break
            if not is_dir:
                raise ValueError(f"expected a directory, but {str(p)!r} is a file")
            break
        return v

    @field_validator("max_event_bytes")
    @classmethod
    def _event_fits_a_record(cls, v: int, info: ValidationInfo) -> int:
        # a valid event is forwarded whole (article events), so it must fit in one output record
        limit = info.data.get("max_message_bytes")
        if limit is not None and v > record_budget(limit) - 2:
            raise ValueError(
                f"expected at most {record_budget(limit) - 2} bytes "
                f"(STREAM_MAX_MESSAGE_BYTES={limit} minus {limit - record_budget(limit) + 2} of framing)"
            )
        return v

    @field_validator("gc_threshold", mode="before")
    @classmethod
    def _parse_threshold(cls, v: object) -> object:
        parts = [p.strip() for p in v.split(",")] if isinstance(v, str) else v
        if (
            not isinstance(parts, list | tuple)
            or len(parts) != 3
            or not all(str(p).isdigit() for p in parts)
            or int(parts[0]) < 1
        ):
            raise ValueError("expected three whole numbers gen0,gen1,gen2 like 10000,50,100 (gen0 at least 1)")
        return tuple(int(p) for p in parts)

    @model_validator(mode="after")
    def _check_shutdown_timeout(self) -> Settings:
        if self.shutdown_timeout_s <= self.settle_timeout_s:
            raise ValueError(
                f"STREAM_SHUTDOWN_TIMEOUT_S={self.shutdown_timeout_s:g} must be more than "
                f"STREAM_SETTLE_TIMEOUT_S={self.settle_timeout_s:g}: a shutdown waits that long for batches in flight"
            )
        return self

    @model_validator(mode="after")
    def _check_processing_nice(self) -> Settings:
        if self.processing_nice and not (self.api_thread and self.api_port):
            raise ValueError(
                f"STREAM_PROCESSING_NICE={self.processing_nice} needs the API on a thread of its own "
                "(STREAM_API_PORT and STREAM_API_THREAD=true): it puts the stream's threads behind the API's"
            )
        return self

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                f"STREAM_KAFKA_SECURITY_PROTOCOL={protocol} needs STREAM_KAFKA_SASL_USERNAME "
                "and STREAM_KAFKA_SASL_PASSWORD"
            )
        return self

    def confluent_config(self) -> dict[str, str]:
        """Security options for confluent-kafka clients (see stream/kafka/clients.py)."""
        protocol = self.kafka_security_protocol
        conf: dict[str, str] = {"security.protocol": protocol}
        if protocol.startswith("SASL_"):
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if protocol.endswith("SSL") and self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        return conf

    def secrets(self) -> tuple[str, ...]:
        """The values of every secret setting (for the log redaction, stream/redact.py)."""
        return tuple(
            v.get_secret_value()
            for v in (getattr(self, n) for n in type(self).model_fields)
            if isinstance(v, SecretStr)
        )

    def topic(self, name: str) -> str:
        """The full topic name for a logical topic name."""
        return f"{self.topic_prefix}{name}"

    def ensure_dir(self, field: str, *parts: str) -> Path:
        """Create the directory of setting ``field`` (joined with ``parts``); fail with one line naming it."""
        base: Path = getattr(self, field)
        path = base.joinpath(*parts)
        problem = make_writable_dir(path)
        if problem:
            raise ConfigError(
                f"invalid configuration {env_name(field)}={str(base)!r}: {problem}; expected a writable directory"
            )
        return path


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return f"STREAM_{field.upper()}"


def _topic_part(v: str, max_length: int, *, allow_empty: bool) -> str:
    """``v`` if it can be part of a Kafka topic name: legal characters, and short enough."""
    if not _TOPIC_CHARS.fullmatch(v) or len(v) > max_length or (not v and not allow_empty):
        raise ValueError(
            f"expected {'at most' if allow_empty else '1 to'} {max_length} characters "
            "from A-Z a-z 0-9 . _ - (it becomes part of Kafka topic names)"
        )
    return v


def _host_port(entry: str) -> bool:
    """Whether ``entry`` is ``host`` or ``host:port`` (IPv6 in brackets) with a port of 1-65535."""
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?", entry)
    return m is not None and (m.group(2) is None or 1 <= int(m.group(2)) <= 65535)


def _shown(field: str, value: object) -> object:
    """A rejected value as the error message shows it: a URL's password is replaced by ``***``."""
    if field == "clickhouse_url" and isinstance(value, str):
        parts = urlsplit(value)
        if parts.password:
            return value.replace(f":{parts.password}@", ":***@", 1)
    return value


def make_writable_dir(path: Path) -> str | None:
    """Create directory ``path`` (and its parents); None if it is then writable, else what is wrong."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {str(path)!r} ({exc.strerror})"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{str(path)!r} is not writable"
    return None


def load_settings(**overrides: object) -> Settings:
    """Read settings; a bad value raises :class:`ConfigError` with a one-line message."""
    try:
        s = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a check across settings: its message names them (and no input: it holds secrets)
            raise ConfigError(f"invalid configuration: {err['msg'].removeprefix('Value error, ')}") from None
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(
            f"invalid configuration {env_name(field)}={_shown(field, err.get('input'))!r}: {msg}"
        ) from None
    protect(*s.secrets())  # from now on no log record of this process shows them
    return s

"""All configuration, read from the environment (prefix ``STREAM_``) or a ``.env`` file.

This is the only module that reads environment variables. Every other module receives a
:class:`Settings` (or the values it needs) as an argument.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stream.errors import ConfigError
from stream.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, record_budget

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Runtime settings. Unset Kafka/ClickHouse addresses mean "use the embedded defaults"."""

    model_config = SettingsConfigDict(
        env_prefix="STREAM_", env_file=".env", extra="ignore", frozen=True
    )

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
    chdb_path: Path = Field(ROOT / "var" / "chdb", description="directory of the embedded chdb data")

    # --- Paths ---------------------------------------------------------------------------
    data_dir: Path = Field(ROOT / "var", description="root of runtime data (datasets, state, logs)")
    models_dir: Path = Field(ROOT / "var" / "models", description="model registry directory")
    reports_dir: Path = Field(ROOT / "var" / "reports", description="where reports are written")

    # --- Worker --------------------------------------------------------------------------
    worker_id: str = Field("stream-worker", description="faust app id = Kafka consumer group")
    worker_instance: str = Field("0", pattern=r"^[A-Za-z0-9_.-]+$",
                                 description="name of this worker process; its RocksDB dir is state_dir/<instance>")
    worker_web_port: int = Field(6066, ge=0, le=65535, description="Prometheus /metrics port (0 = off)")
    state_dir: Path = Field(ROOT / "var" / "state", description="RocksDB table directory")
    score_batch_size: int = Field(500, ge=1, le=100_000, description="max events per scoring batch")
    score_batch_ms: int = Field(50, ge=1, le=60_000, description="max wait in ms for a scoring batch")
    consumer_handoff: Literal["lean", "faust"] = Field(
        "lean", description="hand-off of fetched records to the streams: one task per record, or faust's own"
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
        65_536, ge=16_384, le=64 * 1024**2,
        description="max bytes per partition and fetch: what one topic's backlog can make the others wait for",
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, ge=MIN_MAX_MESSAGE_BYTES, le=1024**3,
        description="largest Kafka record batch: the producer's limit, the topics' max.message.bytes "
                    "and the embedded broker's message.max.bytes",
    )
    max_event_bytes: int = Field(16_384, ge=256, description="larger records go to the dead-letter topic")
    allowed_lateness_ms: int = Field(
        5 * 60_000, ge=0, description="out-of-order events within this bound are applied in order"
    )
    worker_session_timeout_s: float = Field(
        10.0, ge=3, le=300, description="Kafka group session timeout: how fast a dead worker's partitions move")
    model_reload_s: float = Field(10.0, gt=0, description="how often the worker checks the model alias")
    settle_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="how long a shutdown or rebalance waits for batches in flight to be confirmed "
                    "(the rest stay uncommitted and are read again)",
    )
    stall_warning_s: float = Field(
        60.0, gt=0, description="a partition whose oldest unconfirmed batch is older than this is logged as stalled"
    )

    # --- Bandits -------------------------------------------------------------------------
    placements: Annotated[tuple[str, ...], NoDecode] = Field(
        ("top_banner", "sidebar", "in_article", "footer"), description="ad placement arms"
    )
    bandit_context: Literal["none", "device"] = Field("device", description="posterior per context key")
    click_join_window_ms: int = Field(
        10 * 60_000, ge=1, description="an ad_click joins its impression within this window"
    )

    # --- Kafka security (passed to faust and to the confluent clients) ---------------------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol")
    kafka_sasl_mechanism: str | None = Field(None, description="SASL mechanism, e.g. PLAIN or SCRAM-SHA-512")
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for SSL")

    # --- Misc ----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    @field_validator("placements", mode="before")
    @classmethod
    def _split_placements(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v

    @field_validator("max_event_bytes")
    @classmethod
    def _event_fits_a_record(cls, v: int, info: ValidationInfo) -> int:
        # a valid event is forwarded whole (article events), so it must fit in one output record
        limit = info.data.get("max_message_bytes")
        if limit is not None and v > record_budget(limit) - 2:
            raise ValueError(f"expected at most {record_budget(limit) - 2} bytes "
                             f"(STREAM_MAX_MESSAGE_BYTES={limit} minus {limit - record_budget(limit) + 2} of framing)")
        return v

    @field_validator("gc_threshold", mode="before")
    @classmethod
    def _parse_threshold(cls, v: object) -> object:
        parts = [p.strip() for p in v.split(",")] if isinstance(v, str) else v
        if (not isinstance(parts, list | tuple) or len(parts) != 3
                or not all(str(p).isdigit() for p in parts) or int(parts[0]) < 1):
            raise ValueError("expected three whole numbers gen0,gen1,gen2 like 10000,50,100 (gen0 at least 1)")
        return tuple(int(p) for p in parts)

    def confluent_config(self) -> dict[str, str]:
        """Security options for confluent-kafka clients (producers, admin, tools)."""
        conf: dict[str, str] = {"security.protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        return conf

    def topic(self, name: str) -> str:
        """The full topic name for a logical topic name."""
        return f"{self.topic_prefix}{name}"


def load_settings(**overrides: object) -> Settings:
    """Read settings; a bad value raises :class:`ConfigError` with a one-line message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        env = f"STREAM_{field.upper()}"
        raise ConfigError(
            f"invalid configuration {env}={err.get('input')!r}: {err['msg']}"
        ) from None


@lru_cache(maxsize=1)
def settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()

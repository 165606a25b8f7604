"""The product's Kafka topics, declared once, and an idempotent creator.

Besides the public topics (:data:`TOPICS`), the worker has internal ones named after
``STREAM_WORKER_ID`` (:func:`worker_topics`): the table changelogs ``<id>-users-changelog``,
``<id>-ad-pending-changelog``, ``<id>-article-stats-changelog`` and ``<id>-bandit-stats-changelog``
(compacted), and the repartition topic ``<id>-article-events``. faust would create them at start,
but a topic created in the same moment the group subscribes can be missing from its first
assignment ("Ignoring missing topic"): its agent then gets nothing until the next rebalance,
minutes later. ``python -m stream worker`` creates them before faust starts.

Partition counts matter: faust tables are co-partitioned with their source topic, so the
session-events topic and the user tables must have the same count (``STREAM_TOPIC_PARTITIONS``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stream.config import Settings
from stream.errors import InfraError
from stream.kafka.clients import admin_client, cluster_metadata

log = logging.getLogger(__name__)

SESSION_EVENTS = "session-events"
PREDICTIONS = "predictions"
PREDICTIONS_SHADOW = "predictions-shadow"
BANDIT_DECISIONS = "bandit-decisions"
RECOMMENDATIONS = "recommendations"
DEAD_LETTER = "session-events-dlq"
#: the worker's tables (faust names a table's changelog ``<worker id>-<table>-changelog``)
USERS_TABLE = "users"
AD_PENDING_TABLE = "ad-pending"
ARTICLE_STATS_TABLE = "article-stats"
BANDIT_STATS_TABLE = "bandit-stats"
#: per user, their recent distinct reads (recommendations exclude them and fold them in)
READS_TABLE = "user-reads"
TABLES = (USERS_TABLE, AD_PENDING_TABLE, ARTICLE_STATS_TABLE, BANDIT_STATS_TABLE, READS_TABLE)
ARTICLE_EVENTS = "article-events"


@dataclass(frozen=True)
class TopicSpec:
    """A logical topic: name, key, partitions (None = the configured default) and topic configs."""

    name: str
    key: str
    description: str
    partitions: int | None = None
    config: dict[str, str] = field(default_factory=dict)
    #: named after the worker (``<STREAM_WORKER_ID>-<name>``) instead of ``<STREAM_TOPIC_PREFIX><name>``
    internal: bool = False


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        SESSION_EVENTS, "user_id", "input: session_event v1 (JSON)", config={"retention.ms": str(7 * 86_400_000)}
    ),
    TopicSpec(PREDICTIONS, "user_id", "output: prediction v1 for churn, click, engagement"),
    TopicSpec(
        PREDICTIONS_SHADOW,
        "user_id",
        'output: prediction v1 of challenger models scored in shadow ("shadow": true; never drives a decision)',
    ),
    TopicSpec(BANDIT_DECISIONS, "user_id", "output: bandit_decision v1, one per ad_request"),
    TopicSpec(
        RECOMMENDATIONS,
        "user_id",
        "output: recommendation v1, a user's top-k articles at each session_start (STREAM_RECOMMEND_ON_SESSION_START)",
    ),
    TopicSpec(
        DEAD_LETTER,
        "original key",
        "rejected input in the dead_letter v1 envelope",
        config={"retention.ms": str(30 * 86_400_000)},
    ),
)


#: the topics the worker writes (besides faust's own): their record limit must admit its records
OUTPUTS = (PREDICTIONS, PREDICTIONS_SHADOW, BANDIT_DECISIONS, RECOMMENDATIONS, DEAD_LETTER)


def worker_topics() -> tuple[TopicSpec, ...]:
    """The worker's internal topics, as faust would create them (changelogs compacted)."""
    changelogs = tuple(
        TopicSpec(
            f"{table}-changelog",
            "table key",
            f"changelog of the {table} table",
            config={"cleanup.policy": "compact"},
            internal=True,
        )
        for table in TABLES
    )
    return (
        TopicSpec(ARTICLE_EVENTS, "article_id", "article events forwarded to their article's partition", internal=True),
        *changelogs,
    )


def internal_topic(settings: Settings, name: str) -> str:
    """The full name of a worker's internal topic (faust's ``<app id>-<name>``)."""
    return f"{settings.worker_id}-{name}"


def name_of(spec: TopicSpec, settings: Settings) -> str:
    """A topic's full name on the cluster."""
    return internal_topic(settings, spec.name) if spec.internal else settings.topic(spec.name)


def partitions_of(spec: TopicSpec, settings: Settings) -> int:
    return spec.partitions or settings.topic_partitions


def record_limit_config(settings: Settings) -> dict[str, str]:
    """Topic config admitting the largest record the worker produces (``STREAM_MAX_MESSAGE_BYTES``)."""
    return {"max.message.bytes": str(settings.max_message_bytes)}


def config_of(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    """The configs a new topic is created with."""
    return {**spec.config, **record_limit_config(settings)}


def ensure_topics(
    bootstrap: str,
    settings: Settings,
    specs: Iterable[TopicSpec] = TOPICS,
    timeout_s: float = 30.0,
    connect_timeout_s: float = 8.0,
) -> dict[str, str]:
    """Create missing topics; check existing ones. Returns ``{topic: "created" | "exists"}``.

    A cluster that does not answer within ``connect_timeout_s``, or refuses the login, is a one-line
    :class:`InfraError` (see :func:`~stream.kafka.clients.cluster_metadata`).
    An existing topic whose partition count differs is refused: silently using it would break
    co-partitioning of the worker's tables.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    existing = cluster_metadata(bootstrap, settings, timeout_s=connect_timeout_s).topics
    admin = admin_client(bootstrap, settings)
    result: dict[str, str] = {}
    to_create = []
    for spec in specs:
        name = name_of(spec, settings)
        want = partitions_of(spec, settings)
        if name in existing:
            have = len(existing[name].partitions)
            if have != want:
                raise InfraError(
                    f"topic {name!r} exists with {have} partitions, expected {want}: "
                    f"set STREAM_TOPIC_PARTITIONS={have} or recreate the topic"
                )
            result[name] = "exists"
        else:
            to_create.append(
                NewTopic(
                    name,
                    num_partitions=want,
                    replication_factor=settings.topic_replication,
                    config=config_of(spec, settings),
                )
            )
    check_record_limits(
        admin,
        [name_of(sp, settings) for sp in specs if sp.name in OUTPUTS and name_of(sp, settings) in existing],
        settings,
        timeout_s,
    )
    for name, fut in admin.create_topics(to_create, operation_timeout=timeout_s).items() if to_create else []:
        try:
            fut.result()
            result[name] = "created"
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):  # a concurrent creator won the race
                result[name] = "exists"
            else:
                raise InfraError(f"cannot create topic {name!r}: {exc}") from exc
    return result


def check_record_limits(admin: Any, names: list[str], settings: Settings, timeout_s: float) -> None:
    """Refuse existing output topics that take smaller records than ``STREAM_MAX_MESSAGE_BYTES``.

    The worker fits every record under that setting; a topic with a smaller ``max.message.bytes``
    would refuse some of them later, and the worker would stop then. Without the right to read
    topic configs this is skipped with a warning.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource

    if not names:
        return
    futures = admin.describe_configs([ConfigResource("topic", n) for n in names], request_timeout=timeout_s)
    for resource, fut in futures.items():
        try:
            entry = fut.result().get("max.message.bytes")
        except KafkaException as exc:
            log.warning(
                "cannot read the configs of topic %r (%s): its record limit is not checked",
                resource.name,
                exc.args[0].str(),
            )
            continue
        if entry is not None and int(entry.value) < settings.max_message_bytes:
            raise InfraError(
                f"topic {resource.name!r} takes records up to {entry.value} bytes (max.message.bytes), less than "
                f"STREAM_MAX_MESSAGE_BYTES={settings.max_message_bytes}: raise the topic's max.message.bytes "
                f"or lower the setting"
            )

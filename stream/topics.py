"""The product's public Kafka topics, declared once, and an idempotent creator.

faust creates and owns the worker's internal topics itself (named after ``STREAM_WORKER_ID``):
the table changelogs ``<id>-users-changelog``, ``<id>-ad-pending-changelog``,
``<id>-article-stats-changelog`` and ``<id>-bandit-stats-changelog`` (compacted), and the
repartition topic ``<id>-article-events``.

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
BANDIT_DECISIONS = "bandit-decisions"
DEAD_LETTER = "session-events-dlq"


@dataclass(frozen=True)
class TopicSpec:
    """A logical topic: name, key, partitions (None = the configured default) and topic configs."""

    name: str
    key: str
    description: str
    partitions: int | None = None
    config: dict[str, str] = field(default_factory=dict)


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(SESSION_EVENTS, "user_id", "input: session_event v1 (JSON)",
              config={"retention.ms": str(7 * 86_400_000)}),
    TopicSpec(PREDICTIONS, "user_id", "output: prediction v1 for churn, click, engagement"),
    TopicSpec(BANDIT_DECISIONS, "user_id", "output: bandit_decision v1, one per ad_request"),
    TopicSpec(DEAD_LETTER, "original key", "rejected input in the dead_letter v1 envelope",
              config={"retention.ms": str(30 * 86_400_000)}),
)


#: the topics the worker writes (besides faust's own): their record limit must admit its records
OUTPUTS = (PREDICTIONS, BANDIT_DECISIONS, DEAD_LETTER)


def partitions_of(spec: TopicSpec, settings: Settings) -> int:
    return spec.partitions or settings.topic_partitions


def record_limit_config(settings: Settings) -> dict[str, str]:
    """Topic config admitting the largest record the worker produces (``STREAM_MAX_MESSAGE_BYTES``)."""
    return {"max.message.bytes": str(settings.max_message_bytes)}


def config_of(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    """The configs a new topic is created with."""
    return {**spec.config, **record_limit_config(settings)}


def ensure_topics(bootstrap: str, settings: Settings, specs: Iterable[TopicSpec] = TOPICS,
                  timeout_s: float = 30.0, connect_timeout_s: float = 8.0) -> dict[str, str]:
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
        name = settings.topic(spec.name)
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
            to_create.append(NewTopic(name, num_partitions=want,
                                      replication_factor=settings.topic_replication, config=config_of(spec, settings)))
    check_record_limits(admin, [settings.topic(sp.name) for sp in specs
                                if sp.name in OUTPUTS and settings.topic(sp.name) in existing], settings, timeout_s)
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
            log.warning("cannot read the configs of topic %r (%s): its record limit is not checked",
                        resource.name, exc.args[0].str())
            continue
        if entry is not None and int(entry.value) < settings.max_message_bytes:
            raise InfraError(
                f"topic {resource.name!r} takes records up to {entry.value} bytes (max.message.bytes), less than "
                f"STREAM_MAX_MESSAGE_BYTES={settings.max_message_bytes}: raise the topic's max.message.bytes "
                f"or lower the setting")

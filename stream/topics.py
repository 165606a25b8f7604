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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.config import Settings
from stream.errors import InfraError

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


def partitions_of(spec: TopicSpec, settings: Settings) -> int:
    return spec.partitions or settings.topic_partitions


#: librdkafka's own log (a line per failed connection attempt, hundreds while a broker is
#: unreachable) goes here, at DEBUG: the error that matters reaches the caller as one line.
_CLIENT_LOG = logging.getLogger("stream.kafka.client")


class _DebugLogger(logging.Logger):
    """What librdkafka's ``logger`` option is given: every record at DEBUG on ``_CLIENT_LOG``."""

    def __init__(self) -> None:
        super().__init__(_CLIENT_LOG.name)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        _CLIENT_LOG.debug(msg, *args, **kwargs)


class LastError:
    """A confluent client's ``error_cb``: keeps the latest error, the cause of a failed request."""

    def __init__(self) -> None:
        self.text: str | None = None

    def __call__(self, err: Any) -> None:
        self.text = err.str()


def admin_client(bootstrap: str, config: Mapping[str, Any] | None = None) -> Any:
    """An AdminClient for ``bootstrap``; ``config`` adds client options (security, ``error_cb``).

    librdkafka logs to ``stream.kafka.client`` at DEBUG, when the client is polled.
    """
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _DebugLogger(), **(config or {})}
    return AdminClient(conf)


def ensure_topics(bootstrap: str, settings: Settings, specs: Iterable[TopicSpec] = TOPICS,
                  timeout_s: float = 30.0, connect_timeout_s: float = 8.0) -> dict[str, str]:
    """Create missing topics; check existing ones. Returns ``{topic: "created" | "exists"}``.

    A cluster that does not answer within ``connect_timeout_s`` is an :class:`InfraError` naming
    the address and librdkafka's last error (refused, unresolvable, authentication).
    An existing topic whose partition count differs is refused: silently using it would break
    co-partitioning of the worker's tables.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    last_error = LastError()
    admin = admin_client(bootstrap, {"error_cb": last_error})
    try:
        existing = admin.list_topics(timeout=connect_timeout_s).topics
    except KafkaException as exc:
        admin.poll(0)  # serves error_cb (and the log) queued while waiting
        cause = last_error.text or exc.args[0].str()
        raise InfraError(f"cannot reach Kafka at {bootstrap} within {connect_timeout_s:g} s: {cause}") from exc
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
                                      replication_factor=settings.topic_replication, config=spec.config))
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

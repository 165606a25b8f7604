"""A fresh worker finds its internal topics already there, so its first assignment includes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.config import load_settings
from stream.kafka.topics import TOPICS, ensure_topics, name_of, worker_topics
from stream.testing import WorkerProcess, consume, produce
from tests.worker.conftest import payloads

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_internal_topics_are_created_like_faust_would(kafka_bootstrap: str, unique: str) -> None:
    settings = load_settings(topic_prefix=f"{unique}.", worker_id=f"w-{unique}", topic_partitions=3)
    created = ensure_topics(kafka_bootstrap, settings, TOPICS + worker_topics())
    names = {
        f"w-{unique}-{n}"
        for n in (
            "article-events",
            "users-changelog",
            "ad-pending-changelog",
            "article-stats-changelog",
            "bandit-stats-changelog",
            "user-reads-changelog",
        )
    }
    assert names <= set(created) and {created[n] for n in names} == {"created"}
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    md = admin.list_topics(timeout=10).topics
    assert all(len(md[n].partitions) == 3 for n in names)
    configs = admin.describe_configs([ConfigResource("topic", name_of(s, settings)) for s in worker_topics()])
    policy = {r.name: f.result()["cleanup.policy"].value for r, f in configs.items()}
    assert policy == {n: "delete" if n.endswith("article-events") else "compact" for n in names}


def test_a_fresh_worker_folds_articles_from_its_first_assignment(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Before, the group subscribed while faust was still creating the repartition topic: about one
    start in three left it out of the first assignment, and no article was folded for minutes."""
    prefix = worker_env["STREAM_TOPIC_PREFIX"]
    events = sim_events[:1500]
    with WorkerProcess(kafka_bootstrap, worker_env, tmp_path / "worker.log") as worker:
        worker.wait_for_log("[^Worker]: Ready", timeout_s=90)
        produce(kafka_bootstrap, f"{prefix}session-events", payloads(events))
        stats = consume(
            kafka_bootstrap,
            f"{worker_env['STREAM_WORKER_ID']}-article-stats-changelog",
            until=lambda got: len(got) > 0,
            timeout_s=30,
        )
        assert stats, f"no article folded within 30 s; see {worker.log_path}"
    assert "Ignoring missing topic" not in worker.log_path.read_text(errors="replace")

"""Segments and conversion online, against the real broker, RocksDB and chdb (docs/worker.md, "Models").

Every session_end gets a churn, a conversion and a segment prediction. The conversion scores and
the segments equal what the test computes itself: user rows rebuilt from the events it produced
with the pure state functions (``tests/support/models.py``), scored by LightGBM's own predict on
the model file and by the scikit-learn objects the segmentation was fitted with. The API returns
each user's newest segment from the state; a worker without a segmentation scores the others.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.client import WorkerClient
from stream.kafka.embedded import free_port
from stream.testing import WorkerProcess, consume, produce
from tests.support.models import offline_online_scores, register_online_models
from tests.support.waits import wait
from tests.worker.conftest import create_topics, payloads, query_worker_clickhouse
from tests.worker.test_worker_api import all_processed, api_env, checked

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: the models each scorable event triggers in a registry that holds all five
TRIGGERED = {
    "article_impression": ("click",),
    "session_start": ("engagement",),
    "session_end": ("churn", "conversion", "segment"),
}


def expected(events: list[dict[str, Any]], served: set[str]) -> Counter[tuple[str, str]]:
    """(model, event_id) of every prediction a worker serving ``served`` owes the events, once each."""
    return Counter(
        (model, e["event_id"]) for e in events for model in TRIGGERED.get(e["event_type"], ()) if model in served
    )


def _records(messages: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in messages]


def test_segment_and_conversion_equal_offline_scoring_and_the_api_returns_the_segment(
    kafka_bootstrap: str, worker_env: dict[str, str], models_dir: Path, sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    versions, segmenter = register_online_models(models, sim_events, seed=7)
    assert segmenter is not None
    port = free_port()
    env = {**api_env(worker_env, port), "STREAM_MODELS_DIR": str(models)}
    prefix, group = env["STREAM_TOPIC_PREFIX"], env["STREAM_WORKER_ID"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, env)
    events = sim_events[:3000]
    want = expected(events, {"churn", "click", "engagement", "conversion", "segment"})
    ends = [e for e in events if e["event_type"] == "session_end"]
    assert len(ends) > 100
    produce(kafka_bootstrap, topic, payloads(events))
    base = f"http://127.0.0.1:{port}"
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log"):
        # a committed offset follows its outputs: once all is committed, the topic holds them all
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 120, "the worker did not process every event")
        records = _records(consume(kafka_bootstrap, f"{prefix}predictions"))
        assert Counter((r["model_name"], r["event_id"]) for r in records) == want  # each once, none missing

        # the scores: what the test computes from its own events and the model files
        offline = offline_online_scores(models, events, segmenter)
        online = {(r["model_name"], r["event_id"]): r for r in records}
        for e in ends:
            conv, seg = online["conversion", e["event_id"]], online["segment", e["event_id"]]
            assert abs(conv["score"] - offline["conversion"][e["event_id"]]) <= 1e-9, conv
            assert seg["score"] == offline["segment"][e["event_id"]], seg
            assert seg["label"] == segmenter.names[int(seg["score"])]
            assert conv["model_version"] == versions["conversion"] and seg["model_version"] == versions["segmentation"]
            assert "replayed" not in conv and "replayed" not in seg
        assert len({online["segment", e["event_id"]]["score"] for e in ends}) > 1

        # the API: each user's newest segment (by event time), kept in their state
        client = WorkerClient(base)
        wait(client.ready, 60, "the worker not ready")
        newest: dict[str, dict[str, Any]] = {}
        for e in ends:  # events come in event-time order
            seg_id = int(offline["segment"][e["event_id"]])
            newest[e["user_id"]] = {
                "id": seg_id,
                "name": segmenter.names[seg_id],
                "model_version": versions["segmentation"],
                "event_time": e["event_time"],
            }
        for uid, segment in sorted(newest.items()):
            assert client.user(uid)["segment"] == segment, uid
        never = sorted({e["user_id"] for e in events} - set(newest))
        for uid in never[:10]:
            assert client.user(uid)["segment"] is None, uid
        users = "/v1/users/{user_id}"
        assert checked(base, users, f"/v1/users/{sorted(newest)[0]}")[0] == 200
        if never:
            assert checked(base, users, f"/v1/users/{never[0]}")[0] == 200
        loaded = {m["name"]: m["version"] for m in client.models()["models"]}
        assert loaded["segment"] == versions["segmentation"] and loaded["conversion"] == versions["conversion"]

        # ClickHouse: the segment's name in the label column, for the segment rows only
        def labels() -> dict[str, tuple[int, int]]:
            rows = query_worker_clickhouse(
                env,
                "SELECT model_name, count() AS n, countIf(label != '') AS labelled "
                "FROM {db}.predictions FINAL GROUP BY model_name",
            )
            return {r["model_name"]: (r["n"], r["labelled"]) for r in rows}

        n_ends = len(ends)
        wait(
            lambda: (
                {k: v for k, v in labels().items() if k in ("churn", "conversion", "segment")}
                == {"churn": (n_ends, 0), "conversion": (n_ends, 0), "segment": (n_ends, n_ends)}
            ),
            60,
            "every session_end's three rows in ClickHouse",
        )


def test_a_worker_without_a_segmentation_scores_churn_and_conversion(
    kafka_bootstrap: str, worker_env: dict[str, str], models_dir: Path, sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    register_online_models(models, sim_events, seed=7, segmentation=False)
    env = {**worker_env, "STREAM_MODELS_DIR": str(models)}
    prefix, group = env["STREAM_TOPIC_PREFIX"], env["STREAM_WORKER_ID"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, env)
    events = sim_events[:1500]
    want = expected(events, {"churn", "click", "engagement", "conversion"})
    assert sum(m == "conversion" for m, _ in want) > 30
    produce(kafka_bootstrap, topic, payloads(events))
    log = tmp_path / "worker.log"
    with WorkerProcess(kafka_bootstrap, env, log):
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 120, "the worker did not process every event")
        got = Counter(
            (r["model_name"], r["event_id"]) for r in _records(consume(kafka_bootstrap, f"{prefix}predictions"))
        )
        assert got == want  # no segment, and nothing else missing
        assert "no segment model yet" in log.read_text()

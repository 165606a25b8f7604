"""``GET /v1/users/{id}/recommendations`` against the real broker, RocksDB and chdb: never a read article."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.client import WorkerClient
from stream.kafka.embedded import free_port
from stream.models.registry import PRODUCTION, ModelRegistry
from stream.testing import WorkerProcess, produce
from tests.support.waits import wait
from tests.worker.conftest import create_topics, payloads
from tests.worker.test_worker_api import all_processed, api_env, checked

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

READS = ("article_view", "article_click", "video_play")


def with_recommendation_model(models_dir: Path, dest: Path, events: list[dict[str, Any]]) -> str:
    """A copy of ``models_dir`` with a production recommendation model (seeded factors) of the events' articles."""
    shutil.copytree(models_dir, dest)
    items = sorted({e["article_id"] for e in events if e.get("article_id")})
    factors = np.random.default_rng(5).gamma(0.5, 1.0, size=(len(items), 4))
    params = {
        "weights": {"cf": 0.5, "content": 0.25, "popularity": 0.25},
        "item_ids": items,
        "item_factors": factors.tolist(),
        "interaction": float(np.log(2.0)),
        "popularity": {"half_life_hours": 12.0, "window_days": 3.0},
        "content_vocabulary": [],
    }
    reg = ModelRegistry(dest)
    mv = reg.register("recommendation", "json", lambda p: p.write_text(json.dumps(params)), {"metrics": {}})
    reg.set_alias("recommendation", PRODUCTION, mv.version, reason="test")
    return mv.version


def test_recommendations_never_include_a_read_article(
    kafka_bootstrap: str,
    worker_env: dict[str, str],
    sim_events: list[dict[str, Any]],
    models_dir: Path,
    tmp_path: Path,
) -> None:
    prefix, group = worker_env["STREAM_TOPIC_PREFIX"], worker_env["STREAM_WORKER_ID"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, worker_env)
    events = sim_events[:3000]
    version = with_recommendation_model(models_dir, tmp_path / "models", events)
    produce(kafka_bootstrap, topic, payloads(events))
    read: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e["event_type"] in READS:
            read[e["user_id"]].add(e["article_id"])
    assert len(read) > 20
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**api_env(worker_env, port), "STREAM_MODELS_DIR": str(tmp_path / "models")}
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log"):
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 120, "the worker did not process every event")
        client = WorkerClient(base)
        wait(client.ready, 60, "the worker not ready")
        wait(lambda: len(client.recommendations("nobody", k=50)["recommendations"]) == 50, 60, "no candidates")
        reasons: set[str] = set()
        for uid in sorted(read):
            body = client.recommendations(uid, k=50)
            got = [r["article_id"] for r in body["recommendations"]]
            assert not set(got) & read[uid], uid
            assert len(got) == len(set(got)) == 50 and body["model_version"] == version
            assert body["reads"] == len(read[uid])  # fewer than STREAM_RECOMMEND_READS: all of them
            reasons |= {r["reason"] for r in body["recommendations"]}
        assert "collaborative" in reasons
        # the answer as the OpenAPI document describes it; bad k is a 400
        route = "/v1/users/{user_id}/recommendations"
        uid = max(read, key=lambda u: len(read[u]))
        assert checked(base, route, f"/v1/users/{uid}/recommendations?k=5")[0] == 200
        status, body = checked(base, route, f"/v1/users/{uid}/recommendations?k=0")
        assert status == 400 and "k must be" in body["error"]

        # GET /v1/models lists the recommendation version next to the scoring models, as documented
        status, listed = checked(base, "/v1/models", "/v1/models")
        assert status == 200
        rec = [m for m in listed["models"] if m["name"] == "recommendation"]
        assert rec == [
            {"name": "recommendation", "version": version, "kind": "recommendation", "feature_version": None}
        ]
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            assert f'stream_model_info{{model="recommendation",version="{version}"}} 1.0' in r.read().decode()

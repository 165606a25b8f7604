"""Recommendations published at ``session_start`` against the real broker, RocksDB and chdb.

* Every session_start gets one ``recommendation`` v1 record keyed by its user, valid against the
  schema, from the production model, never with an article the user read before it, and with as
  many reads excluded as the user had before it (known from the input), whatever reads follow it
  in its batch.
* A session_start whose ranking fails (a model with a NaN factor) goes to the dead-letter topic as
  ``processing_error``; its prediction is still published and the worker commits past it.
* With ``STREAM_RECOMMEND_ON_SESSION_START=false`` nothing is published to the topic.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.events import schema
from stream.kafka.embedded import free_port
from stream.models.registry import PRODUCTION, ModelRegistry
from stream.testing import WorkerProcess, consume, produce
from tests.support.waits import wait
from tests.worker.conftest import create_topics, payloads
from tests.worker.test_worker_api import all_processed
from tests.worker.test_worker_recommendations import READS, with_recommendation_model

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

K = 20


def _env(worker_env: dict[str, str], models: Path, on: bool) -> dict[str, str]:
    return {
        **worker_env,
        "STREAM_MODELS_DIR": str(models),
        "STREAM_RECOMMEND_ON_SESSION_START": "true" if on else "false",
        "STREAM_RECOMMEND_K": str(K),
    }


def _starts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event_type"] == "session_start"]


def _read_before(events: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """Per session_start (user_id, event_id): the articles its user read earlier in the input."""
    read: dict[str, set[str]] = {}
    out = {}
    for e in events:
        if e["event_type"] == "session_start":
            out[(e["user_id"], e["event_id"])] = set(read.get(e["user_id"], ()))
        elif e["event_type"] in READS:
            read.setdefault(e["user_id"], set()).add(e["article_id"])
    return out


def test_each_session_start_publishes_its_users_unread_recommendations(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    prefix, group = worker_env["STREAM_TOPIC_PREFIX"], worker_env["STREAM_WORKER_ID"]
    create_topics(kafka_bootstrap, worker_env)
    events = sim_events[:3000]
    version = with_recommendation_model(Path(worker_env["STREAM_MODELS_DIR"]), tmp_path / "models", events)
    before = _read_before(events)
    assert len(before) > 50 and sum(1 for r in before.values() if r) > 30  # many users read before a session
    produce(kafka_bootstrap, f"{prefix}session-events", payloads(events))
    # candidates rebuilt for every batch, with article popularity folded up to the batch's watermark
    env = {**_env(worker_env, tmp_path / "models", True), "STREAM_RECOMMEND_REFRESH_S": "0"}
    env["STREAM_ARTICLE_WAIT_MS"] = "2000"
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log"):
        got = consume(kafka_bootstrap, f"{prefix}recommendations", until=lambda m: len(m) >= len(before), timeout_s=120)
        wait(lambda: all_processed(kafka_bootstrap, group, f"{prefix}session-events"), 60, "input not all committed")
        got = consume(kafka_bootstrap, f"{prefix}recommendations", timeout_s=30)  # nothing more than one each
    records = [orjson.loads(m.value()) for m in got]
    assert Counter((r["user_id"], r["event_id"]) for r in records) == Counter(list(before))
    full = 0
    for m, r in zip(got, records, strict=True):
        schema.validate("recommendation", r)
        assert m.key() == r["user_id"].encode()
        assert r["model_version"] == version and r["k"] == K
        ids = [a["article_id"] for a in r["recommendations"]]
        assert len(ids) == len(set(ids)) <= K
        read = before[(r["user_id"], r["event_id"])]
        assert not set(ids) & read, (r["user_id"], r["event_id"], set(ids) & read)
        # it excluded what was read before it, not the reads after it in its batch (the default
        # STREAM_RECOMMEND_READS, 200, keeps them all)
        assert r["reads"] == len(read) < 200, (r["user_id"], r["event_id"])
        full += len(ids) == K
    # the first batches may find few articles folded into article-stats yet; later ones a full list
    assert full > len(records) // 2
    assert {a["reason"] for r in records for a in r["recommendations"]} >= {"collaborative", "popular"}


def test_a_failed_ranking_dead_letters_its_session_start_and_the_worker_goes_on(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    prefix, group = worker_env["STREAM_TOPIC_PREFIX"], worker_env["STREAM_WORKER_ID"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, worker_env)
    history = sim_events[:1500]
    models = tmp_path / "models"
    version = with_recommendation_model(Path(worker_env["STREAM_MODELS_DIR"]), models, history)
    # a NaN factor on the newest article: once it is a candidate, no ranking has finite scores
    newest = [e["article_id"] for e in history if e.get("article_id")][-1]
    model_file = ModelRegistry(models).resolve("recommendation", PRODUCTION).model_file
    assert ModelRegistry(models).resolve("recommendation", PRODUCTION).version == version
    params = json.loads(model_file.read_text())
    params["item_factors"][params["item_ids"].index(newest)][0] = float("nan")
    model_file.write_text(json.dumps(params))
    dlq = f"{prefix}session-events-dlq"

    def failures(msgs: list[Any]) -> list[dict[str, Any]]:
        letters = [orjson.loads(m.value()) for m in msgs]
        return [d for d in letters if "recommendations at session_start" in d["reason"]]

    produce(kafka_bootstrap, topic, payloads(history))
    port = free_port()
    env = {**_env(worker_env, models, True), "STREAM_API_PORT": str(port), "STREAM_API_URL": f"http://127.0.0.1:{port}"}
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log") as worker:
        # the history's later session_starts fail once the article is a candidate
        consume(kafka_bootstrap, dlq, until=lambda m: len(failures(m)) > 0, timeout_s=120)
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 60, "history not all committed")
        # then: new sessions of known users, after the history
        t = max(e["event_time"] for e in history) + 1000
        users = sorted({e["user_id"] for e in history})[:10]
        starts = [
            {
                "schema_version": 1,
                "event_id": f"late-start-{i}",
                "event_type": "session_start",
                "user_id": u,
                "session_id": f"late-session-{i}",
                "event_time": t + i,
            }
            for i, u in enumerate(users)
        ]
        produce(kafka_bootstrap, topic, payloads(starts))
        letters = failures(
            consume(
                kafka_bootstrap,
                dlq,
                until=lambda m: {d["value_b64"] for d in failures(m)} >= {_b64(s) for s in starts},
                timeout_s=60,
            )
        )
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 60, "the new sessions not committed")
        assert worker.proc is not None and worker.proc.poll() is None  # still running
        preds = consume(
            kafka_bootstrap,
            f"{prefix}predictions",
            until=lambda m: {orjson.loads(x.value())["event_id"] for x in m} >= {s["event_id"] for s in starts},
            timeout_s=30,
        )
        recs = consume(kafka_bootstrap, f"{prefix}recommendations", timeout_s=30)
        # the API cannot rank with that model either: a one-line 503, not a traceback's 500
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/users/{users[0]}/recommendations", timeout=30)
        assert answer.value.code == 503 and answer.value.headers["Retry-After"]
        assert orjson.loads(answer.value.read())["error"].startswith("recommendations unavailable: ")
        assert "Traceback" not in (tmp_path / "worker.log").read_text()
    late = [d for d in letters if d["value_b64"] in {_b64(s) for s in starts}]
    assert len(late) == len(starts)
    for d in late:
        schema.validate("dead_letter", d)
        assert d["error_kind"] == "processing_error" and d["source_topic"] == topic
        # the fold-in's NNLS refuses the NaN, or the scores are found not finite
        assert "recommendations at session_start: ValueError: " in d["reason"]
    # their engagement scores were published all the same; no recommendation of theirs was
    scored = {(p["model_name"], p["event_id"]) for p in (orjson.loads(m.value()) for m in preds)}
    assert {("engagement", s["event_id"]) for s in starts} <= scored
    assert not {orjson.loads(m.value())["event_id"] for m in recs} & {s["event_id"] for s in starts}
    # every session_start of the input got exactly one of a record and a dead letter
    every = Counter([orjson.loads(m.value())["event_id"] for m in recs] + [_event_id(d) for d in letters])
    assert every == Counter(e["event_id"] for e in _starts(history) + starts)


def test_nothing_is_published_with_the_setting_off(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    prefix, group = worker_env["STREAM_TOPIC_PREFIX"], worker_env["STREAM_WORKER_ID"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, worker_env)
    events = sim_events[:1500]
    with_recommendation_model(Path(worker_env["STREAM_MODELS_DIR"]), tmp_path / "models", events)
    produce(kafka_bootstrap, topic, payloads(events))
    with WorkerProcess(kafka_bootstrap, _env(worker_env, tmp_path / "models", False), tmp_path / "worker.log"):
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 120, "the worker did not process every event")
        engagement = {e["event_id"] for e in _starts(events)}
        consume(
            kafka_bootstrap,
            f"{prefix}predictions",
            until=lambda m: {orjson.loads(x.value())["event_id"] for x in m} >= engagement,
            timeout_s=30,
        )
    assert consume(kafka_bootstrap, f"{prefix}recommendations", timeout_s=30) == []


def _b64(event: dict[str, Any]) -> str:
    return base64.b64encode(orjson.dumps(event)).decode()


def _event_id(letter: dict[str, Any]) -> str:
    return str(orjson.loads(base64.b64decode(letter["value_b64"]))["event_id"])

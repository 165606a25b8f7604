"""The worker's HTTP API against the real broker, RocksDB and chdb (docs/api.md).

* One worker answers every endpoint; a user's features agree with counts the test makes from
  the events it produced, the latest scores with the predictions topic, decisions appear on
  ``bandit-decisions`` and in ClickHouse marked as the API's.
* Two workers in one group: a request to either returns the owner's answer, for users of both;
  while the second joins, every answer is right or a 503 with ``Retry-After``.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream.client import ApiError, WorkerClient
from stream.kafka.embedded import free_port
from stream.kafka.io import committed_offsets
from stream.testing import WorkerProcess, consume, produce
from tests.support.openapi import check_answer
from tests.support.waits import wait
from tests.worker.conftest import create_topics, payloads, query_worker_clickhouse, worker_clickhouse

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one request, error statuses included."""
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, dict(exc.headers), orjson.loads(raw) if raw else None


def checked(base: str, route: str, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, Any]:
    """``call``, the answer checked against the OpenAPI document's ``route``."""
    status, headers, doc = call(base + path, method, body)
    check_answer(route, method, status, headers, doc)
    return status, doc


def truth(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per user, from the produced events: distinct events, sessions started, latest event time."""
    ids: dict[str, set[str]] = defaultdict(set)
    sessions: dict[str, set[str]] = defaultdict(set)
    last: dict[str, int] = defaultdict(int)
    for e in events:
        uid = e["user_id"]
        ids[uid].add(e["event_id"])
        if e["event_type"] == "session_start":
            sessions[uid].add(e["event_id"])
        last[uid] = max(last[uid], e["event_time"])
    return {u: {"events": len(ids[u]), "sessions": len(sessions[u]), "last": last[u]} for u in ids}


def all_processed(bootstrap: str, group: str, topic: str) -> bool:
    """The group committed every partition of ``topic`` up to its end (False while the broker cannot say)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests-api-ends"})
    try:
        n = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(n)}
        committed = committed_offsets(bootstrap, group, topic)
    except KafkaException:  # the group's coordinator is still loading
        return False
    finally:
        consumer.close()
    return all((committed.get(p) or 0) >= end for p, end in ends.items())


def api_env(worker_env: dict[str, str], port: int) -> dict[str, str]:
    return {**worker_env, "STREAM_API_PORT": str(port), "STREAM_API_URL": f"http://127.0.0.1:{port}"}


def check_user(body: dict[str, Any], uid: str, want: dict[str, int]) -> None:
    assert body["user_id"] == uid
    assert body["features"]["total_events"] == want["events"], uid
    assert body["features"]["total_sessions"] == want["sessions"], uid
    assert body["last_event_time"] == want["last"] == body["as_of"], uid


def test_one_worker_answers_every_endpoint(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    prefix, group = worker_env["STREAM_TOPIC_PREFIX"], worker_env["STREAM_WORKER_ID"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, worker_env)
    events = sim_events[:3000]
    produce(kafka_bootstrap, topic, payloads(events))
    want = truth(events)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with WorkerProcess(kafka_bootstrap, api_env(worker_env, port), tmp_path / "worker.log"):
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 120, "the worker did not process every event")
        client = WorkerClient(base)
        wait(client.ready, 60, "the worker not ready")
        preds = [orjson.loads(m.value()) for m in consume(kafka_bootstrap, f"{prefix}predictions")]

        # every user's features: counts the test made itself from the events
        for uid, w in want.items():
            check_user(client.user(uid), uid, w)

        # latest score per model: the prediction of the user's newest scored event
        newest: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for p in preds:
            key = (p["user_id"], p["model_name"])
            if key not in newest or p["event_time"] > newest[key][0]["event_time"]:
                newest[key] = [p]
            elif p["event_time"] == newest[key][0]["event_time"]:
                newest[key].append(p)
        users_scored = {u for u, _ in newest}
        for uid in sorted(users_scored)[:40]:
            scores = client.user(uid)["scores"]
            for (u, model), candidates in newest.items():
                if u != uid:
                    continue
                got = scores[model]
                match = [c for c in candidates if c["event_id"] == got["event_id"]]
                assert match, (uid, model, got)
                assert got["score"] == match[0]["score"] and got["model_version"] == match[0]["model_version"]
                assert got["event_time"] == match[0]["event_time"]

        # as_of later than the last event: the recency features move, the counts do not
        uid = max(want, key=lambda u: want[u]["events"])
        later = client.user(uid, as_of=want[uid]["last"] + 86_400_000)
        assert later["as_of"] == want[uid]["last"] + 86_400_000
        assert later["features"]["days_since_last_event"] == pytest.approx(1.0)
        assert later["features"]["total_events"] == want[uid]["events"]

        # every answer as the OpenAPI document describes it
        users = "/v1/users/{user_id}"
        assert checked(base, users, f"/v1/users/{uid}")[0] == 200
        assert checked(base, users, f"/v1/users/{uid}?as_of={want[uid]['last'] + 1}")[0] == 200
        assert checked(base, "/v1/models", "/v1/models")[0] == 200
        assert checked(base, "/v1/decide", "/v1/decide", "POST", b'{"user_id": "u"}')[0] == 200
        assert checked(base, "/healthz", "/healthz")[0] == 200
        assert checked(base, "/readyz", "/readyz")[0] == 200

        # errors: unknown user, bad input, one-line JSON reasons
        status, body = checked(base, users, "/v1/users/nobody-at-all")
        assert status == 404 and "unknown user" in body["error"]
        status, body = checked(base, users, f"/v1/users/{'x' * 65}")
        assert status == 400 and "user_id" in body["error"]
        status, body = checked(base, users, f"/v1/users/{uid}?as_of=yesterday")
        assert status == 400 and "as_of" in body["error"]

        # models: the versions the predictions were made with
        models = {m["name"]: m["version"] for m in client.models()["models"]}
        assert models == {p["model_name"]: p["model_version"] for p in preds}

        # decide: logged to bandit-decisions and ClickHouse, marked as the API's
        d = client.decide(uid, context={"device": "mobile"}, request_id="api-test-1")
        assert d["placement"] in ("top_banner", "sidebar", "in_article", "footer")
        assert 0 < d["propensity"] <= 1 and d["policy"] == "thompson-api" and d["context"] == "mobile"
        again = client.decide(uid, context={"device": "mobile"}, request_id="api-test-1")
        assert (again["decision_id"], again["placement"], again["propensity"]) == (
            d["decision_id"],
            d["placement"],
            d["propensity"],
        )  # no new ad events: same posterior, same seeded draw
        only = client.decide(uid, placements=["sidebar"])
        assert only["placement"] == "sidebar" and only["propensity"] == pytest.approx(1.0)
        assert only["context"] == "unknown"
        logged = [
            orjson.loads(m.value())
            for m in consume(
                kafka_bootstrap,
                f"{prefix}bandit-decisions",
                until=lambda got: sum(b'"thompson-api"' in m.value() for m in got) >= 4,
                timeout_s=30,
            )
        ]
        mine = [x for x in logged if x["policy"] == "thompson-api" and x["user_id"] == uid]
        assert {x["decision_id"] for x in mine} == {d["decision_id"], only["decision_id"]}
        wait(
            lambda: bool(
                query_worker_clickhouse(
                    worker_env,
                    "SELECT count() AS n FROM publisher.bandit_decisions FINAL "
                    f"WHERE decision_id = '{d['decision_id']}' AND policy = 'thompson-api' AND propensity > 0",
                )[0]["n"]
            ),
            30,
            "the API's decision did not reach ClickHouse",
        )
        for bad, reason in (
            (b"{", "not JSON"),
            (b"[]", "JSON object"),
            (b'{"user_id": ""}', "user_id"),
            (b'{"user_id": "u", "placements": ["nowhere"]}', "unknown placement"),
            (b'{"user_id": "u", "colour": 1}', "unknown field"),
        ):
            status, body = checked(base, "/v1/decide", "/v1/decide", "POST", bad)
            assert status == 400 and reason in body["error"], (bad, body)
        status, body = checked(base, "/v1/decide", "/v1/decide", "POST", b'{"user_id": "' + b"u" * 20_000 + b'"}')
        assert status == 413 and "STREAM_API_MAX_BODY_BYTES" in body["error"]

        # probes and metrics on the same port
        assert call(f"{base}/healthz")[0] == 200
        assert call(f"{base}/readyz")[0] == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'stream_api_requests_total{route="/v1/users/{user_id}",status="200"}' in text
        assert "stream_api_decision_log_seconds_count 4.0" in text  # each decision made, once logged


def test_two_workers_answer_for_each_others_users(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    prefix, group = worker_env["STREAM_TOPIC_PREFIX"], worker_env["STREAM_WORKER_ID"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, worker_env)
    events = sim_events[:3000]
    produce(kafka_bootstrap, topic, payloads(events))
    want = truth(events)
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    envs = [
        {
            **api_env(worker_env, p),
            "STREAM_CHDB_PATH": str(tmp_path / f"chdb{i}"),
            "STREAM_WORKER_SESSION_TIMEOUT_S": "6",
        }
        for i, p in enumerate(ports)
    ]
    a = WorkerProcess(kafka_bootstrap, envs[0], tmp_path / "a.log", instance="a")
    b = WorkerProcess(kafka_bootstrap, envs[1], tmp_path / "b.log", instance="b")
    users = sorted(want)
    try:
        a.start()
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 120, "worker a did not process every event")
        wait(WorkerClient(urls[0]).ready, 60, "worker a not ready")
        before = {u: call(f"{urls[0]}/v1/users/{u}")[2] for u in users}
        assert all(body["features"]["total_events"] == want[u]["events"] for u, body in before.items())

        # While b joins, both are polled: every answer is the right one or a 503 with Retry-After.
        seen: dict[str, list[tuple[int, str | None]]] = {url: [] for url in urls}
        wrong: list[Any] = []
        stop = threading.Event()

        def poll(url: str) -> None:
            i = 0
            while not stop.is_set():
                uid = users[i % len(users)]
                i += 1
                try:
                    status, headers, body = call(f"{url}/v1/users/{uid}")
                except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
                    if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
                        # neither refused nor answered: a worker must answer (503) while b joins
                        wrong.append((url, uid, "no answer within 10 s"))
                    continue  # refused: b not listening yet
                seen[url].append((status, headers.get("X-Stream-Served-By")))
                try:
                    check_answer("/v1/users/{user_id}", "GET", status, headers, body)
                except Exception as exc:  # not as documented (AssertionError or ValidationError)
                    wrong.append((url, uid, status, str(exc)[:300]))
                if status == 503:
                    if "Retry-After" not in headers:
                        wrong.append((url, uid, status, headers))
                elif status != 200 or body["features"]["total_events"] != want[uid]["events"]:
                    wrong.append((url, uid, status, body))

        pollers = [threading.Thread(target=poll, args=(url,), daemon=True) for url in urls]
        for t in pollers:
            t.start()
        b.start()

        def both_own() -> bool:
            served = {call(f"{urls[0]}/v1/users/{u}")[1].get("X-Stream-Served-By") for u in users}
            return served == set(urls)

        wait(both_own, 120, "the users were not split between both workers")
        stop.set()
        for t in pollers:
            t.join(30)
        assert not wrong, wrong[:5]
        for url in urls:
            statuses = [st for st, _ in seen[url]]
            print(f"{url} while b joined: {len(statuses)} answers, {statuses.count(503)} of them 503")
        b_statuses = [s for s, _ in seen[urls[1]]]
        assert 503 in b_statuses and b_statuses.index(503) < b_statuses.index(200)  # b said 503 until it could answer

        # After the rebalance: the same answer from either worker, made by the owner, right for every user.
        served: dict[str, int] = defaultdict(int)
        for uid in users:
            sa, ha, body_a = call(f"{urls[0]}/v1/users/{uid}")
            sb, hb, body_b = call(f"{urls[1]}/v1/users/{uid}")
            assert sa == sb == 200, (uid, sa, sb)
            assert ha["X-Stream-Served-By"] == hb["X-Stream-Served-By"]
            served[ha["X-Stream-Served-By"]] += 1
            check_user(body_a, uid, want[uid])
            assert body_a["features"] == body_b["features"] and body_a["offset"] == body_b["offset"]
            assert body_a["features"] == before[uid]["features"]  # nothing new came: the owner's state is the same
        assert set(served) == set(urls), served
        with pytest.raises(ApiError) as info:
            WorkerClient(urls[1]).user("nobody-at-all")
        assert info.value.status == 404
    finally:
        b.stop()
        a.stop()


def test_api_decisions_and_their_outcomes_reach_off_policy_estimates(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Decide over HTTP, produce what an ad server would (docs/api.md), and run the OPE over ClickHouse."""
    import subprocess
    import sys

    import numpy as np

    from stream.client import outcome_events
    from stream.config import load_settings
    from stream.tools.ope import decision_ope, read_decision_log

    prefix, group = worker_env["STREAM_TOPIC_PREFIX"], worker_env["STREAM_WORKER_ID"]
    topic = f"{prefix}session-events"
    create_topics(kafka_bootstrap, worker_env)
    events = sim_events[:1500]
    produce(kafka_bootstrap, topic, payloads(events))
    users = sorted({e["user_id"] for e in events})
    t0 = max(e["event_time"] for e in events) + 60_000
    port = free_port()
    rng = np.random.default_rng(18)
    with WorkerProcess(kafka_bootstrap, api_env(worker_env, port), tmp_path / "worker.log"):
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 120, "the worker did not process every event")
        client = WorkerClient(f"http://127.0.0.1:{port}")
        wait(client.ready, 60, "the worker not ready")
        # 60 decisions; the test's ad server shows 50 as decided (a seeded fifth of them clicked),
        # shows 5 in another placement than decided, and never shows 5
        want: dict[str, tuple[str, str, float, float]] = {}  # decision id -> (context, placement, propensity, click)
        other = never = 0
        outcomes: list[dict[str, Any]] = []
        for i in range(60):
            device = ("mobile", "desktop", "tablet")[i % 3]
            d = client.decide(users[i % len(users)], context={"device": device}, request_id=f"ope-{i}")
            assert d["policy"] == "thompson-api" and 0 < d["propensity"] <= 1
            shown_at = t0 + i * 1000
            if i % 12 == 5:
                never += 1
                continue
            if i % 12 == 7:
                other += 1
                moved = {**d, "placement": next(p for p in ("top_banner", "sidebar") if p != d["placement"])}
                outcomes += outcome_events(moved, f"ope-s{i}", shown_at, shown_at + 2000, device)
                continue
            click = bool(rng.random() < 0.2)
            outcomes += outcome_events(d, f"ope-s{i}", shown_at, shown_at + 2000 if click else None, device)
            want[d["decision_id"]] = (device, d["placement"], d["propensity"], float(click))
        assert len(want) == 50 and 0 < sum(w[3] for w in want.values()) < 50
        produce(kafka_bootstrap, topic, payloads(outcomes))
        wait(lambda: all_processed(kafka_bootstrap, group, topic), 60, "the worker did not process the outcomes")

        window_ms = load_settings().click_join_window_ms

        def logged() -> Any:
            with worker_clickhouse(worker_env) as ch:
                return read_decision_log(ch, "thompson-api", window_ms)

        wait(lambda: len(logged().rows) == 50, 60, "the decisions and their outcomes did not reach ClickHouse")
        log = logged()
        assert (log.decisions, log.not_shown, log.other_placement) == (60, never, other)
        got = {r.decision_id: (r.device_type, r.placement, r.propensity, r.click) for r in log.rows.itertuples()}
        assert got == want  # every shown API decision, its logged propensity exactly, its click

        # the estimates are those of the test's own (context, placement, propensity, click) rows
        est = {r.policy: r for r in decision_ope(log, ("top_banner", "sidebar", "in_article", "footer"))}
        rows = list(want.values())
        for arm in ("top_banner", "sidebar", "in_article", "footer"):
            terms = [c / mu if p == arm else 0.0 for _, p, mu, c in rows]
            weights = [1 / mu if p == arm else 0.0 for _, p, mu, _ in rows]
            assert est[f"always {arm}"].ips.value == pytest.approx(sum(terms) / len(rows))
            if sum(weights):
                assert est[f"always {arm}"].snips.value == pytest.approx(sum(terms) / sum(weights))
            assert est[f"always {arm}"].ips.n == 50

        # the same from the command line
        out = subprocess.run(
            [sys.executable, "-m", "stream", "ope", "--policy", "thompson-api"],
            env={**os.environ, **api_env(worker_env, port), "STREAM_KAFKA_BOOTSTRAP": kafka_bootstrap},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        clicks = int(sum(w[3] for w in want.values()))
        assert f"decisions of policy thompson-api: 60; shown as decided: 50 ({clicks} clicked)" in out.stdout

"""The worker against the real broker: predictions, dead letters, crash, rebalance, promotion."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.models.registry import ModelRegistry
from stream.testing import WorkerProcess, consume, produce, scrape_metrics, scrape_series
from tests.support.models import offline_scores
from tests.support.waits import wait
from tests.worker.conftest import create_topics as _topics
from tests.worker.conftest import expected_predictions as _expected
from tests.worker.conftest import payloads as _payloads
from tests.worker.conftest import query_worker_clickhouse

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _predictions(bootstrap: str, prefix: str, n: int, timeout_s: float = 120) -> list[dict[str, Any]]:
    """Predictions until ``n`` distinct (model, event) pairs arrived (duplicates do not count)."""
    seen: set[tuple[str, str]] = set()
    read = [0]  # messages already added to ``seen``

    def distinct(got: list[Any]) -> int:
        seen.update(_key(m) for m in got[read[0] :])
        read[0] = len(got)
        return len(seen)

    msgs = consume(
        bootstrap, f"{prefix}predictions", until=lambda got: distinct(got) >= n, timeout_s=timeout_s, idle_s=2.0
    )
    return [orjson.loads(m.value()) for m in msgs]


def _key(msg: Any) -> tuple[str, str]:
    p = orjson.loads(msg.value())
    return p["model_name"], p["event_id"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics_once(port: int, name: str, timeout_s: float = 30) -> dict[str, float]:
    """The worker's metrics once ``name`` is among them."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = scrape_metrics(port)
        if name in metrics or time.monotonic() > deadline:
            return metrics
        time.sleep(0.5)


def _lag_partitions_once_disjoint(ports: tuple[int, ...], topic: str, timeout_s: float = 20) -> list[set[str]]:
    """Per worker, the partitions of ``topic`` it exports lag for, once no two workers export the same one.

    The lag is set by a 5 s timer: a partition assigned in the rebalance may take that long to appear.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        owned = [
            {
                labels["partition"]
                for labels, _ in scrape_series(port, "stream_consumer_lag_messages")
                if labels["topic"] == topic
            }
            for port in ports
        ]
        if (all(owned) and not set.intersection(*owned)) or time.monotonic() > deadline:
            return owned
        time.sleep(0.5)


def _unique_articles(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every article event its own article, so no click row depends on cross-partition timing."""
    return [{**e, "article_id": f"a-{e['event_id']}"} if "article_id" in e else e for e in events]


def test_every_scorable_event_scored_once_and_matches_offline_scoring(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], models_dir: Path, tmp_path: Path
) -> None:
    events = _unique_articles(sim_events)
    prefix = worker_env["STREAM_TOPIC_PREFIX"]
    _topics(kafka_bootstrap, worker_env)
    bad = [
        (b"u-bad", b"{not json"),
        (b"u-bad", orjson.dumps({"event_type": "teleport", "user_id": "x"})),
        (b"u-bad", b"x" * 20_000),
        (b"u-bad", orjson.dumps({**events[0], "event_time": "yesterday"})),
        (b"u-bad", None),
    ]  # a tombstone
    payloads = _payloads(events)
    # bad records in the middle: the events after them must still be processed
    produce(kafka_bootstrap, f"{prefix}session-events", payloads[:3000] + bad + payloads[3000:])
    expected = _expected(events)
    port = _free_port()
    with WorkerProcess(kafka_bootstrap, {**worker_env, "STREAM_WORKER_WEB_PORT": str(port)}, tmp_path / "worker.log"):
        preds = _predictions(kafka_bootstrap, prefix, sum(expected.values()))
        dlq = consume(kafka_bootstrap, f"{prefix}session-events-dlq", until=lambda got: len(got) >= 5, timeout_s=30)
        metrics = _metrics_once(port, "stream_consumer_lag_messages")  # set by a 5 s timer
    got = Counter((p["model_name"], p["event_id"]) for p in preds)
    assert got == expected  # exactly one prediction per scorable event and model
    assert metrics["process_resident_memory_bytes"] > 0
    assert metrics["stream_score_batch_size_rows_count"] > 0
    assert metrics["stream_consumer_lag_messages"] >= 0

    reasons = sorted(orjson.loads(m.value())["error_kind"] for m in dlq)
    assert reasons == ["invalid", "malformed", "malformed", "oversized", "unknown_type"]
    envelope = next(orjson.loads(m.value()) for m in dlq if orjson.loads(m.value())["error_kind"] == "invalid")
    assert "event_time" in envelope["reason"]

    offline = offline_scores(models_dir, events)
    versions = {name: ModelRegistry(models_dir).resolve(name).version for name in offline}
    for p in preds:
        assert p["model_version"] == versions[p["model_name"]]
        assert abs(p["score"] - offline[p["model_name"]][p["event_id"]]) <= 1e-6, p


def test_article_popularity_reaches_click_features(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], models_dir: Path, tmp_path: Path
) -> None:
    """Popularity reaches click features through the repartition topic and the GlobalTable.

    One input partition, so the article agent sees events in input order and its state can be
    compared exactly with an in-order replay (with several partitions, a fast replay of days of
    history skews partitions by more than the article lateness bound; see agents/articles.py).
    The probes' click rows wait until the history's article events before their watermark are
    folded (STREAM_ARTICLE_WAIT_MS, docs/worker.md "Staleness contract"): the worker waits on that,
    not the test on a clock.
    """
    worker_env = {**worker_env, "STREAM_TOPIC_PARTITIONS": "1", "STREAM_ARTICLE_WAIT_MS": "60000"}
    prefix = worker_env["STREAM_TOPIC_PREFIX"]
    _topics(kafka_bootstrap, worker_env)
    history = sim_events[:6000]
    popular = Counter(e["article_id"] for e in history if e["event_type"] == "article_impression")
    last_t = history[-1]["event_time"]
    probes = [
        {
            "schema_version": 1,
            "event_id": f"probe-{i}",
            "event_type": "article_impression",
            "user_id": f"probe-user-{i}",
            "session_id": f"probe-s-{i}",
            "event_time": last_t + 1000 + i,
            "article_id": aid,
            "position": 1,
            "device": {"type": "mobile"},
        }
        for i, (aid, _) in enumerate(popular.most_common(20))
    ]
    expected_history = sum(_expected(history).values())
    with WorkerProcess(kafka_bootstrap, worker_env, tmp_path / "worker.log"):
        produce(kafka_bootstrap, f"{prefix}session-events", _payloads(history))
        _predictions(kafka_bootstrap, prefix, expected_history)
        produce(kafka_bootstrap, f"{prefix}session-events", _payloads(probes))
        preds = _predictions(kafka_bootstrap, prefix, expected_history + len(probes))
    offline = offline_scores(models_dir, history + probes)["click"]
    probe_scores = {p["event_id"]: p["score"] for p in preds if p["event_id"].startswith("probe-")}
    assert set(probe_scores) == {p["event_id"] for p in probes}
    for eid, score in probe_scores.items():
        assert abs(score - offline[eid]) <= 1e-6, eid


def test_article_agent_keeps_up_while_the_input_has_a_backlog(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Article records are not held back until the whole input backlog is processed.

    faust hands every record of one fetch to the streams before it fetches again; with a fetch
    that holds a partition's whole backlog, the article agent got its first record only after the
    last prediction. With fetches capped per partition, it folds articles from early on. (Small
    stream buffers, so that this small backlog does not fit in them: it would then be handed over
    at once, whatever the fetch size. Small batches too: under a backlog batches fill up to
    ``STREAM_SCORE_BATCH_SIZE``, and four partitions' first batches of 500 would hold a third of
    this backlog before any article event is forwarded.)
    """
    worker_env = {
        **worker_env,
        "STREAM_CONSUMER_MAX_FETCH_BYTES": "16384",
        "STREAM_STREAM_BUFFER_SIZE": "200",
        "STREAM_SCORE_BATCH_SIZE": "100",
    }
    prefix = worker_env["STREAM_TOPIC_PREFIX"]
    _topics(kafka_bootstrap, worker_env)
    produce(kafka_bootstrap, f"{prefix}session-events", _payloads(sim_events))  # the backlog
    n = sum(_expected(sim_events).values())
    with WorkerProcess(kafka_bootstrap, worker_env, tmp_path / "worker.log"):
        preds = consume(kafka_bootstrap, f"{prefix}predictions", until=lambda got: len(got) >= n, timeout_s=120)
        stats = consume(
            kafka_bootstrap,
            f"{worker_env['STREAM_WORKER_ID']}-article-stats-changelog",
            until=lambda got: len(got) > 0,
            timeout_s=30,
        )
    first_article_write = min(m.timestamp()[1] for m in stats)
    before = sum(m.timestamp()[1] < first_article_write for m in preds) / len(preds)
    print(f"predictions published before the first article-stats write: {before:.0%}")
    assert before < 0.6  # measured: about 35 % with the cap, about 80 % with a fetch that holds it all


def test_sigkill_mid_stream_then_restart_scores_everything_and_clickhouse_counts_once(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], models_dir: Path, tmp_path: Path
) -> None:
    events = _unique_articles(sim_events)  # click scores then depend on the user state only, as in offline
    prefix = worker_env["STREAM_TOPIC_PREFIX"]
    _topics(kafka_bootstrap, worker_env)
    expected = _expected(events)
    total = sum(expected.values())
    payloads = _payloads(events)
    half = len(payloads) // 2
    # Killed once ClickHouse has the rows of the first 40 % while the input still flows (live, paced so
    # that the worker keeps up): the events since the last commit are scored again after the restart,
    # and those the stored state already holds are marked replayed; some of their first rows may be
    # in ClickHouse (docs/worker.md, "Delivery", has the counts seen). A backlog would be processed
    # and committed before the kill.
    inserted = sum(_expected(events[: len(events) * 2 // 5]).values()) + sum(
        e["event_type"] == "ad_request" for e in events[: len(events) * 2 // 5]
    )  # predictions + decisions
    port = _free_port()

    def live_input() -> None:
        for i in range(0, half, 100):
            produce(kafka_bootstrap, f"{prefix}session-events", payloads[i : min(i + 100, half)])
            time.sleep(0.05)  # pacing the input, not waiting for a condition

    first = WorkerProcess(
        kafka_bootstrap, {**worker_env, "STREAM_WORKER_WEB_PORT": str(port)}, tmp_path / "worker-1.log"
    ).start()
    feeder = threading.Thread(target=live_input)
    try:
        first.wait_for_log("Ready", timeout_s=120)
        feeder.start()
        deadline = time.monotonic() + 120
        while _metrics_once(port, "stream_sink_rows_total").get("stream_sink_rows_total", 0) < inserted:
            assert time.monotonic() < deadline, "ClickHouse rows of the first 40 % not inserted within 120 s"
            time.sleep(0.02)
    finally:
        first.kill(signal.SIGKILL)
        if feeder.is_alive():
            feeder.join()
    produce(kafka_bootstrap, f"{prefix}session-events", payloads[half:])
    with WorkerProcess(kafka_bootstrap, worker_env, tmp_path / "worker-2.log"):
        preds = consume(
            kafka_bootstrap,
            f"{prefix}predictions",
            timeout_s=180,
            idle_s=3.0,
            until=lambda got: (
                {(orjson.loads(m.value())["model_name"], orjson.loads(m.value())["event_id"]) for m in got}
                >= set(expected)
            ),
        )
    published = [orjson.loads(m.value()) for m in preds]
    seen = Counter((p["model_name"], p["event_id"]) for p in published)
    assert set(seen) == set(expected)  # nothing left unscored
    duplicates = sum(seen.values()) - len(seen)
    print(f"\nduplicate predictions on the topic after SIGKILL + restart: {duplicates} of {sum(seen.values())}")
    rows = query_worker_clickhouse(
        worker_env, f"SELECT count() AS n, uniqExact(prediction_id) AS ids FROM `{'publisher'}`.predictions FINAL"
    )
    assert rows == [{"n": total, "ids": total}]

    # Re-scored events: only scores from the state before their event are unmarked, and FINAL keeps
    # such an exact row whenever one reached ClickHouse (before the fix it kept the later, replayed one).
    offline = offline_scores(models_dir, events)
    select = "SELECT prediction_id, model_name, event_id, score, replayed FROM `publisher`.predictions"
    final = {r["prediction_id"]: r for r in query_worker_clickhouse(worker_env, select + " FINAL")}
    stored = query_worker_clickhouse(worker_env, select)
    exact = {r["prediction_id"]: r["score"] for r in stored if not r["replayed"]}
    for r in stored + [{**p, "replayed": int(p.get("replayed", False))} for p in published]:
        if not r["replayed"]:
            assert abs(r["score"] - offline[r["model_name"]][r["event_id"]]) <= 1e-6, r
    replaced = [pid for pid in exact if final[pid]["replayed"] or final[pid]["score"] != exact[pid]]
    assert replaced == []
    both = len(exact.keys() & {r["prediction_id"] for r in stored if r["replayed"]})
    only_replayed = sum(r["replayed"] for r in final.values())
    differing = sum(abs(r["score"] - offline[r["model_name"]][r["event_id"]]) > 1e-6 for r in final.values())
    print(
        f"ClickHouse: {both} predictions with an exact and a replayed row (FINAL: the exact one); "
        f"{only_replayed} with a replayed row only (FINAL scores differing from offline: {differing})"
    )


def test_second_worker_rebalances_and_recovered_state_matches_uninterrupted_run(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], models_dir: Path, tmp_path: Path
) -> None:
    from confluent_kafka.admin import AdminClient

    prefix = worker_env["STREAM_TOPIC_PREFIX"]
    _topics(kafka_bootstrap, worker_env)
    half = len(sim_events) // 2
    first_half, second_half = sim_events[:half], sim_events[half:]
    ports = _free_port(), _free_port()
    with WorkerProcess(kafka_bootstrap, {**worker_env, "STREAM_WORKER_WEB_PORT": str(ports[0])}, tmp_path / "a.log"):
        produce(kafka_bootstrap, f"{prefix}session-events", _payloads(first_half))
        _predictions(kafka_bootstrap, prefix, sum(_expected(first_half).values()))
        env_b = {
            **worker_env,
            "STREAM_STATE_DIR": str(tmp_path / "state-b"),
            "STREAM_CHDB_PATH": str(tmp_path / "ch-b"),
            "STREAM_WORKER_WEB_PORT": str(ports[1]),
        }
        with WorkerProcess(kafka_bootstrap, env_b, tmp_path / "b.log", instance="1"):
            group = worker_env["STREAM_WORKER_ID"]
            admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
            members: list[Any] = []
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                desc = admin.describe_consumer_groups([group])[group].result()
                members = [
                    m
                    for m in desc.members
                    if any(tp.topic == f"{prefix}session-events" for tp in m.assignment.topic_partitions)
                ]
                if len(members) == 2 and str(desc.state).endswith("STABLE"):
                    break
                time.sleep(1)
            assert len(members) == 2, "both workers own session-events partitions"
            produce(kafka_bootstrap, f"{prefix}session-events", _payloads(second_half))
            preds = _predictions(kafka_bootstrap, prefix, sum(_expected(sim_events).values()), timeout_s=90)
            # each worker exports lag for the partitions it owns, none for those the other one took
            owned = _lag_partitions_once_disjoint(ports, f"{prefix}session-events")
            assert all(owned) and not set.intersection(*owned), owned
    offline = offline_scores(models_dir, sim_events)
    # per (model, event), the exact score: a record marked "replayed" (scored again by a worker whose
    # recovered state already held the event, docs/worker.md "Delivery") yields to an unmarked one,
    # as ClickHouse FINAL and the schema tell consumers to do
    latest: dict[tuple[str, str], float] = {}
    exact: set[tuple[str, str]] = set()
    for p in preds:
        key = (p["model_name"], p["event_id"])
        if not p.get("replayed"):
            latest[key] = p["score"]
            exact.add(key)
        elif key not in exact:
            latest[key] = p["score"]
    expected = set(_expected(sim_events))
    missing = expected - set(latest)
    print(f"\nunscored after the rebalance: {len(missing)} of {len(expected)}")
    assert set(latest) <= expected
    # churn and engagement are functions of the (recovered) user state only
    state_scored = [k for k in latest if k[0] in ("churn", "engagement")]
    differ = sorted(k for k in state_scored if abs(latest[k] - offline[k[0]][k[1]]) > 1e-6)
    print(f"scores that differ from an uninterrupted run: {len(differ)} of {len(state_scored)}")
    # docs/worker.md, "Rebalances": none unscored and none scored from the wrong state (issue 14, defect 11:
    # this test used to accept 0.5 % of each).
    assert sorted(missing) == [], f"{len(missing)} of {len(expected)} unscored"
    assert differ == [], f"{len(differ)} of {len(state_scored)} scores differ from an uninterrupted run"
    assert len(state_scored) > 400


def test_model_promotion_is_picked_up_and_a_mismatched_model_is_refused(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    import shutil

    from tests.support.models import FEATURES, train_and_register

    models = tmp_path / "models"
    shutil.copytree(worker_env["STREAM_MODELS_DIR"], models)
    env = {**worker_env, "STREAM_MODELS_DIR": str(models)}
    prefix = env["STREAM_TOPIC_PREFIX"]
    _topics(kafka_bootstrap, env)
    k = len(sim_events) // 3
    first, second, third = sim_events[:k], sim_events[k : 2 * k], sim_events[2 * k :]
    registry = ModelRegistry(models)
    v1 = registry.resolve("churn").version
    with WorkerProcess(kafka_bootstrap, env, tmp_path / "w.log") as worker:
        produce(kafka_bootstrap, f"{prefix}session-events", _payloads(first))
        n1 = sum(_expected(first).values())
        _predictions(kafka_bootstrap, prefix, n1)
        v2 = train_and_register(models, sim_events, seed=99, rounds=7)["churn"]
        worker.wait_for_log(f"loaded model churn version {v2}", timeout_s=30)  # reloads every 1 s here
        produce(kafka_bootstrap, f"{prefix}session-events", _payloads(second))
        n2 = n1 + sum(_expected(second).values())
        _predictions(kafka_bootstrap, prefix, n2)
        # a churn model built on the click feature list must be refused; v2 keeps serving
        bad = registry.register(
            "churn",
            "xgboost",
            lambda p: shutil.copy(registry.resolve("click").model_file, p),
            {"features": FEATURES["click"].to_dict()},
        )
        registry.set_alias("churn", "production", bad.version)
        worker.wait_for_log(f"refusing model churn version {bad.version}", timeout_s=30)
        produce(kafka_bootstrap, f"{prefix}session-events", _payloads(third))
        preds = _predictions(kafka_bootstrap, prefix, n2 + sum(_expected(third).values()))
    churn_version = {p["event_id"]: p["model_version"] for p in preds if p["model_name"] == "churn"}
    ids = [{e["event_id"] for e in part if e["event_type"] == "session_end"} for part in (first, second, third)]
    assert {churn_version[i] for i in ids[0]} == {v1}
    assert {churn_version[i] for i in ids[1]} == {v2}
    assert {churn_version[i] for i in ids[2]} == {v2}


def _ad_traffic(n: int, ctr: dict[str, float], seed: int) -> list[dict[str, Any]]:
    """Ad requests, each followed by an impression on a uniformly chosen placement (the site's
    logging policy) and a click with the placement's true CTR."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arms = list(ctr)
    out: list[dict[str, Any]] = []
    t = 1_767_225_600_000
    for i in range(n):
        user, rid = f"ad-user-{i % 97}", f"req-{i}"
        base = {
            "schema_version": 1,
            "user_id": user,
            "session_id": f"ad-s-{i % 97}",
            "request_id": rid,
            "device": {"type": "mobile"},
        }
        placement = arms[int(rng.integers(len(arms)))]
        out.append({**base, "event_id": f"{rid}-r", "event_type": "ad_request", "event_time": t})
        out.append(
            {
                **base,
                "event_id": f"{rid}-i",
                "event_type": "ad_impression",
                "event_time": t + 50,
                "placement": placement,
            }
        )
        if rng.random() < ctr[placement]:
            out.append(
                {
                    **base,
                    "event_id": f"{rid}-c",
                    "event_type": "ad_click",
                    "event_time": t + 900,
                    "placement": placement,
                }
            )
        t += 1000
    return out


def test_bandit_decisions_shift_toward_the_best_arm_and_land_in_clickhouse(
    kafka_bootstrap: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    prefix = worker_env["STREAM_TOPIC_PREFIX"]
    _topics(kafka_bootstrap, worker_env)
    ctr = {"top_banner": 0.04, "sidebar": 0.04, "in_article": 0.12, "footer": 0.04}
    traffic = _ad_traffic(6000, ctr, seed=5)
    n = sum(e["event_type"] == "ad_request" for e in traffic)
    count = "SELECT count() AS n FROM `publisher`.bandit_decisions"
    with WorkerProcess(kafka_bootstrap, worker_env, tmp_path / "w.log"):
        # in slices, each once the previous one is decided, so later requests are decided after
        # earlier rewards were counted
        for i in range(0, len(traffic), 2000):
            produce(kafka_bootstrap, f"{prefix}session-events", _payloads(traffic[i : i + 2000]))
            decided = sum(e["event_type"] == "ad_request" for e in traffic[: i + 2000])
            msgs = consume(
                kafka_bootstrap,
                f"{prefix}bandit-decisions",
                timeout_s=120,
                until=lambda got, decided=decided: len(got) >= decided,
            )
        # the same decisions reach ClickHouse (the sink's rows settle the batch: by now they are due)
        wait(
            lambda: query_worker_clickhouse(worker_env, count) == [{"n": n}],
            60,
            f"{n} bandit decision rows in the worker's ClickHouse",
        )
    decisions = sorted((orjson.loads(m.value()) for m in msgs), key=lambda d: int(d["request_id"][4:]))
    assert len({d["request_id"] for d in decisions}) == n
    keys = ["decision_id", "request_id", "user_id", "context", "placement", "policy"]
    rows = query_worker_clickhouse(
        worker_env, f"SELECT {', '.join(keys)}, propensity FROM `publisher`.bandit_decisions FINAL"
    )
    assert sorted(tuple(r[k] for k in keys) for r in rows) == sorted(tuple(d[k] for k in keys) for d in decisions)
    propensity = {d["decision_id"]: d["propensity"] for d in decisions}
    assert all(abs(r["propensity"] - propensity[r["decision_id"]]) < 1e-9 for r in rows)  # JSON keeps 10 digits
    early = [d["placement"] == "in_article" for d in decisions[:100]]
    late = [d["placement"] == "in_article" for d in decisions[-1500:]]
    share_early, share_late = sum(early) / len(early), sum(late) / len(late)
    print(f"\nbest-arm share: first 100 decisions {share_early:.2f}, last 1500 {share_late:.2f}")
    # The first decision the worker made used the prior alone: every arm equally likely. (How fast
    # the share rises after it depends on how the four partitions' first batches interleave, so
    # the early share is printed, not asserted.)
    first = min(decisions, key=lambda d: d["decided_at"])
    assert len(set(first["arm_means"].values())) == 1, first["arm_means"]
    assert abs(first["propensity"] - 0.25) < 1e-6, first
    assert share_late > 0.75, (share_early, share_late)
    best = [d for d in decisions[-1500:] if d["placement"] == "in_article"]
    assert sum(d["propensity"] for d in best) / len(best) > 0.7  # a confident posterior

"""Online quality and drift exported by a real worker on the real broker, against an offline computation.

The test builds the joined pairs itself, from the predictions topic and the input events, with
batch training's label definitions (an article_click of the same user, session and article within
CLICK_WINDOW_MS of the impression; ``labels.session_engagement`` of the session's events), and
scores them with scikit-learn. Every simulated session ends, so every click and engagement
prediction has its outcome: the worker's joined counts must equal the test's, and its AUC (click)
and R² (engagement) must equal scikit-learn's on those pairs. The waits watch /metrics and
ClickHouse; none sleeps a fixed time.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from sklearn.metrics import r2_score, roc_auc_score

from stream.clickhouse import local_server
from stream.kafka.embedded import free_port
from stream.state.labels import CLICK_WINDOW_MS, session_engagement
from stream.testing import WorkerProcess, consume, produce, scrape_series
from tests.support.models import train_and_register
from tests.support.waits import wait
from tests.worker.conftest import create_topics, expected_predictions, payloads, query_worker_clickhouse

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def profiled_models(tmp_path_factory: pytest.TempPathFactory, sim_events: list[dict[str, Any]]) -> Path:
    """Models like the suite's, each version with a reference profile (so the worker runs drift)."""
    d = tmp_path_factory.mktemp("profiled-models")
    train_and_register(d, sim_events, seed=3, profile=True)
    return d


def offline_pairs(events: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, list[tuple]]:
    """model -> [(outcome, score)] of every click and engagement prediction, labelled from the events."""
    clicks = defaultdict(list)
    sessions = defaultdict(list)
    for e in events:
        sessions[e["session_id"]].append(e)
        if e["event_type"] == "article_click":
            clicks[(e["user_id"], e["session_id"], e["article_id"])].append(e["event_time"])
    out: dict[str, list[tuple]] = {"click": [], "engagement": []}
    for p in predictions:
        if p["model_name"] == "click":
            t = p["event_time"]
            hit = any(t <= tc <= t + CLICK_WINDOW_MS for tc in clicks[(p["user_id"], p["session_id"], p["article_id"])])
            out["click"].append((float(hit), p["score"]))
        elif p["model_name"] == "engagement":
            out["engagement"].append((session_engagement(sessions[p["session_id"]]), p["score"]))
    return out


def _series(port: int, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The series of ``name`` keyed by the values of ``labels``, in that order."""
    try:
        return {tuple(got[k] for k in labels): v for got, v in scrape_series(port, name)}
    except OSError:
        return {}


def test_online_auc_and_r2_equal_scikit_learn_on_the_same_joined_pairs(
    kafka_bootstrap: str, worker_env: dict[str, str], sim_events: list[dict[str, Any]], profiled_models: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    port = free_port()
    env = {
        **worker_env,
        "STREAM_MODELS_DIR": str(profiled_models),
        "STREAM_WORKER_WEB_PORT": str(port),
        "STREAM_QUALITY_WINDOW": "100000",  # every pair of the run in one window
        "STREAM_DRIFT_WINDOW": "500",
        "STREAM_MONITORING_INTERVAL_S": "1",
    }
    prefix = env["STREAM_TOPIC_PREFIX"]
    events = sim_events
    assert sum(e["event_type"] == "session_start" for e in events) == sum(
        e["event_type"] == "session_end" for e in events
    )  # every session ends: every prediction gets its outcome
    create_topics(kafka_bootstrap, env)
    expected = expected_predictions(events)
    # produced before the worker starts: its one assignment comes before its first batch (a
    # rebalance would drop the pending samples, by design)
    produce(kafka_bootstrap, f"{prefix}session-events", payloads(events))
    try:
        with WorkerProcess(kafka_bootstrap, env, tmp_path / "worker.log"):
            msgs = consume(
                kafka_bootstrap,
                f"{prefix}predictions",
                until=lambda got: len(got) >= sum(expected.values()),
                timeout_s=180,
            )
            preds = list({p["prediction_id"]: p for p in (orjson.loads(m.value()) for m in msgs)}.values())
            assert {(p["model_name"], p["event_id"]) for p in preds} == set(expected)
            pairs = offline_pairs(events, preds)
            version = {p["model_name"]: p["model_version"] for p in preds}
            n_click, n_eng = len(pairs["click"]), len(pairs["engagement"])
            assert n_click > 1000 and n_eng > 200
            assert 0 < sum(y for y, _ in pairs["click"]) < n_click  # both classes

            def window_complete() -> bool:
                got = _series(port, "stream_model_quality_window_pairs", "model", "version")
                return got.get(("click", version["click"])) == n_click and got.get(
                    ("engagement", version["engagement"])
                ) == float(n_eng)

            wait(window_complete, 120, f"{n_click} click and {n_eng} engagement pairs in the exported window")
            quality = _series(port, "stream_model_quality", "model", "version", "metric")
            joined = _series(port, "stream_outcomes_joined_total", "model", "version")
            drift_windows = _series(port, "stream_drift_windows_total", "model", "version")
            psi = _series(port, "stream_drift_psi", "model", "version", "feature")

            def rows_written() -> bool:
                try:
                    rows = query_worker_clickhouse(
                        env,
                        "SELECT model_name, pairs, auc, r2 FROM publisher.model_quality FINAL "
                        "ORDER BY computed_at DESC LIMIT 1 BY model_name",
                    )
                except Exception:  # no table yet
                    return False
                got = {r["model_name"]: r for r in rows}
                return got.get("click", {}).get("pairs") == n_click and got.get("engagement", {}).get("pairs") == n_eng

            wait(rows_written, 60, "the last quality rows in ClickHouse")
            latest = {
                r["model_name"]: r
                for r in query_worker_clickhouse(
                    env,
                    "SELECT model_name, pairs, auc, r2, toUnixTimestamp64Milli(window_end) AS end "
                    "FROM publisher.model_quality FINAL ORDER BY computed_at DESC LIMIT 1 BY model_name",
                )
            }
            drift_rows = query_worker_clickhouse(
                env, "SELECT model_name, count() AS n FROM publisher.feature_drift FINAL GROUP BY model_name"
            )
            dropped = _series(port, "stream_outcomes_dropped_total", "reason")
            # the stream's clock that `stream monitor` waits on: the newest event time processed
            newest = max(e["event_time"] for e in events) / 1000
            wait(
                lambda: _series(port, "stream_event_time_latest_seconds").get(()) == newest,
                30,
                f"stream_event_time_latest_seconds at {newest}",
            )
    finally:
        local_server.stop(Path(env["STREAM_CHDB_PATH"]))

    y, p = zip(*pairs["click"], strict=True)
    auc = roc_auc_score(y, p)
    y, p = zip(*pairs["engagement"], strict=True)
    r2 = r2_score(y, p)
    assert dropped == {}  # no pending sample given up
    assert joined[("click", version["click"])] == n_click
    assert joined[("engagement", version["engagement"])] == n_eng
    assert quality[("click", version["click"], "auc")] == pytest.approx(auc, abs=1e-9)
    assert quality[("engagement", version["engagement"], "r2")] == pytest.approx(r2, abs=1e-9)
    assert latest["click"]["auc"] == pytest.approx(auc, abs=1e-9)
    assert latest["engagement"]["r2"] == pytest.approx(r2, abs=1e-9)
    assert latest["click"]["end"] > 0
    # drift ran on every loaded version: windows of 500 scored rows, PSI per feature
    assert drift_windows[("click", version["click"])] == n_click // 500
    assert any(k[0] == "click" and k[2] == "prediction" for k in psi)
    assert {r["model_name"]: r["n"] for r in drift_rows}.get("click", 0) > 0

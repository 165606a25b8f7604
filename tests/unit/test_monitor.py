"""The worker's monitor (stream/worker/monitor.py) without Kafka: batches in, gauges, counters, rows and logs out.

Expected quality comes from scikit-learn on the pairs the test builds itself; drift from the
seeded streams of tests/monitoring (a 2-sd shift of one feature against its own reference).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.metrics import r2_score, roc_auc_score

from stream.models.scoring import Scored
from stream.monitoring import build_profile
from stream.worker.monitor import Monitor, MonitorMetrics
from stream.worker.outcomes import OutcomeJoiner
from stream.worker.processor import Outputs
from tests.monitoring.streams import NAMES, rows

T0 = 1_760_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _monitor(profiles=lambda m, v: None, clock: Clock | None = None, **kw) -> tuple[Monitor, CollectorRegistry]:
    reg = CollectorRegistry()
    mon = Monitor(MonitorMetrics(reg), OutcomeJoiner(), profiles, clock=clock or Clock(), **kw)
    return mon, reg


def _session(rng: np.random.Generator, i: int) -> tuple[list[dict], list[dict], float, list[tuple[float, float]]]:
    """One user's session: its events, the click and engagement predictions, the true engagement,
    and the (clicked, score) of its impressions."""
    uid, sid, t = f"u{i}", f"s{i}", T0 + i * 10_000_000
    base = {"user_id": uid, "session_id": sid}
    events = [{**base, "event_type": "session_start", "event_time": t, "article_id": None, "event_id": f"{sid}-0"}]
    preds = [{**base, "model_name": "engagement", "model_version": "2", "prediction_id": f"e{i}",
              "article_id": None, "event_time": t, "score": float(rng.normal(10, 3))}]  # fmt: skip
    clicks = []
    n_clicks = 0
    for k in range(3):
        ti = t + 1000 * (k + 1)
        imp = {**base, "event_type": "article_impression", "event_time": ti, "article_id": f"a{k}"}
        y = rng.random() < 0.3
        score = float(np.clip(0.3 + (0.3 if y else -0.1) + rng.normal(0, 0.2), 0.01, 0.99))
        events.append(imp)
        preds.append({**base, "model_name": "click", "model_version": "3", "prediction_id": f"c{i}-{k}",
                      "article_id": f"a{k}", "event_time": ti, "score": score})  # fmt: skip
        clicks.append((float(y), score))
        if y:
            n_clicks += 1
            events.append({**base, "event_type": "article_click", "event_time": ti + 60_000, "article_id": f"a{k}"})
    end = t + 120_000
    events.append({**base, "event_type": "session_end", "event_time": end, "article_id": None, "duration_ms": 120_000})
    return events, preds, 4.0 * n_clicks + 0.5 * 2, clicks


def test_quality_gauges_equal_scikit_learn_on_the_joined_pairs_and_rows_are_written() -> None:
    rng = np.random.default_rng(5)
    mon, reg = _monitor(quality_window=1000)
    clicks: list[tuple[float, float]] = []
    engagement: list[tuple[float, float]] = []
    for i in range(200):
        events, preds, y_eng, c = _session(rng, i)
        mon.observe(i % 4, Outputs(predictions=preds, events=events))
        clicks += c
        engagement.append((y_eng, preds[0]["score"]))
    quality, drift = mon.publish(now_ms=T0)
    value = reg.get_sample_value
    y, p = np.array(clicks).T
    assert value("stream_model_quality", {"model": "click", "version": "3", "metric": "auc"}) == pytest.approx(
        roc_auc_score(y, p), abs=1e-12
    )
    y, p = np.array(engagement).T
    assert value("stream_model_quality", {"model": "engagement", "version": "2", "metric": "r2"}) == pytest.approx(
        r2_score(y, p), abs=1e-12
    )
    assert value("stream_model_quality", {"model": "engagement", "version": "2", "metric": "auc"}) is None
    assert value("stream_outcomes_joined_total", {"model": "click", "version": "3"}) == 600
    assert value("stream_model_quality_window_pairs", {"model": "engagement", "version": "2"}) == 200
    assert value("stream_outcomes_pending_predictions") == 0
    assert drift == []
    by_model = {r["model_name"]: r for r in quality}
    assert set(by_model) == {"click", "engagement"} and by_model["click"]["pairs"] == 600
    assert by_model["click"]["window_end"] == T0 + 199 * 10_000_000 + 120_000  # epoch ms, as the sink takes them
    assert by_model["engagement"]["r2"] == pytest.approx(r2_score(y, p)) and by_model["engagement"]["auc"] is None
    assert mon.publish(now_ms=T0 + 1) == ([], [])  # nothing new: no rows


def test_revoked_pending_predictions_are_counted_as_dropped() -> None:
    mon, reg = _monitor()
    events, preds, _, _ = _session(np.random.default_rng(1), 0)
    mon.observe(2, Outputs(predictions=preds, events=events[:2]))  # the session goes on elsewhere
    assert mon.forget({2}) == 4  # its engagement and three click predictions
    mon.publish(now_ms=T0)
    assert reg.get_sample_value("stream_outcomes_dropped_total", {"reason": "revoked"}) == 4
    assert reg.get_sample_value("stream_outcomes_pending_predictions") == 0


def _scored(x: np.ndarray, p: np.ndarray, t0: int) -> Scored:
    return Scored("click", "3", x, p, t0 + np.arange(len(x), dtype=np.int64))


def test_drift_windows_export_psi_count_alarms_and_log_one_warning_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(7)
    x, p = rows(20_000, rng)
    profile = build_profile(NAMES, x, p)
    asked: list[tuple[str, str]] = []
    clock = Clock()

    def profiles(model: str, version: str):
        asked.append((model, version))
        return profile

    mon, reg = _monitor(profiles, clock, drift_window=500, warn_every_s=60)
    value = reg.get_sample_value
    same, sp = rows(500, rng)
    mon.observe(0, Outputs(scored=[_scored(same[:200], sp[:200], T0)]))
    mon.observe(0, Outputs(scored=[_scored(same[200:], sp[200:], T0 + 200)]))
    assert value("stream_drift_windows_total", {"model": "click", "version": "3"}) is None  # rows wait for a chunk
    drift = mon.publish(now_ms=T0)[1]  # or for the timer
    assert value("stream_drift_windows_total", {"model": "click", "version": "3"}) == 1
    assert value("stream_drift_alarms_total", {"model": "click", "version": "3", "feature": "normal"}) is None
    assert value("stream_drift_psi", {"model": "click", "version": "3", "feature": "normal"}) < 0.1
    with caplog.at_level(logging.WARNING):
        for k in range(3):  # three shifted windows within one minute: one line, then a count
            shifted, spp = rows(500, rng, shift=2.0)
            clock.now = 10.0 * k
            mon.observe(1, Outputs(scored=[_scored(shifted, spp, T0 + 1000 * (k + 1))]))
            drift += mon.publish(now_ms=T0)[1]
        clock.now = 61.0
        shifted, spp = rows(500, rng, shift=2.0)
        mon.observe(1, Outputs(scored=[_scored(shifted, spp, T0 + 5000)]))
        drift += mon.publish(now_ms=T0)[1]
    assert asked == [("click", "3")]  # once per version
    assert value("stream_drift_alarms_total", {"model": "click", "version": "3", "feature": "normal"}) == 4
    assert value("stream_drift_alarms_total", {"model": "click", "version": "3", "feature": "skewed"}) is None
    assert value("stream_drift_psi", {"model": "click", "version": "3", "feature": "normal"}) > 1.0
    assert value("stream_drift_ks", {"model": "click", "version": "3", "feature": "normal"}) > 0.5
    lines = [r.getMessage() for r in caplog.records if "feature drift" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "model click version 3" in lines[0] and "normal (PSI" in lines[0] and "skewed" not in lines[0]
    assert lines[1].endswith("(2 more drifted windows not logged)")
    assert len(drift) == 5 * len(profile.columns)
    assert sum(r["drifted"] for r in drift if r["feature"] == "normal") == 4


def test_a_version_without_profile_has_no_drift() -> None:
    mon, reg = _monitor()
    x, p = rows(2000, np.random.default_rng(3))
    mon.observe(0, Outputs(scored=[_scored(x, p, T0)]))
    mon.publish(now_ms=T0)
    assert mon.drift == {("click", "3"): None}
    assert reg.get_sample_value("stream_drift_windows_total", {"model": "click", "version": "3"}) is None


def test_a_loss_that_rises_is_detected_on_joined_outcomes() -> None:
    rng = np.random.default_rng(11)
    mon, reg = _monitor()

    def batch(i: int, informative: bool) -> Outputs:
        t = T0 + i * 10_000_000
        base = {"user_id": f"u{i}", "session_id": f"s{i}", "article_id": "a"}
        y = rng.random() < 0.3
        score = (0.9 if y else 0.1) if informative else float(rng.random())
        imp = {**base, "event_type": "article_impression", "event_time": t}
        pred = {**base, "model_name": "click", "model_version": "3", "prediction_id": f"c{i}", "event_time": t}
        events = [imp, {**base, "event_type": "article_click" if y else "session_end", "event_time": t + 1}]
        return Outputs(predictions=[{**pred, "score": score}], events=events)

    for i in range(2000):
        mon.observe(0, batch(i, informative=True))
    assert reg.get_sample_value("stream_loss_drift_detections_total", {"model": "click", "version": "3"}) is None
    for i in range(2000, 4000):
        mon.observe(0, batch(i, informative=False))
    assert reg.get_sample_value("stream_loss_drift_detections_total", {"model": "click", "version": "3"}) >= 1


def test_a_monitor_that_raises_skips_the_batch_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    mon, reg = _monitor()
    with caplog.at_level(logging.WARNING):
        mon.observe(0, Outputs(predictions=[{"model_name": "click"}]))  # no user, no score: a KeyError
    assert reg.get_sample_value("stream_monitoring_errors_total", {"error": "KeyError"}) == 1
    assert "monitoring skipped a batch of partition 0: KeyError" in caplog.text
    events, preds, _, _ = _session(np.random.default_rng(2), 0)
    mon.observe(0, Outputs(predictions=preds, events=events))  # and it goes on
    assert reg.get_sample_value("stream_outcomes_joined_total", {"model": "click", "version": "3"}) == 3

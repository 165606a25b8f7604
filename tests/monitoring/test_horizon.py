"""Churn and conversion quality at their horizon (``python -m stream outcomes``), on real chdb.

The test generates its own history (sessions with gaps of days to weeks, some conversions), writes
churn and conversion predictions at every ``session_end`` as the worker's sink would (two versions),
and computes each prediction's label itself from the events it generated: churned = no event of the
user in the 30 days after the prediction, converted = a newsletter_signup or subscription within 14
days. The expected AUC and log loss per window are scikit-learn's on those labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from stream.cli import main
from stream.clickhouse import insert_events, insert_records
from stream.monitoring.horizon import HORIZON_OUTCOMES, horizon_quality
from tests.support.chdb import fresh_database

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
WINDOW = 10 * DAY
DELAY = 3_600_000
HORIZON = {"churn": 30 * DAY, "conversion": 14 * DAY}


def _history(rng: np.random.Generator, users: int, days: int) -> list[dict[str, Any]]:
    """Sessions per user with exponential gaps (mean 2 to 25 days: many users go quiet for 30 days)."""
    events: list[dict[str, Any]] = []
    for u in range(users):
        mean_gap = rng.uniform(2, 25) * DAY
        t = T0 + int(rng.uniform(0, 10) * DAY)
        s = 0
        while t < T0 + days * DAY:
            sid = f"s{u}-{s}"
            kinds = ["session_start", *["article_view"] * int(rng.integers(1, 4))]
            if rng.random() < 0.08:
                kinds.append("newsletter_signup")
            if rng.random() < 0.03:
                kinds.append("subscription")
            kinds.append("session_end")
            for k, kind in enumerate(kinds):
                events.append(
                    {
                        "event_id": f"{sid}-{k}",
                        "event_type": kind,
                        "user_id": f"u{u}",
                        "session_id": sid,
                        "event_time": t + k * 60_000,
                        "schema_version": 1,
                    }
                )
            t += len(kinds) * 60_000 + int(rng.exponential(mean_gap))
            s += 1
    return events


def _labels(events: pd.DataFrame, ends: pd.DataFrame) -> pd.DataFrame:
    """Each session_end's churn and conversion label, from the events (not the job's SQL)."""
    by_user = {u: g["event_time"].sort_values().to_numpy() for u, g in events.groupby("user_id")}
    conv = events[events["event_type"].isin(["newsletter_signup", "subscription"])]
    conv_by_user = {u: g["event_time"].sort_values().to_numpy() for u, g in conv.groupby("user_id")}
    churn, converted = [], []
    for u, t in zip(ends["user_id"], ends["event_time"], strict=True):
        times = by_user[u]
        churn.append(float(not ((times > t) & (times <= t + HORIZON["churn"])).any()))
        c = conv_by_user.get(u, np.zeros(0, dtype=np.int64))
        converted.append(float(((c > t) & (c <= t + HORIZON["conversion"])).any()))
    return ends.assign(churn=churn, conversion=converted)


def _predictions(ends: pd.DataFrame, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Informative but imperfect scores; version 1 for the first 40 days, then version 2."""
    rows = []
    for model in ("churn", "conversion"):
        y = ends[model].to_numpy()
        scores = 1 / (1 + np.exp(-(2.0 * y - 1.0 + rng.normal(0, 1.2, len(y)))))
        for r, score in zip(ends.itertuples(), scores, strict=True):
            version = "1" if r.event_time < T0 + 40 * DAY else "2"
            rows.append(
                {
                    "prediction_id": f"{model}-{version}-{r.event_id}",
                    "model_name": model,
                    "model_version": version,
                    "event_id": r.event_id,
                    "user_id": r.user_id,
                    "session_id": r.session_id,
                    "event_time": int(r.event_time),
                    "score": float(score),
                    "predicted_at": int(r.event_time) + 3,
                    "feature_version": "test",
                }
            )
    return rows


def _expected(labelled: pd.DataFrame, model: str, watermark: int) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (version, window start): the settled predictions' count, window end, AUC and log loss."""
    cut = watermark - DELAY - HORIZON[model]
    rows = labelled[labelled["event_time"] <= cut].copy()
    rows["ws"] = rows["event_time"] // WINDOW * WINDOW
    rows["version"] = np.where(rows["event_time"] < T0 + 40 * DAY, "1", "2")
    out = {}
    for (version, ws), g in rows.groupby(["version", "ws"]):
        y, p = g[model].to_numpy(), g[f"{model}_score"].to_numpy()
        both = 0 < y.sum() < len(y)
        out[(str(version), int(ws))] = {
            "pairs": len(g),
            "end": min(int(ws) + WINDOW, cut),
            "auc": roc_auc_score(y, p) if both else None,
            "log_loss": log_loss(y, p, labels=[0, 1]),
        }
    return out


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(16)
    events = _history(rng, users=300, days=120)
    late = [e for e in events if e["event_time"] > T0 + 110 * DAY]  # arrive later: the watermark moves
    first = [e for e in events if e["event_time"] <= T0 + 110 * DAY]
    frame = pd.DataFrame(events)
    ends = frame[frame["event_type"] == "session_end"].reset_index(drop=True)
    preds = _predictions(_labels(frame, ends), rng)
    with fresh_database("horizon") as ch:
        insert_events(ch, first)
        insert_records(ch, "predictions", preds)
        yield {
            "ch": ch,
            "events": frame,
            "late": late,
            "preds": pd.DataFrame(preds),
            "first_max": max(e["event_time"] for e in first),
        }


def _labelled(world: dict[str, Any], upto: int) -> dict[str, pd.DataFrame]:
    """Per model: its predictions with the labels the test computes from the events archived by ``upto``."""
    archived = world["events"][world["events"]["event_time"] <= upto]
    preds = world["preds"]
    out = {}
    for model in ("churn", "conversion"):
        p = preds[preds["model_name"] == model].reset_index(drop=True)
        lab = _labels(archived, p[["event_id", "user_id", "event_time"]].copy())
        out[model] = lab.assign(**{f"{model}_score": p["score"].to_numpy()})
    return out


def _rows(ch: Any, final: bool = True) -> pd.DataFrame:
    return ch.query_df(
        "SELECT model_name, model_version, toUnixTimestamp64Milli(window_start) AS ws, "
        "toUnixTimestamp64Milli(window_end) AS we, pairs, auc, log_loss, ece, r2, mae FROM {db}.model_quality "
        + ("FINAL " if final else "")
        + "ORDER BY model_name, model_version, ws"
    )


def _check(ch: Any, world: dict[str, Any], watermark: int) -> None:
    labelled = _labelled(world, watermark)
    got = _rows(ch)
    for model in ("churn", "conversion"):
        expected = _expected(labelled[model], model, watermark)
        mine = got[got["model_name"] == model]
        assert {(str(v), int(w)) for v, w in zip(mine["model_version"], mine["ws"], strict=True)} == set(expected)
        with_auc = 0
        for r in mine.itertuples():
            e = expected[(str(r.model_version), int(r.ws))]
            assert r.pairs == e["pairs"] and r.we == e["end"]
            assert r.log_loss == pytest.approx(e["log_loss"], rel=1e-9)
            assert pd.isna(r.r2) and pd.isna(r.mae) and 0 <= r.ece <= 1
            if e["auc"] is None:
                assert pd.isna(r.auc)
            else:
                assert r.auc == pytest.approx(e["auc"], abs=1e-12)
                with_auc += 1
        assert with_auc >= 3


def test_quality_per_window_equals_scikit_learn_and_a_second_run_changes_nothing(world: dict[str, Any]) -> None:
    ch = world["ch"]
    watermark = world["first_max"]
    result = horizon_quality(ch, window_ms=WINDOW, delay_ms=DELAY, computed_at_ms=T0 + 200 * DAY)
    assert result.watermark_ms == watermark
    _check(ch, world, watermark)
    # predictions within the horizon (+ delay) of the newest archived event are not counted
    preds = world["preds"]
    for model in ("churn", "conversion"):
        unsettled = preds[(preds["model_name"] == model) & (preds["event_time"] > watermark - DELAY - HORIZON[model])]
        assert len(unsettled) > 50
        assert result.settled_until_ms[model] == watermark - DELAY - HORIZON[model]
    rows = _rows(ch)
    assert rows["pairs"].sum() == sum(
        ((preds["model_name"] == m) & (preds["event_time"] <= watermark - DELAY - HORIZON[m])).sum()
        for m in ("churn", "conversion")
    )
    raw_before = len(_rows(ch, final=False))
    again = horizon_quality(ch, window_ms=WINDOW, delay_ms=DELAY, computed_at_ms=T0 + 201 * DAY)
    assert again.written == {"churn": 0, "conversion": 0} and again.rows == []
    assert len(_rows(ch, final=False)) == raw_before  # nothing written, nothing to merge
    pd.testing.assert_frame_equal(_rows(ch), rows)
    # the latest window of each version, for the gauges
    latest = {(s.model, s.version): s for s in again.latest}
    assert set(latest) == {(m, v) for m in ("churn", "conversion") for v in ("1", "2")}
    newest = rows.sort_values("ws").groupby(["model_name", "model_version"]).last()
    for (m, v), s in latest.items():
        assert s.n == newest.loc[(m, v), "pairs"] and s.window_start_ms == newest.loc[(m, v), "ws"]


def test_later_events_settle_more_windows_without_double_counting(world: dict[str, Any]) -> None:
    ch = world["ch"]
    horizon_quality(ch, window_ms=WINDOW, delay_ms=DELAY, computed_at_ms=T0 + 200 * DAY)
    insert_events(ch, world["late"])
    watermark = int(world["events"]["event_time"].max())
    result = horizon_quality(ch, window_ms=WINDOW, delay_ms=DELAY, computed_at_ms=T0 + 202 * DAY)
    assert result.watermark_ms == watermark and sum(result.written.values()) > 0
    _check(ch, world, watermark)
    got = _rows(ch)
    assert not got.duplicated(["model_name", "model_version", "ws"]).any()


def test_each_label_looks_no_further_than_its_horizon() -> None:
    for spec in HORIZON_OUTCOMES.values():
        for t in (0, T0):
            assert spec.label(None, t) == spec.label(t + spec.horizon_ms + 1, t)
            assert spec.label(t + spec.horizon_ms, t) != spec.label(None, t)


def test_cli_once_prints_what_it_wrote(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("STREAM_CLICKHOUSE_DATABASE", world["ch"].database)
    monkeypatch.setenv("STREAM_OUTCOMES_WINDOW_S", str(WINDOW // 1000))
    monkeypatch.setenv("STREAM_OUTCOMES_DELAY_S", str(DELAY // 1000))
    for _ in range(2):  # the second run finds every window up to date, whatever ran before
        assert main(["outcomes", "--once", "--models", "churn"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("churn: 0 windows written (0 pairs), ") and last.endswith(" up to date")
    assert main(["outcomes", "--once", "--window", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "STREAM_OUTCOMES_WINDOW_S" in err


@pytest.mark.parametrize("model", ["churn", "conversion"])
def test_compare_shadow_judges_horizon_models_on_their_settled_live_pairs(
    world: dict[str, Any], model: str, tmp_path: Any
) -> None:
    from batch_training.context import Context, get_profile
    from batch_training.retrain import compare_shadow
    from stream.config import load_settings

    ch = world["ch"]
    settings = load_settings(
        clickhouse_database=ch.database, data_dir=tmp_path / "v", models_dir=tmp_path / "m", reports_dir=tmp_path / "r"
    )
    ctx = Context(settings, get_profile("fast"), progress=False, _ch=ch)
    reg = ctx.registry
    versions = [reg.register(model, "xgboost", lambda p: p.write_text("{}"), {}).version for _ in range(3)]
    champion, challenger = versions[1:]
    assert champion == "2"  # the version of the predictions rows from day 40 on: the latest are not settled
    reg.set_alias(model, "production", champion, reason="test")
    reg.set_alias(model, "challenger", challenger, reason="test")
    watermark = int(ch.query_df("SELECT toUnixTimestamp64Milli(max(event_time)) AS m FROM {db}.events")["m"].iloc[0])
    live = world["preds"][(world["preds"]["model_name"] == model) & (world["preds"]["model_version"] == "2")]
    labelled = _labelled(world, watermark)[model].set_index("event_id").loc[live["event_id"]]
    rng = np.random.default_rng(7)
    better = 0.7 * labelled[model].to_numpy() + 0.3 * rng.random(len(live))
    shadow = live.assign(model_version=challenger, score=better, prediction_id="shadow-" + live["prediction_id"])
    insert_records(ch, "predictions_shadow", shadow.to_dict("records"))

    result = compare_shadow(ctx, model, promote=True)

    settled = (live["event_time"] <= watermark - DELAY - HORIZON[model]).to_numpy()
    assert 0 < settled.sum() < len(live) and result["scored_pairs"] == len(live)
    assert result["held_out"] == {"rows": settled.sum(), "outcome_unknown": len(live) - settled.sum()}
    y = labelled[model].to_numpy()[settled]
    assert result["test"]["champion"] == pytest.approx(roc_auc_score(y, live["score"].to_numpy()[settled]), abs=1e-12)
    assert result["test"]["challenger"] == pytest.approx(roc_auc_score(y, better[settled]), abs=1e-12)
    assert result["decision"] == "promote" and reg.resolve(model, "production").version == challenger


def test_the_gauges_show_each_versions_latest_window() -> None:
    from stream.monitoring.horizon import HorizonResult
    from stream.monitoring.quality import QualitySnapshot
    from stream.tools.outcomes import QualityGauges

    g = QualityGauges()
    snap = QualitySnapshot("churn", "3", "binary", 250, T0, T0 + DAY, {"auc": 0.71, "log_loss": 0.52, "ece": 0.04})
    g.set(HorizonResult(T0 + 40 * DAY, latest=[snap]))
    value = g.registry.get_sample_value
    assert value("stream_model_quality", {"model": "churn", "version": "3", "metric": "auc"}) == 0.71
    assert value("stream_model_quality_window_pairs", {"model": "churn", "version": "3"}) == 250
    one_class = QualitySnapshot("churn", "3", "binary", 12, T0 + DAY, T0 + 2 * DAY, {"log_loss": 0.3, "ece": 0.1})
    g.set(HorizonResult(T0 + 41 * DAY, latest=[one_class]))
    assert value("stream_model_quality", {"model": "churn", "version": "3", "metric": "auc"}) is None
    assert value("stream_model_quality", {"model": "churn", "version": "3", "metric": "log_loss"}) == 0.3


def test_each_monitor_poll_runs_the_job(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: Any, tmp_path: Any
) -> None:
    monkeypatch.setenv("STREAM_CLICKHOUSE_DATABASE", world["ch"].database)
    monkeypatch.setenv("STREAM_OUTCOMES_WINDOW_S", str(WINDOW // 1000))
    state = ["--state", str(tmp_path / "state.json"), "--metrics-url", "http://127.0.0.1:9/metrics"]
    with caplog.at_level("INFO", logger="stream.monitor"):
        assert main(["monitor", "--once", *state]) == 0
    runs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("horizon outcomes: ")]
    assert len(runs) == 1 and "churn: " in runs[0] and "conversion: " in runs[0]
    caplog.clear()
    with caplog.at_level("INFO", logger="stream.monitor"):
        assert main(["monitor", "--once", "--no-outcomes", *state]) == 0
    assert not [r for r in caplog.records if r.getMessage().startswith("horizon outcomes")]

"""The drift demo's figures from hand-made rows (stream/tools/drift_demo.py)."""

from __future__ import annotations

import math

import pandas as pd

from stream.config import load_settings
from stream.tools.drift_demo import DAY_MS, WORKER_SETTINGS, _phases, auc_table, drifted_windows, false_alarms_per_day


def test_auc_per_phase_next_to_the_oracle() -> None:
    rows = pd.DataFrame(
        {
            "phase": ["a"] * 4 + ["b"] * 3,
            "label": [1, 0, 1, 0, 1, 1, 1],
            # phase a: the model ranks 3 of 4 pairs right (AUC 0.75), the oracle all of them
            "score": [0.9, 0.8, 0.3, 0.1, 0.5, 0.6, 0.7],
            "p_true": [0.9, 0.2, 0.8, 0.1, 0.5, 0.6, 0.7],
        }
    )
    table = auc_table(rows).set_index("phase")
    assert table.loc["a", "auc"] == 0.75 and table.loc["a", "oracle_auc"] == 1.0 and table.loc["a", "ratio"] == 0.75
    assert table.loc["a", "impressions"] == 4 and table.loc["a", "click_rate"] == 0.5
    assert math.isnan(table.loc["b", "auc"])  # one class: no AUC rather than a made-up one


def _drift(rows: list[tuple[str, int, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model_name": m,
                "model_version": "1",
                "window_start_ms": s,
                "window_end_ms": s + 10,
                "feature": f,
                "drifted": d,
            }
            for m, s, f, d in rows
        ]
    )


def test_alarmed_windows_and_false_alarms_before_the_onset() -> None:
    day = DAY_MS
    drift = _drift(
        [
            ("click", 0, "position", 1),
            ("click", 0, "tenure", 1),  # one window, two columns: one alarmed window
            ("click", 100, "position", 0),
            ("click", day, "position", 0),
            ("engagement", 50, "tenure", 1),
            ("click", 2 * day, "position", 1),  # at the onset: not a false alarm
        ]
    )
    windows = drifted_windows(drift)
    assert windows[["model_name", "window_start_ms"]].values.tolist() == [
        ["click", 0],
        ["engagement", 50],
        ["click", 2 * day],
    ]
    assert windows["features"].tolist()[0] == "position,tenure"
    assert false_alarms_per_day(drift, 0, 2 * day) == (2, 4, 1.0)


def _served(ids: list[str], versions: list[str]) -> pd.DataFrame:
    # the predictions table's versions come back as a nullable string column
    return pd.DataFrame(
        {"event_id": ids, "model_version": pd.array(versions, dtype="string"), "score": [0.9, 0.1, 0.8, 0.2, 0.7, 0.3]}
    )


_IDS = ["b1", "b2", "a1", "a2", "c1", "c2"]
_LABELS = pd.Series([1, 0, 1, 0, 1, 0], index=_IDS)
_TRUTH = pd.Series([0.6, 0.4, 0.6, 0.4, 0.6, 0.4], index=_IDS)
_TIMES = pd.Series([10, 20, 110, 120, 210, 220], index=_IDS)  # onset at 100


def test_phases_with_a_promoted_challenger() -> None:
    preds = _served(_IDS, ["1", "1", "1", "1", "2", "2"])
    table = _phases(preds, _LABELS, _TRUTH, _TIMES, 100, "2").set_index("phase")
    assert table["impressions"].to_dict() == {
        "before drift": 2,
        "after drift, first model": 2,
        "after drift, challenger promoted": 2,
    }


def test_phases_without_a_promotion_judge_the_challenger_in_shadow() -> None:
    preds = _served(_IDS, ["1"] * 6)
    # the challenger ranks the drifted pairs the wrong way round
    shadow = pd.DataFrame(
        {"event_id": ["a1", "a2", "c1", "c2"], "model_version": ["2"] * 4, "score": [0.2, 0.8, 0.3, 0.7]}
    )
    table = _phases(preds, _LABELS, _TRUTH, _TIMES, 100, None, shadow).set_index("phase")
    assert table["impressions"].to_dict() == {
        "before drift": 2,
        "after drift, first model": 4,
        "after drift, challenger in shadow": 4,
    }
    assert table.loc["after drift, first model", "ratio"] == 1.0
    assert table.loc["after drift, challenger in shadow", "ratio"] == 0.0


def test_the_demo_worker_waits_for_complete_article_popularity() -> None:
    # The live days run minutes of event time per wall second: without the wait, click rows miss
    # article events before their watermark and differ from the batch-built rows (docs/worker.md).
    settings = load_settings(**WORKER_SETTINGS)
    assert settings.article_wait_ms == 2_000
    assert settings.drift_window == 500

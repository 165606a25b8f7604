"""The monitoring report: what it draws from model_quality / feature_drift rows in chdb."""

from __future__ import annotations

import re
from pathlib import Path

from stream.monitoring import insert_monitoring
from stream.tools.report import Marker, write_report

T0 = 1_760_000_000_000
MIN = 60_000


def _quality(model: str, version: str, i: int, **metrics: float | None) -> dict[str, object]:
    row: dict[str, object] = {m: None for m in ("auc", "log_loss", "ece", "r2", "mae")}
    row.update(metrics)
    return {
        "model_name": model,
        "model_version": version,
        "window_start": T0 + i * 10 * MIN,
        "window_end": T0 + i * 10 * MIN + 9 * MIN,
        "pairs": 1000,
        **row,
        "computed_at": T0 + i * 10 * MIN + 9 * MIN,
    }


def _drift(feature: str, i: int, psi: float, threshold: float) -> dict[str, object]:
    return {
        "model_name": "click",
        "model_version": "1",
        "window_start": T0 + i * 10 * MIN,
        "window_end": T0 + i * 10 * MIN + 9 * MIN,
        "feature": feature,
        "rows": 1000,
        "psi": psi,
        "psi_threshold": threshold,
        "ks": None,
        "ks_threshold": None,
        "drifted": int(psi > threshold),
        "computed_at": T0 + i * 10 * MIN + 9 * MIN,
    }


def _polylines(page: str) -> dict[str, int]:
    """series label -> its number of vertices."""
    return {
        label: len(points.split())
        for label, points in re.findall(r'<polyline data-series="([^"]+)" points="([^"]*)"', page)
    }


def test_the_report_draws_quality_per_version_drift_alarms_and_promotions(ch, tmp_path: Path) -> None:
    quality = [_quality("click", "1", i, auc=0.80 - 0.02 * i, log_loss=0.4) for i in range(6)]
    quality[3]["auc"] = None  # a window with one class: no AUC, so no vertex
    quality += [_quality("click", "2", i, auc=0.79, log_loss=0.41) for i in range(4, 8)]
    quality += [_quality("engagement", "1", i, r2=0.3, mae=2.0) for i in range(5)]
    # window 0 of click v1 published again later with more outcomes: FINAL keeps that row only
    quality.append(dict(quality[0], auc=0.81, computed_at=T0 + 100 * MIN))
    drift = [_drift("position", i, psi=0.05 if i < 3 else 0.4, threshold=0.1) for i in range(6)]
    drift += [_drift("prediction", i, psi=0.02, threshold=0.1) for i in range(6)]
    drift += [_drift("hour", i, psi=0.01, threshold=0.1) for i in range(6)]
    insert_monitoring(ch, quality, drift)
    promoted = Marker(T0 + 40 * MIN, "click", "promoted 2")

    page = write_report(ch, tmp_path / "r.html", [promoted]).read_text()

    click, engagement = page.split("<h2 id='click'>")[1].split("<h2 id='engagement'>")
    lines = _polylines(click)
    assert lines["version 1"] == 5  # 6 windows (one of them published twice), one without AUC
    assert lines["version 2"] == 4
    assert "online AUC" in click and "online R²" in engagement
    assert _polylines(engagement) == {"version 1": 5}
    # the last window of each version: T0 is 2025-10-09 08:53:20 UTC, window 5 ends 59 min later
    assert "<td>1</td><td>2025-10-09 09:52</td><td>1000</td><td>0.7000</td>" in click
    # drift: the feature that alarmed and the prediction are drawn, the quiet feature is not
    assert {"position", "prediction"} <= set(lines) and "hour" not in lines
    assert "3 alarmed (window, feature) pairs of 18." in click
    assert click.count('class="marker"') == 2  # the promotion on both of click's charts
    assert engagement.count('class="marker"') == 0
    assert "promoted 2" in page.split("<h2 id='click'>")[0]  # the promotions table


def test_an_empty_database_gives_a_report_that_says_so(ch, tmp_path: Path) -> None:
    page = write_report(ch, tmp_path / "r.html").read_text()
    assert "No monitoring rows yet" in page
    assert "<svg" not in page

"""Monitoring outputs: gauge values, and rows that land in chdb's model_quality and feature_drift tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.monitoring import (
    DriftWindow,
    RollingQuality,
    build_profile,
    drift_rows,
    gauge_values,
    insert_monitoring,
    quality_rows,
)
from tests.monitoring.streams import NAMES, rows

T0 = 1_760_000_000_000


def _quality() -> tuple[RollingQuality, RollingQuality]:
    rng = np.random.default_rng(1)
    clf = RollingQuality("click", "3", "binary", size=200)
    reg = RollingQuality("engagement", "2", "regression", size=200)
    for i in range(300):
        p = float(rng.random())
        clf.update(float(rng.random() < p), p, T0 + i * 1000)
        reg.update(float(rng.normal(10, 3)), float(rng.normal(10, 3)), T0 + i * 1000)
    return clf, reg


def _drift():
    x, p = rows(2000, np.random.default_rng(2))
    prof = build_profile(NAMES, x, p)
    lx, lp = rows(500, np.random.default_rng(3))
    return DriftWindow("click", "3", prof, 500).update(lx, lp, T0 + np.arange(500) * 1000)


def test_gauge_values_are_keyed_by_model_version_and_metric() -> None:
    clf, reg = _quality()
    qc, qr = clf.snapshot(), reg.snapshot()
    reports = _drift()
    g = gauge_values([qc, qr], reports, {("click", "3"): 2})
    assert g[("click", "3", "auc")] == qc.metrics["auc"]
    assert g[("engagement", "2", "r2")] == qr.metrics["r2"]
    assert g[("click", "3", "quality_pairs")] == 200.0
    assert ("engagement", "2", "auc") not in g
    assert g[("click", "3", "drift_max_psi")] == max(c.psi for c in reports[0].columns.values())
    assert g[("click", "3", "drift_columns")] == float(len(reports[0].drifted))
    assert g[("click", "3", "loss_drift_total")] == 2.0
    assert all(not math.isnan(v) for v in g.values())


def test_rows_land_in_clickhouse_and_a_republished_window_replaces_its_row(ch) -> None:
    clf, reg = _quality()
    qc, qr = clf.snapshot(), reg.snapshot()
    reports = _drift()
    q_rows = quality_rows([qc, qr], computed_at_ms=T0 + 10_000_000)
    d_rows = drift_rows(reports, computed_at_ms=T0 + 10_000_000)
    assert insert_monitoring(ch, q_rows, d_rows) == 2 + len(NAMES) + 1

    got = ch.query_df("SELECT * FROM {db}.model_quality FINAL ORDER BY model_name")
    assert got["model_name"].tolist() == ["click", "engagement"]
    click, eng = got.iloc[0], got.iloc[1]
    assert click["auc"] == pytest.approx(qc.metrics["auc"]) and click["ece"] == pytest.approx(qc.metrics["ece"])
    assert pd_isnull(click["r2"]) and pd_isnull(eng["auc"])
    assert eng["mae"] == pytest.approx(qr.metrics["mae"])
    assert int(click["pairs"]) == 200
    assert click["window_start"].value // 1_000_000 == T0 + 100_000  # pairs 100..299 at one per second

    # the same window published again later (more outcomes arrived): one row, the newer values
    again = [dict(q_rows[0], auc=0.9, computed_at=T0 + 20_000_000)]
    insert_monitoring(ch, again, [])
    final = ch.query_df("SELECT auc FROM {db}.model_quality FINAL WHERE model_name = 'click'")
    assert final["auc"].tolist() == [0.9]

    drift = ch.query_df("SELECT feature, psi, ks, drifted, rows FROM {db}.feature_drift FINAL ORDER BY feature")
    assert sorted(drift["feature"]) == sorted([*NAMES, "prediction"])
    by = drift.set_index("feature")
    assert by.loc["normal", "psi"] == pytest.approx(reports[0].columns["normal"].psi)
    assert pd_isnull(by.loc["discrete", "ks"])
    assert set(by["rows"]) == {500}


def pd_isnull(v: object) -> bool:
    import pandas as pd

    return bool(pd.isna(v))

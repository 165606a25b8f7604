"""What monitoring publishes: gauge values for Prometheus and rows for ClickHouse.

* :func:`gauge_values`: ``(model, version, metric) -> value``, one labelled gauge per metric name
  (quality metrics, ``quality_pairs``, ``drift_max_psi``, ``drift_columns``, ``loss_drift_total``);
* :func:`quality_rows` / :func:`drift_rows`: rows of ``model_quality`` and ``feature_drift``
  (schemas/clickhouse/010_monitoring.sql), inserted with :func:`insert_monitoring`. Both tables are
  ReplacingMergeTrees keyed by model, version and window start: a window published again (more
  outcomes arrived, or a replay) replaces its earlier row.

>>> from stream.monitoring.quality import QualitySnapshot
>>> s = QualitySnapshot("click", "3", "binary", 2, 10, 20, {"auc": 0.5, "log_loss": 0.7, "ece": 0.1})
>>> gauge_values([s])[("click", "3", "auc")]
0.5
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from stream.clickhouse import ClickHouse, insert_records
from stream.monitoring.drift import DriftReport
from stream.monitoring.quality import QualitySnapshot

GaugeKey = tuple[str, str, str]
#: every quality metric, in table column order (regression rows leave the classifier ones null)
QUALITY_METRICS = ("auc", "log_loss", "ece", "r2", "mae")


def gauge_values(
    quality: Iterable[QualitySnapshot] = (),
    drift: Iterable[DriftReport] = (),
    loss_drifts: Mapping[tuple[str, str], int] | None = None,
) -> dict[GaugeKey, float]:
    """Current values for labelled gauges; undefined metrics (nan) are left out, not exported as nan."""
    out: dict[GaugeKey, float] = {}
    for s in quality:
        out[(s.model, s.version, "quality_pairs")] = float(s.n)
        for k, v in s.metrics.items():
            if not math.isnan(v):
                out[(s.model, s.version, k)] = float(v)
    for r in drift:
        out[(r.model, r.version, "drift_max_psi")] = max((c.psi for c in r.columns.values()), default=0.0)
        out[(r.model, r.version, "drift_columns")] = float(len(r.drifted))
    for (model, version), count in (loss_drifts or {}).items():
        out[(model, version, "loss_drift_total")] = float(count)
    return out


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def quality_rows(snapshots: Iterable[QualitySnapshot], computed_at_ms: int) -> list[dict[str, Any]]:
    """``model_quality`` rows (times in epoch ms; metrics that do not apply or are undefined are null)."""
    return [
        {
            "model_name": s.model,
            "model_version": s.version,
            "window_start": s.window_start_ms,
            "window_end": s.window_end_ms,
            "pairs": s.n,
            **{m: _num(s.metrics.get(m, math.nan)) for m in QUALITY_METRICS},
            "computed_at": computed_at_ms,
        }
        for s in snapshots
        if s.n > 0
    ]


def drift_rows(reports: Iterable[DriftReport], computed_at_ms: int) -> list[dict[str, Any]]:
    """``feature_drift`` rows: one per model version, window and column (the prediction is a column)."""
    return [
        {
            "model_name": r.model,
            "model_version": r.version,
            "window_start": r.window_start_ms,
            "window_end": r.window_end_ms,
            "feature": name,
            "rows": r.n,
            "psi": d.psi,
            "psi_threshold": d.psi_threshold,
            "ks": _num(d.ks),
            "ks_threshold": _num(d.ks_threshold),
            "drifted": int(d.drifted),
            "computed_at": computed_at_ms,
        }
        for r in reports
        for name, d in r.columns.items()
    ]


def insert_monitoring(ch: ClickHouse, quality: list[dict[str, Any]], drift: list[dict[str, Any]]) -> int:
    """Insert rows from :func:`quality_rows` and :func:`drift_rows`; returns the rows written."""
    n = insert_records(ch, "model_quality", quality) if quality else 0
    return n + (insert_records(ch, "feature_drift", drift) if drift else 0)

"""Write deploy/grafana/dashboards/stream-worker.json, the dashboard docker-compose's Grafana provisions.

    python scripts/grafana_dashboard.py

The panels are listed here (title, unit, PromQL per series) so that a change is one line; the JSON is
checked in because Grafana reads it as it is. tests/test_compose.py checks that every metric a panel
queries is one the worker exports.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards" / "stream-worker.json"
INST = 'instance=~"$instance"'
SEL = "{" + INST + "}"
LATENCY = "stream_ingest_to_publish_seconds"


#: rows of (title, unit, [(legend, expr)])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    (
        "Throughput",
        [
            (
                "Events consumed by type",
                "ops",
                [("{{event_type}}", f"sum by (event_type) (rate(stream_events_total{SEL}[1m]))")],
            ),
            (
                "Predictions by model",
                "ops",
                [("{{model}}", f"sum by (model) (rate(stream_predictions_total{SEL}[1m]))")],
            ),
            (
                "Dead letters by reason",
                "ops",
                [("{{reason}}", f"sum by (reason) (rate(stream_invalid_events_total{SEL}[5m]))")],
            ),
            (
                "Bandit decisions by arm",
                "ops",
                [("{{context}} {{arm}}", f"sum by (context, arm) (rate(stream_bandit_decisions_total{SEL}[5m]))")],
            ),
        ],
    ),
    (
        "Latency, lag and progress",
        [
            (
                "Ingest to prediction published",
                "s",
                [
                    (name, f"histogram_quantile({q}, sum by (le) (rate({LATENCY}_bucket{SEL}[5m])))")
                    for name, q in (("p50", "0.5"), ("p99", "0.99"))
                ],
            ),
            (
                "Consumer lag by partition",
                "short",
                [("{{topic}}/{{partition}}", f"sum by (topic, partition) (stream_consumer_lag_messages{SEL})")],
            ),
            (
                "Oldest unconfirmed batch",
                "s",
                [("{{topic}}/{{partition}}", f"max by (topic, partition) (stream_unconfirmed_batch_age_seconds{SEL})")],
            ),
            (
                "Partitions idle with records waiting",
                "s",
                [("{{topic}}/{{partition}}", f"max by (topic, partition) (stream_partition_idle_seconds{SEL})")],
            ),
        ],
    ),
    (
        "ClickHouse sink",
        [
            (
                "Rows inserted by table",
                "rowsps",
                [("{{table}}", f"sum by (table) (rate(stream_sink_rows_total{SEL}[1m]))")],
            ),
            (
                "Failed inserts (retried)",
                "ops",
                [("{{table}}", f"sum by (table) (rate(stream_sink_errors_total{SEL}[5m]))")],
            ),
            ("Backpressure", "short", [("{{instance}}", f"max by (instance) (stream_sink_backpressure_active{SEL})")]),
        ],
    ),
    (
        "Errors and health",
        [
            (
                "Processing errors by type",
                "ops",
                [("{{error}}", f"sum by (error) (rate(stream_processing_errors_total{SEL}[5m]))")],
            ),
            (
                "Scorable events with no model",
                "ops",
                [("{{model}}", f"sum by (model) (rate(stream_unscored_events_total{SEL}[5m]))")],
            ),
            (
                "Fatal errors, stalls and re-joins",
                "short",
                [
                    ("fatal {{error}}", f"sum by (error) (increase(stream_fatal_errors_total{SEL}[15m]))"),
                    ("stalls", f"sum(increase(stream_partition_stalls_total{SEL}[15m]))"),
                    ("start-stall re-joins", f"sum(increase(stream_start_stall_rejoins_total{SEL}[15m]))"),
                ],
            ),
            ("Worker CPU", "percentunit", [("{{instance}}", f"rate(process_cpu_seconds_total{SEL}[1m])")]),
        ],
    ),
    (
        "Model quality and drift (joined outcomes, docs/monitoring.md)",
        [
            (
                "Online AUC (click) per version",
                "short",
                [("{{model}} v{{version}}", f'max by (model, version) (stream_model_quality{{metric="auc", {INST}}})')],
            ),
            (
                "Online R² (engagement) per version",
                "short",
                [("{{model}} v{{version}}", f'max by (model, version) (stream_model_quality{{metric="r2", {INST}}})')],
            ),
            (
                "Drift alarms by feature",
                "short",
                [("{{model}} {{feature}}", f"sum by (model, feature) (increase(stream_drift_alarms_total{SEL}[15m]))")],
            ),
            (
                "Loss drift (ADWIN) and outcomes joined",
                "short",
                [
                    (
                        "loss drift {{model}}",
                        f"sum by (model) (increase(stream_loss_drift_detections_total{SEL}[15m]))",
                    ),
                    ("joined/s {{model}}", f"sum by (model) (rate(stream_outcomes_joined_total{SEL}[5m]))"),
                ],
            ),
            (
                "Shadow (challenger) scores",
                "ops",
                [("{{model}}", f"sum by (model) (rate(stream_shadow_predictions_total{SEL}[1m]))")],
            ),
        ],
    ),
    (
        "Models",
        [
            (
                "Loaded model versions",
                "short",
                [("{{model}} {{version}}", f"max by (model, version) (stream_model_info{SEL})")],
            ),
            (
                "Models refused (feature list mismatch)",
                "short",
                [("{{model}}", f"sum by (model) (increase(stream_models_refused_total{SEL}[1h]))")],
            ),
        ],
    ),
]


def _panel(pid: int, title: str, unit: str, series: list[tuple[str, str]], x: int, y: int) -> dict[str, object]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 6, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(series)
        ],
    }


def dashboard() -> dict[str, object]:
    panels: list[dict[str, object]] = []
    y = 0
    pid = 1
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid += 1
        y += 1
        for i, (title, unit, series) in enumerate(row_panels):
            panels.append(_panel(pid, title, unit, series, (i % 4) * 6, y + (i // 4) * 8))
            pid += 1
        y += 8 * ((len(row_panels) + 3) // 4)
    return {
        "uid": "publisher-stream-worker",
        "title": "publisher-stream worker",
        "tags": ["publisher-stream"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "instance",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "prometheus"},
                    "query": "label_values(stream_events_total, instance)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "current": {"text": "All", "value": "$__all"},
                }
            ]
        },
        "panels": panels,
    }


def main() -> None:
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

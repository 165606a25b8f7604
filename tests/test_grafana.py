"""The provisioned Grafana dashboard queries only metrics a worker exports, and is the generator's output."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from stream.worker.metrics import WorkerMetrics
from stream.worker.monitor import MonitorMetrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "stream-worker.json"
# a PromQL metric name followed by a selector, a range or a closing parenthesis
METRIC = re.compile(r"\b([a-z_]+(?:_total|_seconds|_messages|_rows|_active|_info|_bucket|_count|_sum)?)\{")


def _exported_names() -> set[str]:
    registry = CollectorRegistry()
    WorkerMetrics(registry=registry)
    MonitorMetrics(registry)
    # a labelled metric has no samples until it is used: name its series from its type
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "info": ("_info",)}
    names = set()
    for metric in registry.collect():
        names.update(s.name for s in metric.samples)
        names.update(metric.name + suffix for suffix in suffixes.get(metric.type, ("",)))
    return names


def _queried_names() -> set[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {m for e in exprs for m in METRIC.findall(e)}


def test_every_queried_metric_is_exported_by_the_worker() -> None:
    queried = _queried_names()
    assert {
        "stream_events_total",
        "stream_ingest_to_publish_seconds_bucket",
        "process_cpu_seconds_total",
        "stream_model_quality",
        "stream_drift_alarms_total",
    } <= queried
    assert queried - _exported_names() == set()


def test_the_checked_in_dashboard_is_the_generators_output() -> None:
    spec = importlib.util.spec_from_file_location("grafana_dashboard", ROOT / "scripts" / "grafana_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads(DASHBOARD.read_text()) == module.dashboard()

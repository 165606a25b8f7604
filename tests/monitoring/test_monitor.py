"""``stream monitor``: drift alarms scraped from a real HTTP /metrics, persistence, cool-down, schedule."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from batch_training.cli import build_parser
from stream.cli import main
from stream.tools.monitor import Monitor, MonitorState, alarm_total, due, observe


class _Metrics:
    """A /metrics endpoint whose text the test sets."""

    def __init__(self) -> None:
        self.text = ""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = metrics.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alarms(self, **per_model: float) -> None:
        lines = ["# HELP stream_drift_alarms_total drift alarms", "# TYPE stream_drift_alarms_total counter"]
        lines += [f'stream_drift_alarms_total{{model="{m}"}} {v}' for m, v in per_model.items()]
        lines += ['stream_events_total{topic="session-events"} 123456']
        self.text = "\n".join(lines) + "\n"


@pytest.fixture
def metrics() -> Iterator[_Metrics]:
    m = _Metrics()
    yield m
    m.server.shutdown()
    m.server.server_close()


class _Runner:
    """Stands in for the batch_training subprocesses: records each command, writes retrain's report."""

    def __init__(self, report: Path) -> None:
        self.report = report
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        if argv[2] == "retrain":
            self.report.parent.mkdir(parents=True, exist_ok=True)
            self.report.write_text(
                json.dumps(
                    {
                        "models": {
                            "click": {"status": "challenger", "version": "2"},
                            "churn": {"status": "skipped", "reason": "only 0 labelled rows"},
                        }
                    }
                )
            )
        return 0


def _monitor(tmp_path: Path, url: str, clock: list[float], **kw: Any) -> tuple[Monitor, _Runner]:
    runner = _Runner(tmp_path / "reports" / "retrain.json")
    mon = Monitor(
        metrics_url=url,
        metric="stream_drift_alarms_total",
        state_path=tmp_path / "state.json",
        retrain_report=runner.report,
        runner=runner,
        clock=lambda: clock[0],
        **kw,
    )
    return mon, runner


def test_alarm_total_sums_the_counter_over_its_labels() -> None:
    text = (
        "# TYPE stream_drift_alarms_total counter\n"
        'stream_drift_alarms_total{model="click",feature="position"} 2\n'
        'stream_drift_alarms_total{model="churn",feature="prediction"} 1.0\n'
        "stream_drift_alarms_created 1.7e9\n"
    )
    assert alarm_total(text, "stream_drift_alarms_total") == 3.0
    assert alarm_total(text, "other_total") is None


def test_persistent_drift_retrains_then_compares_and_promotes(tmp_path: Path, metrics: _Metrics) -> None:
    clock = [1_000_000.0]
    mon, runner = _monitor(tmp_path, metrics.url, clock, persist=2, cooldown_s=3600, window_days=21)
    metrics.alarms(click=0)
    assert mon.tick() is None  # the first scrape is the baseline
    metrics.alarms(click=3)
    assert mon.tick() is None and MonitorState.load(mon.state_path).streak == 1
    metrics.alarms(click=3)
    assert mon.tick() is None and MonitorState.load(mon.state_path).streak == 0  # drift did not persist
    metrics.alarms(click=4)
    mon.tick()
    metrics.alarms(click=4, churn=1)
    outcome = mon.tick()
    assert outcome == {"reason": "drift: new alarms in 2 consecutive polls", "retrain": 0, "compare": {"click": 0}}
    assert runner.calls == [
        ["-m", "batch_training", "retrain", "--window-days", "21", "--no-progress"],
        ["-m", "batch_training", "compare", "--model", "click", "--no-progress", "--promote"],
    ]
    for argv in runner.calls:  # what batch_training's own parser accepts
        assert build_parser().parse_args(argv[2:]).cmd == argv[2]
    state = MonitorState.load(mon.state_path)
    assert state.streak == 0 and state.last_retrain_ms == 1_000_000_000 and state.alarms == 5
    # drift goes on, but within the cool-down: no second retrain
    for total in (7, 9, 11):
        clock[0] += 600
        metrics.alarms(click=total)
        assert mon.tick() is None
    assert MonitorState.load(mon.state_path).streak == 3 and len(runner.calls) == 2
    clock[0] += 3600  # past the cool-down, still drifting
    metrics.alarms(click=12)
    assert mon.tick() is not None and len(runner.calls) == 4


def test_a_restarted_worker_an_absent_metric_and_a_down_worker(tmp_path: Path, metrics: _Metrics) -> None:
    clock = [0.0]
    mon, runner = _monitor(tmp_path, metrics.url, clock, persist=5)
    metrics.alarms(click=10)
    mon.tick()
    metrics.alarms(click=2)  # the counter began again: 2 new alarms
    mon.tick()
    s = MonitorState.load(mon.state_path)
    assert (s.alarms, s.streak) == (2, 1)
    metrics.text = "stream_events_total 5\n"  # no drift counter exported
    mon.tick()
    assert MonitorState.load(mon.state_path).streak == 0
    down = Monitor(
        metrics_url="http://127.0.0.1:9/metrics",
        metric="stream_drift_alarms_total",
        state_path=mon.state_path,
        retrain_report=runner.report,
        runner=runner,
        clock=lambda: clock[0],
    )
    assert down.tick() is None and runner.calls == []


def test_the_schedule_retrains_without_drift(tmp_path: Path, metrics: _Metrics) -> None:
    clock = [50_000.0]
    mon, runner = _monitor(tmp_path, metrics.url, clock, every_s=86_400, models=("click",), promote=False)
    metrics.alarms(click=0)
    assert mon.tick() == {"reason": "schedule: no retrain yet", "retrain": 0, "compare": {"click": 0}}
    assert runner.calls[0][-2:] == ["--models", "click"] and "--promote" not in runner.calls[1]
    clock[0] += 3600
    assert mon.tick() is None
    clock[0] += 86_400
    assert mon.tick() is not None and len(runner.calls) == 4


def test_a_failed_retrain_compares_nothing(tmp_path: Path, metrics: _Metrics) -> None:
    clock = [0.0]
    mon, runner = _monitor(tmp_path, metrics.url, clock, every_s=60)
    mon.runner = lambda argv: runner.calls.append(argv) or 2
    assert mon.tick() == {"reason": "schedule: no retrain yet", "retrain": 2, "compare": {}}
    assert len(runner.calls) == 1


def test_due_and_observe() -> None:
    s = MonitorState()
    assert observe(s, 4) == 0 and observe(s, 4) == 0 and observe(s, 6) == 2 and s.streak == 1
    assert due(s, 0, persist=1, every_s=0, cooldown_s=0) == "drift: new alarms in 1 consecutive polls"
    s.last_retrain_ms = 0
    assert due(s, 999, persist=1, every_s=0, cooldown_s=1) is None


def test_cli_once_polls_and_keeps_its_state(tmp_path: Path, metrics: _Metrics, capsys: Any) -> None:
    metrics.alarms(click=7)
    state = tmp_path / "m" / "state.json"
    assert main(["monitor", "--once", "--metrics-url", metrics.url, "--state", str(state)]) == 0
    assert MonitorState.load(state).alarms == 7
    assert main(["monitor", "--once", "--interval", "soon"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--interval" in err


@pytest.mark.parametrize(
    ("variable", "value"),
    [("STREAM_MONITOR_METRICS_URL", "ftp://worker/metrics"), ("STREAM_MONITOR_ALARM_METRIC", "drift alarms")],
)
def test_a_bad_monitor_setting_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["monitor", "--once"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and variable in err and value in err

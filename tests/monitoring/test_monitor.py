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
from stream.tools.monitor import Monitor, MonitorState, due, observe, window_counts


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

    def windows(self, event_s: float | None = None, **per_model: tuple[float, float]) -> None:
        """Per model (version 1): (drift windows, alarmed windows), as the worker exports them; ``event_s``:
        the newest event time it processed."""
        lines = ["# TYPE stream_drift_windows_total counter", "# TYPE stream_drift_alarmed_windows_total counter"]
        for m, (w, a) in per_model.items():
            lines += [f'stream_drift_windows_total{{model="{m}",version="1"}} {w}']
            lines += [f'stream_drift_alarmed_windows_total{{model="{m}",version="1"}} {a}']
        lines += ['stream_events_total{topic="session-events"} 123456']
        if event_s is not None:
            lines += ["# TYPE stream_event_time_latest_seconds gauge", f"stream_event_time_latest_seconds {event_s}"]
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
        #: retrain's answer while the drift is too recent (STREAM_RETRAIN_MIN_DRIFT_DAYS); None: it trains
        self.waiting: dict[str, Any] | None = None

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        if argv[2] == "retrain" and self.waiting is not None:
            self.report.parent.mkdir(parents=True, exist_ok=True)
            self.report.write_text(json.dumps({"models": {}, "waiting": self.waiting}))
        elif argv[2] == "retrain":
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
    kw.setdefault("compare", "offline")
    mon = Monitor(
        metrics_url=url,
        metric="stream_drift_alarmed_windows_total",
        state_path=tmp_path / "state.json",
        retrain_report=runner.report,
        runner=runner,
        clock=lambda: clock[0],
        **kw,
    )
    return mon, runner


def test_window_counts_per_model_version() -> None:
    text = (
        "# TYPE stream_drift_windows_total counter\n"
        'stream_drift_windows_total{model="click",version="2"} 4\n'
        'stream_drift_windows_total{model="churn",version="1"} 1.0\n'
        'stream_drift_alarmed_windows_total{model="click",version="2"} 2\n'
        "stream_drift_windows_created 1.7e9\n"
    )
    assert window_counts(text, "stream_drift_alarmed_windows_total") == {"click/2": (4.0, 2.0), "churn/1": (1.0, 0.0)}
    assert window_counts("stream_events_total 3\n", "stream_drift_alarmed_windows_total") is None


def test_persistent_drift_retrains_then_compares_and_promotes(tmp_path: Path, metrics: _Metrics) -> None:
    clock = [1_000_000.0]
    mon, runner = _monitor(tmp_path, metrics.url, clock, persist=3, cooldown_s=3600, window_days=21)
    metrics.windows(click=(10, 4))
    assert mon.tick() is None  # the first scrape is the baseline
    metrics.windows(click=(12, 6))  # two windows, both alarmed
    assert mon.tick() is None and MonitorState.load(mon.state_path).streak == 2
    metrics.windows(click=(12, 6))  # no window completed: the streak stands
    assert mon.tick() is None and MonitorState.load(mon.state_path).streak == 2
    metrics.windows(click=(14, 7))  # one of two alarmed: drift did not persist
    assert mon.tick() is None and MonitorState.load(mon.state_path).streak == 0
    metrics.windows(click=(15, 8), churn=(3, 0))
    mon.tick()
    metrics.windows(click=(17, 10), churn=(4, 0))  # 3 in a row for click; churn's quiet windows do not reset it
    outcome = mon.tick()
    assert outcome == {"reason": "drift: 3 drift windows in a row alarmed", "retrain": 0, "compare": {"click": 0}}
    assert runner.calls == [
        # the window starts no earlier than the drift (a scheduled retrain takes the whole window)
        ["-m", "batch_training", "retrain", "--window-days", "21", "--no-progress", "--after-drift"],
        ["-m", "batch_training", "compare", "--model", "click", "--no-progress", "--promote"],
    ]
    for argv in runner.calls:  # what batch_training's own parser accepts
        assert build_parser().parse_args(argv[2:]).cmd == argv[2]
    state = MonitorState.load(mon.state_path)
    assert state.streak == 0 and state.last_retrain_ms == 1_000_000_000 and state.windows["click/1"] == [17, 10]
    # drift goes on, but within the cool-down: no second retrain
    for w in (19, 21, 23):
        clock[0] += 600
        metrics.windows(click=(w, w - 7), churn=(4, 0))
        assert mon.tick() is None
    assert MonitorState.load(mon.state_path).streak == 6 and len(runner.calls) == 2
    clock[0] += 3600  # past the cool-down, still drifting
    metrics.windows(click=(24, 17), churn=(4, 0))
    assert mon.tick() is not None and len(runner.calls) == 4


def test_a_retrain_after_drift_waits_for_the_changed_world_on_the_workers_event_time(
    tmp_path: Path, metrics: _Metrics
) -> None:
    """retrain trained nothing (the drift too recent): no cool-down starts and the streak stands; the
    monitor asks again once the worker's event time reaches what retrain named, or at every poll when
    the worker exports none; drift that ends drops the wait."""
    clock = [1_000_000.0]
    mon, runner = _monitor(tmp_path, metrics.url, clock, persist=2, cooldown_s=3600, window_days=2)
    runner.waiting = {"until_ms": 5_000_000, "reason": "the drift began 0.50 days of events ago"}
    metrics.windows(event_s=1_000, click=(1, 1))
    assert mon.tick() is None  # the baseline
    metrics.windows(event_s=2_000, click=(3, 3))
    assert mon.tick() == {
        "reason": "drift: 2 drift windows in a row alarmed",
        "retrain": 0,
        "compare": {},
        "waiting": runner.waiting,
    }
    state = MonitorState.load(mon.state_path)
    assert state.drift_wait_ms == 5_000_000 and state.last_retrain_ms is None and state.streak == 2
    clock[0] += 60
    metrics.windows(event_s=4_999.999, click=(4, 4))  # short of it by a millisecond: not asked
    assert mon.tick() is None and len(runner.calls) == 1
    metrics.windows(click=(5, 5))  # no event time exported: retrain is asked, and still says wait
    outcome = mon.tick()
    assert outcome is not None and outcome["waiting"] == runner.waiting and len(runner.calls) == 2
    runner.waiting = None
    metrics.windows(event_s=5_000, click=(6, 6))
    assert mon.tick() == {"reason": "drift: 5 drift windows in a row alarmed", "retrain": 0, "compare": {"click": 0}}
    state = MonitorState.load(mon.state_path)
    assert state.drift_wait_ms is None and state.last_retrain_ms == 1_000_060_000 and state.streak == 0

    # a wait that drift ends: dropped
    mon2, runner2 = _monitor(tmp_path / "b", metrics.url, clock, persist=2, cooldown_s=0, window_days=2)
    runner2.waiting = {"until_ms": 9_000_000, "reason": "too early"}
    metrics.windows(event_s=6_000, click=(10, 10))
    mon2.tick()
    metrics.windows(event_s=6_001, click=(12, 12))
    outcome = mon2.tick()
    assert outcome is not None and outcome["waiting"] == runner2.waiting
    metrics.windows(event_s=6_002, click=(13, 12))  # a quiet window: drift no longer persists
    assert mon2.tick() is None and MonitorState.load(mon2.state_path).drift_wait_ms is None


def test_a_restarted_worker_an_absent_metric_and_a_down_worker(tmp_path: Path, metrics: _Metrics) -> None:
    clock = [0.0]
    mon, runner = _monitor(tmp_path, metrics.url, clock, persist=5)
    metrics.windows(click=(10, 10))
    mon.tick()
    metrics.windows(click=(2, 2))  # the counters began again: 2 new windows, both alarmed
    mon.tick()
    s = MonitorState.load(mon.state_path)
    assert (s.windows, s.streak) == ({"click/1": [2, 2]}, 2)
    metrics.text = "stream_events_total 5\n"  # no drift windows exported
    mon.tick()
    assert MonitorState.load(mon.state_path).streak == 0
    down = Monitor(
        metrics_url="http://127.0.0.1:9/metrics",
        metric="stream_drift_alarmed_windows_total",
        state_path=mon.state_path,
        retrain_report=runner.report,
        runner=runner,
        clock=lambda: clock[0],
    )
    assert down.tick() is None and runner.calls == []


def test_the_schedule_retrains_without_drift(tmp_path: Path, metrics: _Metrics) -> None:
    clock = [50_000.0]
    mon, runner = _monitor(tmp_path, metrics.url, clock, every_s=86_400, models=("click",), promote=False)
    metrics.windows(click=(0, 0))
    assert mon.tick() == {"reason": "schedule: no retrain yet", "retrain": 0, "compare": {"click": 0}}
    assert runner.calls[0][-2:] == ["--models", "click"] and "--promote" not in runner.calls[1]
    assert "--after-drift" not in runner.calls[0]  # no drift: the whole window
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
    assert observe(s, {"m/1": (4, 1)}) == 0 and observe(s, {"m/1": (4, 1)}) == 0
    assert observe(s, {"m/1": (5, 2), "m/2": (1, 1)}) == 2 and s.streaks == {"m/1": 1, "m/2": 1}
    assert due(s, 0, persist=1, every_s=0, cooldown_s=0) == "drift: 1 drift windows in a row alarmed"
    s.last_retrain_ms = 0
    assert due(s, 999, persist=1, every_s=0, cooldown_s=1) is None


def test_cli_once_polls_and_keeps_its_state(tmp_path: Path, metrics: _Metrics, capsys: Any) -> None:
    metrics.windows(click=(7, 3))
    state = tmp_path / "m" / "state.json"
    assert main(["monitor", "--once", "--no-outcomes", "--metrics-url", metrics.url, "--state", str(state)]) == 0
    assert MonitorState.load(state).windows == {"click/1": [7, 3]}
    assert main(["monitor", "--once", "--interval", "soon"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--interval" in err


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STREAM_MONITOR_METRICS_URL", "ftp://worker/metrics"),
        ("STREAM_MONITOR_ALARM_METRIC", "drift alarms"),
        ("STREAM_SHADOW_LOOKS", "0"),
        ("STREAM_SHADOW_LOOK_GROWTH", "1.0"),
    ],
)
def test_a_bad_monitor_setting_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["monitor", "--once"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and variable in err and value in err


# --- the shadow compare ------------------------------------------------------------------------


class _ShadowRunner:
    """batch_training as the monitor sees it: retrain makes a click challenger; ``compare --shadow`` answers
    with the labelled pairs the test says exist (``wait`` below --min-pairs, else the paired test's decision)."""

    def __init__(self, reports: Path) -> None:
        self.retrain = reports / "training" / "retrain" / "retrain.json"
        self.compare = reports / "training" / "compare"
        self.calls: list[list[str]] = []
        self.pairs = 0
        self.decision = "promote"
        self.shadow_exit = 0
        self.version = "7"  # the challenger retrain registers (and compare finds)

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        if argv[2] == "retrain":
            self.retrain.parent.mkdir(parents=True, exist_ok=True)
            made = {"click": {"status": "challenger", "version": self.version}}
            self.retrain.write_text(json.dumps({"models": made}))
        elif "--shadow" in argv:
            if self.shadow_exit:
                return self.shadow_exit
            need = int(argv[argv.index("--min-pairs") + 1])
            wait = self.pairs < need
            self.compare.mkdir(parents=True, exist_ok=True)
            (self.compare / "click.json").write_text(
                json.dumps(
                    {
                        "model": "click",
                        "decision": "wait" if wait else self.decision,
                        "reason": f"{self.pairs} of {need} labelled pairs in shadow" if wait else "the test",
                        "promoted": not wait and self.decision == "promote" and "--promote" in argv,
                        "held_out": {"rows": self.pairs},
                        "challenger_version": self.version,
                    }
                )
            )
        return 0


def _shadow_monitor(tmp_path: Path, clock: list[float], **kw: Any) -> tuple[Monitor, _ShadowRunner]:
    runner = _ShadowRunner(tmp_path / "reports")
    given = {"every_s": 86_400 * 365, "shadow_min_pairs": 500, "shadow_max_wait_s": 3 * 86_400} | kw
    mon = Monitor(
        metrics_url="http://unused/metrics",
        metric="stream_drift_alarmed_windows_total",
        state_path=tmp_path / "state.json",
        retrain_report=runner.retrain,
        runner=runner,
        fetch=lambda url: "",
        clock=lambda: clock[0],
        models_dir=tmp_path / "models",
        **given,
    )
    return mon, runner


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_a_challenger_waits_for_enough_shadow_pairs_then_the_shadow_compare_decides(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    mon, runner = _shadow_monitor(tmp_path, clock)
    outcome = mon.tick()  # the schedule's first retrain
    assert outcome is not None and outcome["compare"] == {"click": "wait"}
    assert [a[2] for a in runner.calls] == ["retrain", "compare"]
    shadow = runner.calls[1]
    assert shadow[3:] == ["--model", "click", "--shadow", "--min-pairs", "500", "--min-events", "500", "--look", "1",
                          "--looks", "3", "--no-progress", "--promote"]  # fmt: skip
    parsed = build_parser().parse_args(shadow[2:])  # what batch_training accepts
    assert (parsed.min_pairs, parsed.look, parsed.looks) == (500, 1, 3)
    assert MonitorState.load(mon.state_path).pending == {"click": {"version": "7", "since_ms": 1_000_000_000}}
    for pairs in (0, 120, 499):  # not enough yet: no offline compare, nothing decided
        clock[0] += 3600
        runner.pairs = pairs
        assert mon.tick() is None
        assert "click" in MonitorState.load(mon.state_path).pending
    assert all("--shadow" in a for a in runner.calls[1:])
    clock[0] += 3600
    runner.pairs = 500
    mon.tick()
    state = MonitorState.load(mon.state_path)
    assert state.pending == {}
    assert state.decided["click"] == {
        "source": "shadow",
        "decision": "promote",
        "promoted": True,
        "version": "7",
        "look": 1,
        "looks": 3,
        "pairs": 500,
        "final": True,
    }
    calls = len(runner.calls)
    clock[0] += 3600
    mon.tick()  # decided: not asked again
    assert len(runner.calls) == calls


@pytest.mark.parametrize("fallback", ["none", "offline"])
def test_too_few_shadow_pairs_in_the_wait_go_to_the_stated_fallback(tmp_path: Path, fallback: str) -> None:
    from stream.models.registry import ModelRegistry

    clock = [0.0]
    mon, runner = _shadow_monitor(tmp_path, clock, fallback=fallback)
    runner.pairs = 40
    mon.tick()
    clock[0] += 2 * 86_400
    mon.tick()
    assert "click" in MonitorState.load(mon.state_path).pending  # still within the wait
    clock[0] += 86_400  # three days: past the wait
    mon.tick()
    state = MonitorState.load(mon.state_path)
    assert state.pending == {}
    offline = [a for a in runner.calls if a[2] == "compare" and "--shadow" not in a]
    history = ModelRegistry(tmp_path / "models").history("click")
    if fallback == "offline":
        assert offline == [["-m", "batch_training", "compare", "--model", "click", "--no-progress", "--promote"]]
        assert state.decided["click"]["source"] == "offline" and history == []  # compare records its own
    else:
        assert offline == [] and state.decided["click"]["decision"] == "keep"
        assert [(r["action"], r["to_version"]) for r in history] == [("compare", "7")]
        assert "40 of 500 labelled pairs in shadow after 72.0 h" in history[0]["reason"]
        assert history[0]["evidence"]["held_out"] == {"rows": 40}


@pytest.mark.parametrize("fallback", ["none", "offline"])
def test_a_failing_shadow_compare_is_retried_then_falls_back_only_when_stated(tmp_path: Path, fallback: str) -> None:
    from stream.models.registry import ModelRegistry

    clock = [0.0]
    mon, runner = _shadow_monitor(tmp_path, clock, fallback=fallback)
    runner.shadow_exit = 2  # compare --shadow fails (ClickHouse down, say): no report
    assert mon.tick() == {"reason": "schedule: no retrain yet", "retrain": 0, "compare": {"click": "wait"}}
    clock[0] += 86_400
    mon.tick()
    assert "click" in MonitorState.load(mon.state_path).pending  # asked again, still within the wait
    clock[0] += 2 * 86_400
    mon.tick()
    assert MonitorState.load(mon.state_path).pending == {}
    assert sum("--shadow" in a for a in runner.calls) == 3
    offline = [a for a in runner.calls if a[2] == "compare" and "--shadow" not in a]
    assert len(offline) == (1 if fallback == "offline" else 0)
    history = ModelRegistry(tmp_path / "models").history("click")
    assert len(history) == (0 if fallback == "offline" else 1)
    if fallback == "none":
        assert history[0]["reason"].startswith("keep: compare --shadow failed (exit 2) for 72.0 h")


def test_the_outcome_job_runs_at_each_poll_and_its_failure_stops_nothing(tmp_path: Path) -> None:
    clock = [0.0]
    runs: list[int] = []

    def job() -> str:
        runs.append(1)
        if len(runs) == 2:
            raise ConnectionError("ClickHouse is restarting")
        return "churn: 1 windows written"

    mon, runner = _shadow_monitor(tmp_path, clock, outcomes=job)
    for _ in range(3):
        mon.tick()
        clock[0] += 60
    assert len(runs) == 3 and runner.calls[0][2] == "retrain"


# --- a kept challenger is looked at again as its pairs grow --------------------------------------


def test_a_kept_challenger_is_looked_at_again_as_its_pairs_grow_then_promoted(tmp_path: Path) -> None:
    clock = [0.0]
    mon, runner = _shadow_monitor(tmp_path, clock)  # 500 pairs for the first look; 3 looks, 2-fold growth
    runner.pairs, runner.decision = 600, "keep"
    assert mon.tick() == {"reason": "schedule: no retrain yet", "retrain": 0, "compare": {"click": "keep"}}
    state = MonitorState.load(mon.state_path)
    assert state.pending == {"click": {"version": "7", "since_ms": 0, "looks": 1, "pairs": 600, "next_at": 1200}}
    assert state.decided["click"]["decision"] == "keep" and state.decided["click"]["final"] is False
    clock[0] += 3600
    runner.pairs = 1199  # not yet doubled: compare is asked for 1200 and waits
    mon.tick()
    assert (_flag(runner.calls[-1], "--min-pairs"), _flag(runner.calls[-1], "--look")) == ("1200", "2")
    assert MonitorState.load(mon.state_path).pending["click"]["looks"] == 1
    clock[0] += 3600
    runner.pairs = 1300
    mon.tick()  # look 2: kept again; look 3 at twice its pairs
    assert MonitorState.load(mon.state_path).pending["click"] == {
        "version": "7", "since_ms": 0, "looks": 2, "pairs": 1300, "next_at": 2600,
    }  # fmt: skip
    clock[0] += 3600
    runner.pairs, runner.decision = 2600, "promote"
    mon.tick()
    state = MonitorState.load(mon.state_path)
    assert state.pending == {}
    assert state.decided["click"] == {
        "source": "shadow",
        "decision": "promote",
        "promoted": True,
        "version": "7",
        "look": 3,
        "looks": 3,
        "pairs": 2600,
        "final": True,
    }
    shadow = [a for a in runner.calls if "--shadow" in a]
    assert [(_flag(a, "--look"), _flag(a, "--looks"), _flag(a, "--min-pairs")) for a in shadow] == [
        ("1", "3", "500"), ("2", "3", "1200"), ("2", "3", "1200"), ("3", "3", "2600"),
    ]  # fmt: skip
    assert all(_flag(a, "--min-events") == "500" for a in shadow)
    for argv in shadow:
        assert build_parser().parse_args(argv[2:]).look == int(_flag(argv, "--look"))
    calls = len(runner.calls)
    clock[0] += 3600
    mon.tick()  # decided: not asked again
    assert len(runner.calls) == calls


def test_the_looks_are_bounded_and_the_last_keep_is_final(tmp_path: Path) -> None:
    clock = [0.0]
    mon, runner = _shadow_monitor(tmp_path, clock)
    runner.decision = "keep"
    for pairs in (500, 1000, 2000, 4000, 8000):
        runner.pairs = pairs
        mon.tick()
        clock[0] += 3600
    shadow = [a for a in runner.calls if "--shadow" in a]
    assert [_flag(a, "--look") for a in shadow] == ["1", "2", "3"]  # three looks, then no more
    state = MonitorState.load(mon.state_path)
    assert state.pending == {} and state.decided["click"]["final"] is True and state.decided["click"]["look"] == 3


def test_a_new_challenger_starts_its_looks_again(tmp_path: Path) -> None:
    clock = [0.0]
    mon, runner = _shadow_monitor(tmp_path, clock, every_s=86_400, shadow_max_wait_s=30 * 86_400)
    runner.pairs, runner.decision = 600, "keep"
    mon.tick()  # v7 kept at look 1
    clock[0] += 86_400  # the schedule's next retrain: v8
    runner.version = "8"
    mon.tick()
    retrain_at = [i for i, a in enumerate(runner.calls) if a[2] == "retrain"][-1]
    after = runner.calls[retrain_at + 1]
    assert (_flag(after, "--look"), _flag(after, "--min-pairs")) == ("1", "500")  # v8's first look
    assert MonitorState.load(mon.state_path).pending["click"] == {
        "version": "8", "since_ms": 86_400_000, "looks": 1, "pairs": 600, "next_at": 1200,
    }  # fmt: skip
    # a challenger replaced by hand between looks: compare judged the new one, so that was its first look
    runner.version, runner.pairs = "9", 1500
    clock[0] += 3600
    mon.tick()
    pending = MonitorState.load(mon.state_path).pending["click"]
    assert (pending["version"], pending["looks"], pending["next_at"]) == ("9", 1, 3000)


def test_a_next_look_without_its_pairs_in_the_wait_makes_the_keep_final_and_recorded(tmp_path: Path) -> None:
    from stream.models.registry import ModelRegistry

    clock = [0.0]
    mon, runner = _shadow_monitor(tmp_path, clock, fallback="offline")
    runner.pairs, runner.decision = 600, "keep"
    mon.tick()
    runner.pairs = 700
    clock[0] += 3 * 86_400  # the wait is over before look 2's 1200 pairs
    mon.tick()
    state = MonitorState.load(mon.state_path)
    assert state.pending == {} and state.decided["click"]["final"] is True
    assert [a for a in runner.calls if a[2] == "compare" and "--shadow" not in a] == []  # judged: no fallback
    history = ModelRegistry(tmp_path / "models").history("click")
    assert [(r["action"], r["to_version"]) for r in history] == [("compare", "7")]
    assert history[0]["reason"] == (
        "keep (final): kept at look 1 of 3 on 600 labelled pairs; look 2 needed 1200 "
        "(700 of 1200 labelled pairs in shadow after 72.0 h)"
    )
    assert history[0]["evidence"]["looks"] == {"look": 1, "looks": 3, "pairs": 600, "next_at": 1200, "final": True}


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--look", "4", "--looks", "3"], "--look"), (["--looks", "0"], "--looks"), (["--look", "2"], "--look")],
)
def test_compare_refuses_a_bad_look_in_one_line(capsys: Any, argv: list[str], named: str) -> None:
    from batch_training.cli import main as batch_main

    assert batch_main(["compare", "--model", "click", "--shadow", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err

"""``python -m stream monitor``: retrain when drift persists (or on a schedule), then compare and promote.

Each poll first runs the horizon-outcome job (``stream outcomes --once``: churn and conversion
quality once their horizon has passed; ``STREAM_MONITOR_OUTCOMES``, ``--no-outcomes``), then
scrapes the worker's Prometheus ``/metrics``: per model version, the drift windows it completed
(``stream_drift_windows_total``) and those that alarmed (``STREAM_MONITOR_ALARM_METRIC``, default
``stream_drift_alarmed_windows_total``). Drift *persists* once ``persist`` windows in a row of one
model version alarmed (counted in windows, not polls: a poll may see none or several; counters
below the last scrape's are a restarted worker). Then, unless the last retrain is more recent
than the cool-down, the monitor runs
``python -m batch_training retrain --window-days N --after-drift [--models ...]`` (a subprocess: training's
memory is returned when it exits, and a crash in it does not stop the monitor; ``--after-drift``:
the window starts no earlier than the drift streak, so the challenger learns the changed world
only). While the drift began less than ``STREAM_RETRAIN_MIN_DRIFT_DAYS`` of events ago, retrain
trains nothing and says from which event time it will; the monitor then waits until the worker's
``stream_event_time_latest_seconds`` reaches it (no cool-down starts, the streak stands), and asks
again at every poll where the worker exports no event time. Each model it made
a challenger of (from retrain's report, ``STREAM_REPORTS_DIR/training/retrain/retrain.json``) is
then judged (``STREAM_MONITOR_COMPARE``):

* ``shadow`` (default): the worker scores the new challenger in shadow (``STREAM_SHADOW_ALIAS``).
  At every poll the monitor runs ``compare --model M --shadow --min-pairs N``; while fewer than
  ``N`` (``STREAM_SHADOW_MIN_PAIRS``) live events scored by both have their outcome, compare says
  ``wait`` and records nothing; once there are ``N``, its paired test decides (and promotes) and
  records the decision. A challenger still short of pairs after ``STREAM_SHADOW_MAX_WAIT_S``, or
  whose shadow compare failed (exit code, no report) at every poll till then, goes to
  ``STREAM_MONITOR_FALLBACK``: ``none`` keeps the champion and records why in the registry's
  history, ``offline`` runs the offline compare. A challenger the test *kept* stays in shadow and
  is looked at again once its labelled pairs have grown ``STREAM_SHADOW_LOOK_GROWTH``-fold (and by
  ``STREAM_SHADOW_MIN_PAIRS``), at most ``STREAM_SHADOW_LOOKS`` looks in all; every look tests at
  one-sided confidence ``1 - (1 - STREAM_COMPARE_CONFIDENCE) / STREAM_SHADOW_LOOKS`` (Bonferroni),
  so the chance of a false promotion over all looks is at most ``1 - STREAM_COMPARE_CONFIDENCE``.
  Each look's decision is recorded by compare; a next look whose pairs do not come within
  ``STREAM_SHADOW_MAX_WAIT_S`` makes the last keep final (recorded). A new challenger (a new
  retrain) starts at look 1;
* ``offline``: ``compare --model M [--promote]`` at once, on the latest archived events.

``every`` adds a schedule: a retrain once that long has passed since the last one, drift or not.
Every step and its exit code is logged; the registry's history records what training did.

The monitor's own state (the last counts, the streaks, the last retrain, the challengers waiting for
shadow pairs) is a JSON file, written atomically after every poll, so ``--once`` from cron carries
on where the previous run stopped.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stream import arguments
from stream.errors import StreamError
from stream.models import MODELS

log = logging.getLogger("stream.monitor")

Runner = Callable[[list[str]], int]


#: drift windows completed per model version (the worker's, stream/worker/monitor.py)
WINDOWS_METRIC = "stream_drift_windows_total"


def window_counts(text: str, alarmed_metric: str) -> dict[str, tuple[float, float]] | None:
    """Per model version ("model/version"): (drift windows, alarmed windows) in a Prometheus text exposition
    (None if it has no drift windows)."""
    from prometheus_client.parser import text_string_to_metric_families

    windows: dict[str, float] = {}
    alarmed: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (WINDOWS_METRIC, alarmed_metric):
                key = f"{sample.labels.get('model', '')}/{sample.labels.get('version', '')}"
                into = windows if sample.name == WINDOWS_METRIC else alarmed
                into[key] = into.get(key, 0.0) + float(sample.value)
    if not windows:
        return None
    return {k: (w, alarmed.get(k, 0.0)) for k, w in windows.items()}


#: the newest event time a worker processed (stream/worker/metrics.py): the stream's clock
EVENT_TIME_METRIC = "stream_event_time_latest_seconds"


def latest_event_ms(text: str) -> int | None:
    """The newest event time (epoch ms) in a Prometheus text exposition, over its workers; None without one.

    >>> latest_event_ms("stream_event_time_latest_seconds 1700000000.5\\nstream_events_total 3\\n")
    1700000000500
    """
    from prometheus_client.parser import text_string_to_metric_families

    values = [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == EVENT_TIME_METRIC
    ]
    return round(max(values) * 1000) if values else None


@dataclass
class MonitorState:
    """What the monitor remembers between polls (and runs)."""

    #: per model version ("model/version"): [drift windows, alarmed windows] at the last successful scrape
    #: (None before the first: that scrape is the baseline)
    windows: dict[str, list[float]] | None = None
    #: per model version: its latest drift windows that alarmed, in a row
    streaks: dict[str, int] = field(default_factory=dict)
    streak: int = 0  # the longest of those
    last_retrain_ms: int | None = None
    last_cycle: dict[str, Any] = field(default_factory=dict)
    #: a retrain drift made due waits until the stream's event time reaches this (epoch ms): retrain
    #: found too little of the changed world (STREAM_RETRAIN_MIN_DRIFT_DAYS)
    drift_wait_ms: int | None = None
    #: challengers waiting for enough labelled shadow pairs: model -> {"version", "since_ms"}
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the last decision on each model's challenger: model -> {"source", "decision", ...}
    decided: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> MonitorState:
        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise StreamError(f"monitor state {path} is not readable ({exc}): delete it to start afresh") from exc

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def observe(state: MonitorState, counts: dict[str, tuple[float, float]] | None) -> int:
    """Fold one scrape into the state; returns the alarmed windows since the last (0 on the first scrape).

    A model version's streak grows by the windows completed since the last scrape when all of them
    alarmed, and restarts at 0 when any did not (their order within a poll is unknown). Counters
    below the last scrape's are a restarted worker: all of theirs are new.
    """
    if counts is None:  # not exported (yet): no drift windows to judge
        state.streaks, state.streak = {}, 0
        return 0
    first = state.windows is None
    last = state.windows or {}
    new_alarmed = 0
    for key, (w, a) in counts.items():
        w0, a0 = last.get(key, (0.0, 0.0))
        if w < w0 or a < a0:
            w0, a0 = 0.0, 0.0
        dw, da = (0, 0) if first else (int(w - w0), int(a - a0))
        new_alarmed += da
        if dw > 0:
            state.streaks[key] = state.streaks.get(key, 0) + dw if da == dw else 0
    state.windows = {k: [w, a] for k, (w, a) in counts.items()}
    state.streaks = {k: v for k, v in state.streaks.items() if k in counts}
    state.streak = max(state.streaks.values(), default=0)
    return new_alarmed


#: how :func:`due` begins the reason of a retrain that drift made due
DRIFT_REASON = "drift:"


def due(state: MonitorState, now_ms: int, *, persist: int, every_s: float, cooldown_s: float) -> str | None:
    """Why a retrain is due now, or None."""
    since = None if state.last_retrain_ms is None else (now_ms - state.last_retrain_ms) / 1000
    if state.streak >= persist and (since is None or since >= cooldown_s):
        return f"{DRIFT_REASON} {state.streak} drift windows in a row alarmed"
    if every_s > 0 and (since is None or since >= every_s):
        return "schedule: " + ("no retrain yet" if since is None else f"last retrain {since / 3600:.1f} h ago")
    return None


def run_subprocess(argv: list[str]) -> int:
    """Run ``python -m ...`` with this interpreter; its output lines go to the log."""
    proc = subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        log.info("  | %s", line.rstrip())
    return proc.wait()


def http_get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - a configured http(s) URL
        return str(resp.read().decode("utf-8", "replace"))


@dataclass
class Monitor:
    """One poll at a time (:meth:`tick`); :meth:`run` polls until stopped."""

    metrics_url: str
    metric: str
    state_path: Path
    retrain_report: Path
    persist: int = 3
    every_s: float = 0.0
    cooldown_s: float = 6 * 3600.0
    window_days: int = 60
    models: Sequence[str] = ()
    promote: bool = True
    profile: str | None = None
    #: shadow: wait for ``shadow_min_pairs`` labelled live pairs, then ``compare --shadow``; offline: at once
    compare: str = "shadow"
    shadow_min_pairs: int = 1000
    shadow_max_wait_s: float = 7 * 86_400.0
    #: looks at most at one challenger kept in shadow, the next once its pairs grew this many times
    shadow_looks: int = 3
    shadow_look_growth: float = 2.0
    #: a challenger not judged in shadow (too few pairs in time, or no live outcome): none or offline
    fallback: str = "none"
    #: the model registry (its history records a challenger the monitor gives up on)
    models_dir: Path | None = None
    #: run at each poll before the rest (the horizon-outcome job); an error is logged, not raised
    outcomes: Callable[[], Any] | None = None
    runner: Runner = run_subprocess
    fetch: Callable[[str], str] = http_get
    clock: Callable[[], float] = time.time

    def tick(self) -> dict[str, Any] | None:
        """Scrape, update the state, retrain/compare if due; returns the cycle's outcome (None: nothing due)."""
        state = MonitorState.load(self.state_path)
        if self.outcomes is not None:
            try:
                log.info("horizon outcomes: %s", self.outcomes())
            except Exception as exc:  # ClickHouse down: the drift watch goes on
                log.warning("horizon outcomes failed (%s: %s)", type(exc).__name__, exc)
        event_ms = None
        try:
            text = self.fetch(self.metrics_url)
            counts = window_counts(text, self.metric)
            event_ms = latest_event_ms(text)
        except Exception as exc:  # a worker that is down, restarting or not reachable: try next poll
            log.warning("cannot scrape %s (%s: %s)", self.metrics_url, type(exc).__name__, exc)
        else:
            if counts is None:
                log.warning("%s has no %s: no drift windows are exported", self.metrics_url, WINDOWS_METRIC)
            new = observe(state, counts)
            log.info("drift: %d new alarmed windows, streak %d/%d %s", new, state.streak, self.persist, state.streaks)
        now_ms = int(self.clock() * 1000)
        reason = due(state, now_ms, persist=self.persist, every_s=self.every_s, cooldown_s=self.cooldown_s)
        for name in list(state.pending):  # challengers of earlier cycles waiting for shadow pairs
            self._judge(state, name, now_ms)
        if state.streak < self.persist:  # drift gone: nothing waits for more of a changed world
            state.drift_wait_ms = None
        outcome = None
        if reason is not None and self._waits(state, reason, event_ms):
            reason = None
        if reason is not None:
            outcome = self.cycle(reason, state, now_ms)
            waiting = outcome.get("waiting")
            if waiting:  # nothing trained: no cool-down, and the streak stands
                state.drift_wait_ms = int(waiting["until_ms"])
            else:
                state.drift_wait_ms = None
                state.last_retrain_ms = now_ms
                state.streak, state.streaks = 0, {}
            state.last_cycle = outcome
        state.save(self.state_path)
        return outcome

    @staticmethod
    def _waits(state: MonitorState, reason: str, event_ms: int | None) -> bool:
        """Whether a retrain drift made due still waits for the changed world (the worker's event time
        short of what retrain asked for). Without the worker's event time, retrain is asked again."""
        if not reason.startswith(DRIFT_REASON) or state.drift_wait_ms is None or event_ms is None:
            return False
        if event_ms >= state.drift_wait_ms:
            return False
        log.info(
            "retrain due (%s) waits for more of the changed world: %.1f h of event time to go",
            reason,
            (state.drift_wait_ms - event_ms) / 3_600_000,
        )
        return True

    def _training_args(self) -> list[str]:
        return ["--no-progress", *(["--profile", self.profile] if self.profile else [])]

    def cycle(self, reason: str, state: MonitorState | None = None, now_ms: int | None = None) -> dict[str, Any]:
        """retrain, then judge each new challenger: in shadow (it waits for pairs) or offline at once."""
        state = state if state is not None else MonitorState()
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        log.info("retrain due (%s)", reason)
        argv = ["-m", "batch_training", "retrain", "--window-days", str(self.window_days), *self._training_args()]
        if reason.startswith(DRIFT_REASON):  # train on the changed world only, not on rows from before it
            argv.append("--after-drift")
        if self.models:
            argv += ["--models", *self.models]
        self.retrain_report.unlink(missing_ok=True)  # not a previous run's
        code = self.runner(argv)
        log.info("retrain exited %d", code)
        outcome: dict[str, Any] = {"reason": reason, "retrain": code, "compare": {}}
        if code != 0 or not self.retrain_report.exists():
            return outcome
        report = json.loads(self.retrain_report.read_text())
        if report.get("waiting"):
            log.info("retrain trained nothing yet: %s", report["waiting"].get("reason", ""))
            outcome["waiting"] = report["waiting"]
            return outcome
        for name, entry in report.get("models", {}).items():
            if entry.get("status") != "challenger":
                log.info("%s: no challenger (%s)", name, entry.get("reason", entry.get("status")))
                continue
            if self.compare == "offline":
                outcome["compare"][name] = self._offline(state, name)
                continue
            # the worker picks the new challenger up within STREAM_MODEL_RELOAD_S and scores it in shadow
            state.pending[name] = {"version": str(entry.get("version")), "since_ms": now_ms}
            outcome["compare"][name] = self._judge(state, name, now_ms)
        return outcome

    def _offline(self, state: MonitorState, name: str, why: str = "") -> int:
        argv = ["-m", "batch_training", "compare", "--model", name, *self._training_args()]
        if self.promote:
            argv.append("--promote")
        code = self.runner(argv)
        log.info("compare %s exited %d%s", name, code, f" ({why})" if why else "")
        state.pending.pop(name, None)
        state.decided[name] = {"source": "offline", "exit": code, **({"why": why} if why else {})}
        return code

    def _compare_report(self, name: str) -> Path:
        """Where ``batch_training compare`` writes its result (the retrain report's sibling workspace)."""
        return self.retrain_report.parent.parent / "compare" / f"{name}.json"

    def _judge(self, state: MonitorState, name: str, now_ms: int) -> str:
        """One look at a pending challenger: the shadow compare once it has enough pairs, else wait or fall back.

        The first look needs ``shadow_min_pairs`` labelled pairs; a challenger kept there is looked at again
        once they have grown (:func:`stream.monitoring.compare.next_look`), at most ``shadow_looks`` looks,
        each at the Bonferroni share of the confidence (``compare --look k --looks K``). Returns what
        happened: ``wait``, the shadow decision (``promote``/``keep``), ``offline``, ``given up`` or
        ``kept`` (a keep made final).
        """
        from stream.monitoring.compare import next_look

        pending = state.pending[name]
        done = int(pending.get("looks", 0))  # looks already taken at this challenger
        need = int(pending["next_at"]) if done else self.shadow_min_pairs
        if done >= self.shadow_looks:  # STREAM_SHADOW_LOOKS lowered since its last look: no look left
            why = f"STREAM_SHADOW_LOOKS is {self.shadow_looks}"
            return self._final_keep(state, name, pending, why, (now_ms - int(pending["since_ms"])) / 1000, None)
        argv = ["-m", "batch_training", "compare", "--model", name, "--shadow"]
        argv += ["--min-pairs", str(need), "--min-events", str(self.shadow_min_pairs)]
        argv += ["--look", str(done + 1), "--looks", str(self.shadow_looks)]
        argv += [*self._training_args(), *(["--promote"] if self.promote else [])]
        report = self._compare_report(name)
        report.unlink(missing_ok=True)
        code = self.runner(argv)
        result = json.loads(report.read_text()) if code == 0 and report.exists() else None
        waited_s = (now_ms - int(pending["since_ms"])) / 1000
        if result is not None and result.get("decision") != "wait":
            decision = str(result["decision"])
            look = done + 1
            version = str(result.get("challenger_version", pending["version"]))
            if version != str(pending["version"]):  # another challenger than the one looked at: its first look
                log.info(
                    "%s: the challenger is v%s now, not v%s: its looks start again", name, version, pending["version"]
                )
                look, pending = 1, {"version": version, "since_ms": now_ms}
                state.pending[name] = pending
            pairs = int((result.get("held_out") or {}).get("rows", 0))
            nxt = next_look(
                look,
                pairs,
                decision,
                looks=self.shadow_looks,
                growth=self.shadow_look_growth,
                min_new=self.shadow_min_pairs,
            )
            log.info(
                "%s: shadow compare, look %d of %d on %d pairs: %s (%s)",
                name,
                look,
                self.shadow_looks,
                pairs,
                decision,
                result.get("reason"),
            )
            state.decided[name] = {
                "source": "shadow",
                "decision": decision,
                "promoted": bool(result.get("promoted")),
                "version": version,
                "look": look,
                "looks": self.shadow_looks,
                "pairs": pairs,
                "final": nxt is None,
            }
            if nxt is None:
                state.pending.pop(name)
            else:  # kept, with looks left: stays in shadow until its pairs have grown
                pending |= {"looks": look, "pairs": pairs, "next_at": nxt}
                log.info("%s: challenger v%s kept for now; look %d at %d labelled pairs", name, version, look + 1, nxt)
            return decision
        if result is None:  # ClickHouse down, a model it cannot judge: asked again until the wait is over
            log.warning("%s: compare --shadow exited %d without a result", name, code)
        if waited_s < self.shadow_max_wait_s:
            if result is not None:
                log.info("%s: challenger v%s in shadow: %s; waiting", name, pending["version"], result.get("reason"))
            return "wait"
        why = (
            f"{result.get('reason')} after {waited_s / 3600:.1f} h"
            if result is not None
            else f"compare --shadow failed (exit {code}) for {waited_s / 3600:.1f} h"
        )
        if done:  # judged and kept at its last look: that keep is final, no fallback
            return self._final_keep(state, name, pending, why, waited_s, result)
        if self.fallback == "offline":
            self._offline(state, name, why)
            return "offline"
        log.warning("%s: challenger v%s not judged (%s); the champion stays", name, pending["version"], why)
        self._record_keep(
            name,
            pending["version"],
            f"keep: {why}; no offline fallback (STREAM_MONITOR_FALLBACK=none)",
            {"min_pairs": self.shadow_min_pairs, "waited_s": waited_s},
            result,
        )
        state.pending.pop(name)
        state.decided[name] = {"source": "shadow", "decision": "keep", "why": why, "version": pending["version"]}
        return "given up"

    def _record_keep(
        self, name: str, version: Any, reason: str, evidence: dict[str, Any], result: dict[str, Any] | None
    ) -> None:
        """The registry's record of a challenger kept out without a test that decided it (``result``: the
        shadow compare's last report, if any)."""
        if self.models_dir is None:
            return
        from stream.models.registry import ModelRegistry

        held_out = {"held_out": result.get("held_out")} if result is not None else {}
        ModelRegistry(self.models_dir).record(
            name,
            "compare",
            to_version=version,
            reason=reason,
            evidence={"source": "shadow", "decision": "keep", **evidence, **held_out},
        )

    def _final_keep(
        self, state: MonitorState, name: str, pending: dict[str, Any], why: str, waited_s: float, result: Any
    ) -> str:
        """A kept challenger whose next look did not come within the wait: its last keep stands, recorded."""
        done = int(pending["looks"])
        log.warning(
            "%s: challenger v%s kept at look %d of %d; no look %d (%s): the keep is final",
            name,
            pending["version"],
            done,
            self.shadow_looks,
            done + 1,
            why,
        )
        looks = {
            "look": done,
            "looks": self.shadow_looks,
            "pairs": pending["pairs"],
            "next_at": pending["next_at"],
            "final": True,
        }
        self._record_keep(
            name,
            pending["version"],
            f"keep (final): kept at look {done} of {self.shadow_looks} on {pending['pairs']} labelled pairs; "
            f"look {done + 1} needed {pending['next_at']} ({why})",
            {"looks": looks, "waited_s": waited_s},
            result,
        )
        state.pending.pop(name)
        state.decided[name] = {
            **state.decided.get(name, {}),
            "source": "shadow",
            "decision": "keep",
            "version": pending["version"],
            "final": True,
            "why": why,
        }
        return "kept"

    def run(self, interval_s: float, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            started = self.clock()
            self.tick()
            stop.wait(max(0.0, interval_s - (self.clock() - started)))


def _stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_monitor(args: Any) -> int:
    from stream.config import load_settings

    settings = load_settings()
    url = args.metrics_url or settings.monitor_metrics_url or f"http://127.0.0.1:{settings.worker_web_port}/metrics"
    mon = Monitor(
        metrics_url=url,
        metric=args.metric or settings.monitor_alarm_metric,
        state_path=Path(args.state) if args.state else Path(settings.data_dir) / "monitor" / "state.json",
        retrain_report=Path(settings.reports_dir) / "training" / "retrain" / "retrain.json",
        persist=args.persist or settings.monitor_persist,
        every_s=settings.retrain_every_s if args.every is None else args.every,
        cooldown_s=settings.monitor_cooldown_s if args.cooldown is None else args.cooldown,
        window_days=args.window_days or settings.retrain_window_days,
        models=args.models or (),
        promote=not args.no_promote,
        profile=args.profile,
        compare=args.compare or settings.monitor_compare,
        shadow_min_pairs=settings.shadow_min_pairs,
        shadow_max_wait_s=settings.shadow_max_wait_s,
        shadow_looks=settings.shadow_looks,
        shadow_look_growth=settings.shadow_look_growth,
        fallback=settings.monitor_fallback,
        models_dir=Path(settings.models_dir),
    )
    if settings.monitor_outcomes and not args.no_outcomes:
        from stream.tools.outcomes import run_once

        mon.outcomes = lambda: run_once(settings).summary()
    if args.once:
        mon.tick()
        return 0
    signal.signal(signal.SIGTERM, _stop_on_signal)
    interval = args.interval or settings.monitor_interval_s
    log.info("monitoring %s (%s) every %gs; state %s", url, mon.metric, interval, mon.state_path)
    try:
        mon.run(interval)
    except KeyboardInterrupt:
        log.info("monitor stopped")
    return 0


def register(sub: Any) -> None:
    """Add ``monitor`` to the CLI (called by :func:`stream.cli.build_parser`)."""
    p = sub.add_parser("monitor", help="retrain when drift persists or on a schedule, then compare and promote")
    p.add_argument("--once", action="store_true", help="one poll, then exit (for cron or a systemd timer)")
    p.add_argument("--metrics-url", help="the worker's /metrics (default: STREAM_MONITOR_METRICS_URL)")
    p.add_argument("--metric", help="the alarmed-drift-window counter (default: STREAM_MONITOR_ALARM_METRIC)")
    p.add_argument(
        "--persist",
        type=arguments.positive_int,
        help="alarmed drift windows in a row (default: STREAM_MONITOR_PERSIST)",
    )
    p.add_argument(
        "--interval", type=arguments.duration, help="between polls, like 60s (default: STREAM_MONITOR_INTERVAL_S)"
    )
    p.add_argument("--every", type=arguments.duration, help="also retrain on this schedule, like 24h (0: drift only)")
    p.add_argument("--cooldown", type=arguments.duration, help="no retrain sooner after the last (like 6h)")
    p.add_argument("--window-days", type=arguments.positive_int, help="default: STREAM_RETRAIN_WINDOW_DAYS")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), help="models to retrain (default: all)")
    p.add_argument("--no-promote", action="store_true", help="compare only; promote by hand")
    p.add_argument(
        "--compare",
        choices=["shadow", "offline"],
        help="judge challengers on live shadow pairs or offline at once (default: STREAM_MONITOR_COMPARE)",
    )
    p.add_argument(
        "--no-outcomes",
        action="store_true",
        help="do not run the horizon-outcome job at each poll (default: STREAM_MONITOR_OUTCOMES)",
    )
    p.add_argument("--profile", help="batch-training profile of retrain and compare (default: theirs)")
    p.add_argument("--state", help="state file (default: STREAM_DATA_DIR/monitor/state.json)")
    p.set_defaults(func=cmd_monitor)

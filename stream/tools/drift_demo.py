"""``python -m stream demo --drift``: the whole monitoring loop on a world that changes.

Steps (each printed as it runs):

1. start the embedded Kafka broker (or use ``STREAM_KAFKA_BOOTSTRAP``) and embedded ClickHouse;
2. simulate an audience whose world changes on a day of the live window (the simulator's
   ``drift_day``: a feed redesign with longer feeds, weaker position bias and other device effects);
3. start the worker with no model and stream the history through it: the worker builds its user
   and article state and archives every event into ClickHouse, as it does for a user's own stream;
4. train and promote the first models on the archive (``python -m batch_training run``); the
   running worker loads them;
5. start ``python -m stream monitor`` (drift alarms that persist → ``batch_training retrain`` → a
   challenger the worker scores in shadow → ``compare --shadow --promote``);
6. stream the live days at a steady rate, in event time (not shifted), printing drift alarms,
   the challenger and the promotion as they happen;
7. measure: drift onset → detection → challenger → promotion (wall seconds and simulated hours),
   false alarms per simulated day before the onset, and the click model's AUC on the live
   impressions per phase next to the simulator's oracle on the same impressions;
8. write the monitoring report (HTML) and stop everything.

Event times stay those of the simulated calendar, so the history, the archive, the retrain window
and the monitoring windows share one clock: every time in the summary that is "simulated" is event
time; the promotion's event time is that of the newest event produced when it happened.

All data goes to ``<STREAM_DATA_DIR>/demo-drift`` (replaced on every run).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stream.config import Settings
from stream.errors import InfraError
from stream.kafka import clients
from stream.tools.demo import DAY_MS, Clock, _alive, _env, _metrics, _sum, demo_settings

HOUR_MS = 3_600_000
#: live events are produced in slices of this much event time, so that progress is known
SLICE_MS = HOUR_MS


class Progress:
    """What the producer had sent when: (monotonic seconds, newest event time produced)."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.event_ms: list[int] = []
        self.sent = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def mark(self, wall: float, event_ms: int, sent: int) -> None:
        self.walls.append(wall)
        self.event_ms.append(event_ms)
        self.sent = sent

    def event_at(self, wall: float) -> int | None:
        """The newest event time produced at monotonic time ``wall`` (None before the first slice).

        >>> p = Progress(); p.mark(10.0, 1000, 5); p.mark(20.0, 2000, 9)
        >>> p.event_at(15.0), p.event_at(25.0), p.event_at(5.0)
        (1000, 2000, None)
        """
        i = bisect.bisect_right(self.walls, wall)
        return self.event_ms[i - 1] if i else None

    def wall_at(self, event_ms: int) -> float | None:
        """When the first slice reaching ``event_ms`` had been produced (None: not yet).

        >>> p = Progress(); p.mark(10.0, 1000, 5); p.mark(20.0, 2000, 9)
        >>> p.wall_at(1500), p.wall_at(3000)
        (20.0, None)
        """
        i = bisect.bisect_left(self.event_ms, event_ms)
        return self.walls[i] if i < len(self.walls) else None


#: The demo worker's settings. The live days run at ~15-20 min of event time per wall second, so a
#: few hundred ms of partition skew or article-fold hops exceed the 5-minute lag of click rows:
#: without the wait they would miss article events before their watermark (docs/worker.md,
#: "Staleness contract") and differ from the batch-built rows the challengers and the oracle
#: comparison use.
WORKER_SETTINGS: dict[str, Any] = {
    "model_reload_s": 2.0,
    "monitoring_interval_s": 2.0,
    "drift_window": 500,
    "drift_calibration_windows": 8,
    "quality_window": 500,
    "article_wait_ms": 2_000,
}


def produce_live(ds: Any, bootstrap: str, topic: str, rate: float, settings: Settings, progress: Progress) -> None:
    """Produce ``ds`` (time-ordered) at ``rate`` events/s in slices of ``SLICE_MS`` event time."""
    from simulator.sinks import produce_dataset

    try:
        times = ds.table["event_time"].to_numpy()
        start = int(times[0]) // SLICE_MS * SLICE_MS
        edges = np.searchsorted(times, np.arange(start, int(times[-1]) + SLICE_MS + 1, SLICE_MS), side="left")
        began, sent = time.monotonic(), 0
        for lo, hi in itertools.pairwise(edges):
            if hi <= lo:
                continue
            part = dataclasses.replace(ds, table=ds.table.slice(int(lo), int(hi - lo)), malformed=[])
            sent += produce_dataset(part, bootstrap, topic, rate=None, progress=False, settings=settings)
            progress.mark(time.monotonic(), int(times[hi - 1]), sent)
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    except BaseException as exc:  # reported by the caller: the demo fails with it
        progress.error = exc
    finally:
        progress.done.set()


def click_outcomes(events: pd.DataFrame, window_ms: int) -> pd.Series:
    """Per ``article_impression`` event id: 1 if its user clicks the same article in the same session
    within ``window_ms`` (the click model's label), else 0.

    >>> ev = pd.DataFrame({
    ...     "event_id": ["i1", "i2", "c1"], "event_type": ["article_impression"] * 2 + ["article_click"],
    ...     "user_id": ["u"] * 3, "session_id": ["s"] * 3, "article_id": ["a", "b", "a"],
    ...     "event_time": [0, 0, 500]})
    >>> click_outcomes(ev, 1000).to_dict()
    {'i1': 1, 'i2': 0}
    """
    keys = ["user_id", "session_id", "article_id"]
    imp = events.loc[events["event_type"] == "article_impression", ["event_id", *keys, "event_time"]]
    clk = events.loc[events["event_type"] == "article_click", [*keys, "event_time"]]
    m = imp.merge(clk, on=keys, suffixes=("", "_c"))
    hit = set(
        m.loc[(m["event_time_c"] >= m["event_time"]) & (m["event_time_c"] - m["event_time"] <= window_ms), "event_id"]
    )
    return pd.Series([int(e in hit) for e in imp["event_id"]], index=imp["event_id"].to_numpy(), dtype=int)


def auc_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per phase: impressions, click rate, the model's AUC, the oracle's AUC on the same rows and their ratio.

    ``rows`` has columns phase, score, label and p_true (the simulator's click probability).
    """
    from sklearn.metrics import roc_auc_score

    out = []
    for phase, g in rows.groupby("phase", sort=False):
        both = g["label"].nunique() == 2
        auc = float(roc_auc_score(g["label"], g["score"])) if both else float("nan")
        oracle = float(roc_auc_score(g["label"], g["p_true"])) if both else float("nan")
        out.append(
            {
                "phase": phase,
                "impressions": len(g),
                "click_rate": round(float(g["label"].mean()), 4),
                "auc": round(auc, 4),
                "oracle_auc": round(oracle, 4),
                "ratio": round(auc / oracle, 3) if both else float("nan"),
            }
        )
    return pd.DataFrame(out)


def drifted_windows(drift: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, version, window) with at least one feature over its threshold, and which."""
    hit = drift[drift["drifted"] == 1]
    if not len(hit):
        return pd.DataFrame(columns=["model_name", "model_version", "window_start_ms", "window_end_ms", "features"])
    return (
        hit.groupby(["model_name", "model_version", "window_start_ms", "window_end_ms"], as_index=False)
        .agg(features=("feature", lambda f: ",".join(sorted(set(f)))))
        .sort_values("window_end_ms", ignore_index=True)
    )


def false_alarms_per_day(drift: pd.DataFrame, start_ms: int, onset_ms: int) -> tuple[int, int, float]:
    """(alarmed windows, windows, alarmed windows per simulated day) over windows wholly in [start, onset)."""
    quiet = drift[(drift["window_start_ms"] >= start_ms) & (drift["window_end_ms"] < onset_ms)]
    windows = quiet.groupby(["model_name", "model_version", "window_start_ms"]).ngroups
    alarmed = len(drifted_windows(quiet))
    days = max(onset_ms - start_ms, 1) / DAY_MS
    return alarmed, windows, alarmed / days


@dataclasses.dataclass
class Timeline:
    """Wall (monotonic) moments of the loop, as the demo saw them."""

    onset: float | None = None  # the first drifted event produced
    first_alarm: float | None = None  # the first poll with new click drift alarms after the onset (printed only)
    challenger: float | None = None
    promoted: float | None = None
    promoted_version: str | None = None
    events: list[str] = dataclasses.field(default_factory=list)


def _click_alarms(metrics: Mapping[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("stream_drift_alarms_total{") and "model=click" in k)


def _history_since(models_dir: Path, model: str, since_ms: int) -> list[dict[str, Any]]:
    from stream.models.registry import ModelRegistry

    return [r for r in ModelRegistry(models_dir).history(model) if int(r.get("time_ms", 0)) >= since_ms]


#: the demo's default world: few readers with many sessions each, at about the events per day of
#: 1,000 users at the simulator's 0.25 sessions a day, so every reader brings a long history
#: (docs/monitoring.md, "Fewer readers with more sessions each")
USERS, SESSIONS_PER_DAY = 84, 3.0


def run_drift_demo(
    users: int = USERS,
    days: int = 22,
    live_days: int = 9,
    drift_after: int = 3,
    rate: float = 150.0,
    window_days: int = 2,
    persist: int = 10,
    profile: str = "full",
    retrain_profile: str = "full",
    sessions_per_day: float | None = SESSIONS_PER_DAY,
) -> int:
    """Run the loop; 0 if the challenger was promoted and served, 1 if not (the summary says which step).

    ``sessions_per_day``: the median reader's sessions per day (the simulator's
    ``activity_median_per_day``; None: its 0.25). Fewer users with more sessions each keep the
    events per day, and so the demo's run time and the challenger's rows, while every reader brings
    a longer history (docs/monitoring.md). ``profile``: of the first models (``full``: all rows, as
    the offline figures).
    """
    from simulator import SimConfig, generate
    from simulator.sinks import produce_dataset
    from stream.clickhouse import connect
    from stream.kafka.embedded import kafka_or_embedded
    from stream.kafka.topics import ensure_topics
    from stream.state.labels import CLICK_WINDOW_MS
    from stream.tools.process import WorkerProcess

    clock = Clock()
    # a challenger trained on the whole window of the changed world: one of a few hours of it was
    # worse (docs/monitoring.md, "How long after the drift")
    settings = demo_settings(
        "demo-drift",
        "drift-worker",
        **WORKER_SETTINGS,
        retrain_window_days=window_days,
        retrain_min_drift_days=window_days,
    )
    root, port = settings.data_dir, settings.worker_web_port
    worker: WorkerProcess | None = None
    monitor: subprocess.Popen[bytes] | None = None
    timeline = Timeline()
    with kafka_or_embedded(settings.kafka_bootstrap, settings.topic_partitions, settings.max_message_bytes) as (
        bootstrap,
        jvm,
    ):
        if jvm is not None:
            settings = clients.for_embedded(settings)
        clock.say(f"Kafka at {bootstrap}; ClickHouse: embedded ({settings.chdb_path})")
        ensure_topics(bootstrap, settings)
        env = _env(settings, bootstrap)
        topic = settings.topic("session-events")

        # 2. a world that changes on day `days + drift_after`
        cfg = SimConfig(n_users=users, days=days + live_days, seed=42, drift_day=days + drift_after)
        if sessions_per_day is not None:
            cfg = dataclasses.replace(cfg, activity_median_per_day=sessions_per_day)
        ds = generate(cfg)
        times = ds.table["event_time"].to_numpy()
        start_ms = int(times[0]) // DAY_MS * DAY_MS
        cut, onset_ms = start_ms + days * DAY_MS, start_ms + (days + drift_after) * DAY_MS
        history = dataclasses.replace(ds, table=ds.table.filter(times < cut), malformed=[])
        live = dataclasses.replace(ds, table=ds.table.filter(times >= cut), malformed=[])
        clock.say(
            f"simulated {users:,} users ({cfg.activity_median_per_day:g} sessions per day for the median reader) "
            f"over {days + live_days} days: {len(history):,} history events, "
            f"{len(live):,} live; the feed redesign (drift) starts on day {days + drift_after}"
        )
        try:
            # 3. the history through the worker: state built, events archived
            worker = WorkerProcess(bootstrap, env, root / "worker.log").start()
            worker.wait_for_log("gc thresholds", timeout_s=120)
            produce_dataset(history, bootstrap, topic, rate=None, progress=False, settings=settings)
            _wait_archived(settings, port, len(history), clock)

            # 4. first models, from the archive
            _run_training(["run", "--profile", profile], env, root / "training.log")
            worker.wait_for_log("loaded model click", timeout_s=120)
            clock.say("trained and promoted the first models on the archive; the worker loaded them")

            # 5. the monitor
            monitor = _start_monitor(env, root, window_days, persist, retrain_profile)
            clock.say(
                f"monitor running: once {persist} drift windows in a row alarmed, a retrain on the {window_days} "
                "days since the drift began (it waits for them), then the challenger in shadow until compare "
                "--shadow decides"
            )

            # 6. live days
            progress = Progress()
            started_ms = int(time.time() * 1000)
            producer = threading.Thread(
                target=produce_live, args=(live, bootstrap, topic, rate, settings, progress), daemon=True
            )
            t_live = time.monotonic()
            producer.start()
            _watch(progress, timeline, settings, port, onset_ms, started_ms, clock, len(history))
            producer.join()
            if progress.error is not None:
                raise InfraError(f"producing the live days failed: {progress.error}")
            sent = len(history) + progress.sent
            _wait_processed(port, sent, clock)
            clock.say(f"streamed {progress.sent:,} live events in {time.monotonic() - t_live:.0f}s")
        finally:
            if monitor is not None and monitor.poll() is None:
                monitor.send_signal(signal.SIGTERM)
                monitor.wait(60)
            if worker is not None:
                worker.stop()

    # 7. figures
    ch = connect(settings)
    try:
        select = "SELECT event_id, model_version, score FROM {db}.%s FINAL WHERE model_name = 'click' "
        preds = ch.query_df(select % "predictions" + f"AND toUnixTimestamp64Milli(event_time) >= {cut}")
        # a challenger that was not promoted is still judged on what it scored in shadow
        shadow = ch.query_df(select % "predictions_shadow" + f"AND toUnixTimestamp64Milli(event_time) >= {onset_ms}")
        drift = ch.query_df(
            "SELECT model_name, model_version, toUnixTimestamp64Milli(window_start) AS window_start_ms, "
            "toUnixTimestamp64Milli(window_end) AS window_end_ms, feature, drifted FROM {db}.feature_drift FINAL"
        )
    finally:
        ch.close()
    frame = live.table.select(["event_id", "event_type", "user_id", "session_id", "article_id", "event_time"])
    labels = click_outcomes(frame.to_pandas(), CLICK_WINDOW_MS)
    truth = ds.truth_tables["article_impressions"].to_pandas().set_index("event_id")["p_click"]
    table = _phases(preds, labels, truth, times_of(live), onset_ms, timeline.promoted_version, shadow)
    return _summary(timeline, progress, table, drift, cut, onset_ms, root, settings, clock, jvm, worker)


def times_of(ds: Any) -> pd.Series:
    return pd.Series(ds.table["event_time"].to_numpy(), index=ds.table["event_id"].to_numpy(zero_copy_only=False))


def _phases(
    preds: pd.DataFrame,
    labels: pd.Series,
    truth: pd.Series,
    event_ms: pd.Series,
    onset_ms: int,
    promoted: str | None,
    shadow: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The AUC table per phase: before the drift, after it with the first model and with the promoted
    challenger; with no promotion, the challenger's shadow scores after the drift instead."""

    def labelled(p: pd.DataFrame) -> pd.DataFrame:
        rows = p[p["event_id"].isin(labels.index)].copy()
        rows["label"] = labels.reindex(rows["event_id"]).to_numpy()
        rows["p_true"] = truth.reindex(rows["event_id"]).to_numpy()
        rows["t"] = event_ms.reindex(rows["event_id"]).to_numpy()
        return rows

    rows = labelled(preds)
    drifted = (rows["t"] >= onset_ms).to_numpy(dtype=bool)
    # versions may come back as a nullable string column, whose == None is NA, not False
    served = rows["model_version"].astype(object).to_numpy()
    is_promoted = np.array([promoted is not None and str(v) == promoted for v in served], dtype=bool)
    rows["phase"] = np.where(
        ~drifted,
        "before drift",
        np.where(is_promoted, "after drift, challenger promoted", "after drift, first model"),
    )
    parts = [rows]
    if promoted is None and shadow is not None and len(shadow):
        shadowed = labelled(shadow)
        parts.append(shadowed[shadowed["t"] >= onset_ms].assign(phase="after drift, challenger in shadow"))
    order = {
        "before drift": 0,
        "after drift, first model": 1,
        "after drift, challenger promoted": 2,
        "after drift, challenger in shadow": 3,
    }
    rows = pd.concat(parts, ignore_index=True).sort_values("phase", key=lambda s: s.map(order), kind="stable")
    return auc_table(rows)


def _run_training(argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "batch_training", *argv, "--no-progress"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise InfraError(f"`batch_training {' '.join(argv)}` failed; see {log}")


def _start_monitor(
    env: Mapping[str, str], root: Path, window_days: int, persist: int, profile: str
) -> subprocess.Popen[bytes]:
    import os

    argv = [
        sys.executable,
        "-m",
        "stream",
        "monitor",
        "--interval",
        "5s",
        "--persist",
        str(persist),
        "--window-days",
        str(window_days),
        "--models",
        "click",
        "--cooldown",
        "10m",
        "--profile",
        profile,
        "--state",
        str(root / "monitor" / "state.json"),
    ]
    log = open(root / "monitor.log", "ab")  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def _wait_archived(settings: Settings, port: int, n: int, clock: Clock, timeout_s: float = 900.0) -> None:
    """Until the worker has processed ``n`` events and every one is in the ``events`` table."""
    from stream.clickhouse import connect

    deadline = time.monotonic() + timeout_s
    t0 = time.monotonic()
    while _sum(_metrics(port), "stream_events_total") < n:
        if time.monotonic() > deadline:
            raise InfraError(f"the worker did not process the {n:,} history events within {timeout_s:.0f}s")
        time.sleep(1)
    clock.say(f"the worker processed the {n:,} history events in {time.monotonic() - t0:.0f}s")
    ch = connect(settings)
    try:
        while int(ch.query_df("SELECT uniqExact(event_id) AS n FROM {db}.events")["n"].iloc[0]) < n:
            if time.monotonic() > deadline:
                raise InfraError(f"the archive did not reach {n:,} events within {timeout_s:.0f}s")
            time.sleep(1)
    finally:
        ch.close()
    clock.say("every history event is archived in ClickHouse (table events)")


def _wait_processed(port: int, n: int, clock: Clock, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _sum(_metrics(port), "stream_events_total") < n:
        if time.monotonic() > deadline:
            clock.say(f"the worker did not process all {n:,} events within {timeout_s:.0f}s")
            return
        time.sleep(1)


def _watch(
    progress: Progress,
    tl: Timeline,
    settings: Settings,
    port: int,
    onset_ms: int,
    started_ms: int,
    clock: Clock,
    n_history: int,
) -> None:
    """Poll the worker and the registry while the live days stream; print the loop's steps."""
    last_alarms = _click_alarms(_metrics(port))
    seen = 0
    while not progress.done.is_set():
        progress.done.wait(1.0)
        now = time.monotonic()
        ev = progress.event_at(now)
        day = "?" if ev is None else f"{ev / DAY_MS - (onset_ms / DAY_MS):+.2f}"
        if tl.onset is None and ev is not None and ev >= onset_ms:
            tl.onset = progress.wall_at(onset_ms)
            clock.say(f"drift onset: the first redesigned-feed events are on the topic (day {day} from onset)")
        try:
            alarms = _click_alarms(_metrics(port))
        except OSError:
            continue
        if alarms > last_alarms:
            phase = "" if tl.onset is not None else " (before the onset: a false alarm)"
            clock.say(f"click drift alarms +{alarms - last_alarms:g} (day {day} from onset){phase}")
            if tl.onset is not None and tl.first_alarm is None:
                tl.first_alarm = now
            last_alarms = alarms
        history = _history_since(settings.models_dir, "click", started_ms)
        for rec in history[seen:]:
            text = f"registry: click {rec['action']} {rec.get('to_version') or ''} {rec.get('reason', '')[:90]}"
            clock.say(f"{text} (day {day} from onset)")
            tl.events.append(text)
            if rec["action"] == "challenger" and tl.challenger is None:
                tl.challenger = now
            if rec["action"] == "promote" and tl.promoted is None:
                tl.promoted, tl.promoted_version = now, str(rec.get("to_version"))
        seen = len(history)


def _summary(
    tl: Timeline,
    progress: Progress,
    table: pd.DataFrame,
    drift: pd.DataFrame,
    cut: int,
    onset_ms: int,
    root: Path,
    settings: Settings,
    clock: Clock,
    jvm: int | None,
    worker: Any,
) -> int:
    from stream.clickhouse import connect, local_server
    from stream.tools.report import Marker, write_report

    def sim_h(wall: float | None) -> str:
        ev = None if wall is None else progress.event_at(wall)
        return "–" if ev is None else f"{(ev - onset_ms) / HOUR_MS:+.1f} h"

    def wall_s(wall: float | None) -> str:
        return "–" if wall is None or tl.onset is None else f"{wall - tl.onset:+.0f} s"

    click = drift[drift["model_name"] == "click"]
    windows = drifted_windows(click)
    after = windows[windows["window_start_ms"] >= onset_ms]
    detected_ms = int(after["window_end_ms"].iloc[0]) if len(after) else None
    alarmed, n_windows, per_day = false_alarms_per_day(drift, cut, onset_ms)
    print("\n================ drift loop ================")
    print("step                          wall (from onset)   simulated (event time from onset)")
    print(f"drift onset                   {wall_s(tl.onset):>17}   +0.0 h")
    det = "–" if detected_ms is None else f"{(detected_ms - onset_ms) / HOUR_MS:+.1f} h"
    # the window's last row was produced then: the worker alarmed a little later (its lag)
    detected_wall = None if detected_ms is None else progress.wall_at(detected_ms)
    print(f"first drifted click window    {wall_s(detected_wall):>17}   {det} (its last row)")
    print(f"challenger registered         {wall_s(tl.challenger):>17}   {sim_h(tl.challenger)}")
    print(f"challenger promoted           {wall_s(tl.promoted):>17}   {sim_h(tl.promoted)}")
    if len(after):
        print(f"features that drifted first   {after['features'].iloc[0]}")
    print(
        f"\nfalse alarms before the onset : {alarmed} of {n_windows} drift windows (all models) over "
        f"{(onset_ms - cut) / DAY_MS:.0f} simulated days = {per_day:.2f} per simulated day"
    )
    print("\nclick model on the live impressions (labels: a click within the click window; oracle: the")
    print("simulator's true click probability of the same impressions):")
    print(table.to_string(index=False))
    print("\nregistry steps:")
    for e in tl.events:
        print("  " + e)
    markers = [Marker(onset_ms, "click", "drift onset")]
    ev = None if tl.promoted is None else progress.event_at(tl.promoted)
    if ev is not None:
        markers.append(Marker(ev, "click", f"v{tl.promoted_version} promoted"))
    ch = connect(settings)
    try:
        report = write_report(ch, settings.reports_dir / "monitoring-report.html", markers)
    finally:
        ch.close()
    (root / "drift-summary.json").write_text(
        json.dumps(
            {
                "onset_ms": onset_ms,
                "detected_ms": detected_ms,
                "wall_s": {
                    k: (None if w is None or tl.onset is None else round(w - tl.onset, 1))
                    for k, w in (
                        ("detected", detected_wall),
                        ("challenger", tl.challenger),
                        ("promoted", tl.promoted),
                    )
                },
                "promoted_event_ms": ev,
                "promoted_version": tl.promoted_version,
                "false_alarms": {"alarmed": alarmed, "windows": n_windows, "per_day": per_day},
                "auc": table.to_dict(orient="records"),
            },
            indent=2,
        )
    )
    print(f"\nmonitoring report : {report}")
    print(f"summary (JSON)    : {root / 'drift-summary.json'}")
    print(f"logs              : {root}/worker.log, monitor.log, training.log")
    servers = local_server.stop(settings.chdb_path) if not settings.clickhouse_url else []
    left = [
        p for p in ([worker.proc.pid] if worker and worker.proc else []) + ([jvm] if jvm else []) + servers if _alive(p)
    ]
    if left:
        raise InfraError(f"processes still running after the demo: {left}")
    ok = tl.promoted is not None
    clock.say("done: drift detected, challenger trained, shadowed and promoted" if ok else "done: NOT promoted")
    return 0 if ok else 1

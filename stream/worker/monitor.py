"""Model monitoring in the worker: online quality from joined outcomes, feature and loss drift.

:class:`Monitor` is fed once per processed batch (:meth:`Monitor.observe`, on the hot path: a
dict lookup per event, the batch's feature matrices counted into drift bins with numpy) and
published on a timer (:meth:`Monitor.publish`: metric computations, gauges, ClickHouse rows).
The library pieces are stream/monitoring/; the join of predictions with outcomes is
stream/worker/outcomes.py. See docs/monitoring.md.

* **quality**: per model version, a :class:`~stream.monitoring.RollingQuality` over its last
  ``quality_window`` joined pairs (click: AUC, log loss, ECE; engagement: R², MAE);
* **loss drift**: per model version, ADWIN on each joined pair's loss
  (:class:`~stream.monitoring.LossDrift`): a rise counts one detection;
* **feature drift**: per model version with a reference profile (stored by batch training), its
  scored rows and predictions counted into a :class:`~stream.monitoring.DriftWindow` of
  ``drift_window`` rows; each completed window sets the PSI/KS gauges, counts its alarms and, if
  any column drifted, logs one WARNING (at most one per model version per ``warn_every_s``, with
  the count of drifted windows not logged).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from stream.clickhouse.sink import ClickHouseSink
from stream.config import Settings
from stream.models import MODELS
from stream.models.registry import ModelRegistry
from stream.models.scoring import Scored
from stream.monitoring import (
    ColumnDrift,
    DriftReport,
    DriftWindow,
    LossDrift,
    ReferenceProfile,
    RollingQuality,
    load_profile,
    quality_rows,
)
from stream.monitoring import drift_rows as _drift_rows
from stream.monitoring.outputs import QUALITY_METRICS
from stream.state import DEFAULT_CONFIG
from stream.state.features import CLOCK_FEATURES
from stream.state.labels import CLICK_WINDOW_MS
from stream.worker.outcomes import OutcomeJoiner
from stream.worker.processor import Outputs

log = logging.getLogger(__name__)

Key = tuple[str, str]
#: scored rows of a model version binned at once for drift (see Monitor._drift_rows)
DRIFT_CHUNK = 1000


class MonitorMetrics:
    """The monitoring series, on the worker's registry (names as in stream/worker/metrics.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.quality = Gauge(
            "stream_model_quality",
            "Online quality of a model version over its last STREAM_QUALITY_WINDOW joined outcomes, by metric "
            "(click: auc, log_loss, ece; engagement: r2, mae); absent while undefined",
            ["model", "version", "metric"],
            registry=r,
        )
        self.quality_pairs = Gauge(
            "stream_model_quality_window_pairs",
            "Joined pairs in the window stream_model_quality was computed over",
            ["model", "version"],
            registry=r,
        )
        self.joined = Counter(
            "stream_outcomes_joined_total",
            "Predictions joined with their outcome (click, engagement), by model version",
            ["model", "version"],
            registry=r,
        )
        self.dropped = Counter(
            "stream_outcomes_dropped_total",
            "Predictions given up without an outcome: revoked (partition moved), full (too many pending), "
            "no_session_end",
            ["reason"],
            registry=r,
        )
        self.pending = Gauge(
            "stream_outcomes_pending_predictions", "Predictions waiting in memory for their outcome", registry=r
        )
        self.errors = Counter(
            "stream_monitoring_errors_total",
            "Batches or timer ticks the monitor skipped because it raised (the batch itself is processed as usual)",
            ["error"],
            registry=r,
        )
        self.loss_drift = Counter(
            "stream_loss_drift_detections_total",
            "Rises of the per-prediction loss of joined outcomes detected by ADWIN, by model version",
            ["model", "version"],
            registry=r,
        )
        self.psi = Gauge(
            "stream_drift_psi",
            "PSI of a feature (or 'prediction') against the model version's training profile, last drift window",
            ["model", "version", "feature"],
            registry=r,
        )
        self.ks = Gauge(
            "stream_drift_ks",
            "KS distance of a numeric feature (or 'prediction') to the training profile, last drift window",
            ["model", "version", "feature"],
            registry=r,
        )
        self.drift_windows = Counter(
            "stream_drift_windows_total",
            "Drift windows of STREAM_DRIFT_WINDOW scored rows completed, by model version",
            ["model", "version"],
            registry=r,
        )
        self.drift_alarms = Counter(
            "stream_drift_alarms_total",
            "Drift windows in which a feature (or 'prediction') was over its PSI or KS threshold",
            ["model", "version", "feature"],
            registry=r,
        )
        self.drifted_windows = Counter(
            "stream_drift_alarmed_windows_total",
            "Drift windows in which any feature (or 'prediction') was over its threshold, by model version: "
            "with stream_drift_windows_total, whether drift persists over consecutive windows",
            ["model", "version"],
            registry=r,
        )


class Monitor:
    """Quality, loss drift and feature drift of the worker's model versions (see the module docstring).

    ``profiles(model, version)`` returns a version's reference profile (None: no drift for it); it is
    asked once per version, the first time a batch scored with it.
    """

    def __init__(
        self,
        metrics: MonitorMetrics,
        joiner: OutcomeJoiner,
        profiles: Callable[[str, str], ReferenceProfile | None],
        *,
        quality_window: int = 1000,
        drift_window: int = 1000,
        drift_calibration: int = 0,
        warn_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.joiner = joiner
        self._profiles = profiles
        self.quality_window = quality_window
        self.drift_window = drift_window
        self.drift_calibration = drift_calibration
        self.warn_every_s = warn_every_s
        self._clock = clock
        self.quality: dict[Key, RollingQuality] = {}
        self.loss: dict[Key, LossDrift] = {}
        self.drift: dict[Key, DriftWindow | None] = {}
        #: per model version: scored rows not yet counted into its drift window (under DRIFT_CHUNK)
        self._buffered: dict[Key, list[Scored]] = {}
        #: completed drift windows not yet published to ClickHouse
        self._reports: list[DriftReport] = []
        #: per model version: pairs seen at its last published quality row
        self._published: dict[Key, int] = {}
        #: per model version: when its last drift WARNING was logged, and the drifted windows since
        self._warned: dict[Key, tuple[float, int]] = {}
        self._dropped = dict(joiner.dropped)

    # --- hot path ---------------------------------------------------------------------------

    def observe(self, partition: int, out: Outputs) -> None:
        """One processed batch of ``partition``: its scored rows (drift) and its predictions and events (join).

        Monitoring never stops the worker: should it raise, the batch is not monitored (counted,
        logged) and goes on to be published as usual.
        """
        try:
            self._observe(partition, out)
        except Exception as exc:
            self.metrics.errors.labels(error=type(exc).__name__).inc()
            log.warning("monitoring skipped a batch of partition %d: %s: %s", partition, type(exc).__name__, exc)

    def _observe(self, partition: int, out: Outputs) -> None:
        for s in out.scored:
            self._drift_rows(s)
        joined = self.joiner.join(partition, out.predictions, out.events)
        if not joined:
            return
        counts: dict[Key, int] = {}
        quality, loss = self.quality, self.loss
        for j in joined:
            key = (j.model, j.version)
            q = quality.get(key)
            if q is None:
                task = MODELS[j.model].task
                q = quality[key] = RollingQuality(j.model, j.version, task, self.quality_window)
                loss[key] = LossDrift(task)
            q.update(j.outcome, j.score, j.t_ms)
            if loss[key].update(j.outcome, j.score):
                self.metrics.loss_drift.labels(model=j.model, version=j.version).inc()
                log.warning(
                    "loss drift: the loss of model %s version %s on joined outcomes rose (ADWIN); mean loss now %.4f",
                    j.model,
                    j.version,
                    loss[key].mean_loss,
                )
            counts[key] = counts.get(key, 0) + 1
        for (model, version), n in counts.items():
            self.metrics.joined.labels(model=model, version=version).inc(n)

    def _drift_rows(self, s: Scored) -> None:
        """Count a batch's rows into the version's drift window, :data:`DRIFT_CHUNK` rows at a time.

        Binning costs a few numpy calls per column whatever the rows (tens of µs each), so rows
        wait in a short buffer: binned per batch, a 114-column click row cost 60 µs, about 11 in chunks.
        """
        key = (s.model, s.version)
        if key in self.drift:
            window = self.drift[key]
        else:
            window = self.drift[key] = self._new_window(s)
        if window is None:
            return
        buffer = self._buffered.setdefault(key, [])
        buffer.append(s)
        if sum(len(b.x) for b in buffer) >= DRIFT_CHUNK:
            self._bin(key)

    def _bin(self, key: Key) -> None:
        buffer = self._buffered.pop(key, [])
        window = self.drift.get(key)
        if not buffer or window is None:
            return
        x = np.concatenate([b.x for b in buffer])
        scores = np.concatenate([b.scores for b in buffer])
        t = np.concatenate([b.event_time_ms for b in buffer])
        for report in window.update(x, scores, t):
            self._report(report)

    def _new_window(self, s: Scored) -> DriftWindow | None:
        try:
            profile = self._profiles(s.model, s.version)
        except Exception as exc:  # a broken profile must not stop scoring: no drift for this version
            log.warning(
                "no drift monitoring for model %s version %s: its profile cannot be read (%s)", s.model, s.version, exc
            )
            return None
        if profile is None:
            log.info("model %s version %s has no reference profile: no feature drift for it", s.model, s.version)
            return None
        if len(profile.features) != s.x.shape[1]:
            log.warning(
                "no drift monitoring for model %s version %s: its profile has %d features, its rows %d",
                s.model,
                s.version,
                len(profile.features),
                s.x.shape[1],
            )
            return None
        return DriftWindow(
            s.model, s.version, profile, self.drift_window, skip=CLOCK_FEATURES, calibrate=self.drift_calibration
        )

    def _report(self, r: DriftReport) -> None:
        m = self.metrics
        m.drift_windows.labels(model=r.model, version=r.version).inc()
        for name, c in r.columns.items():
            m.psi.labels(model=r.model, version=r.version, feature=name).set(c.psi)
            if not math.isnan(c.ks):
                m.ks.labels(model=r.model, version=r.version, feature=name).set(c.ks)
        drifted = r.drifted
        for name in drifted:
            m.drift_alarms.labels(model=r.model, version=r.version, feature=name).inc()
        if drifted:
            m.drifted_windows.labels(model=r.model, version=r.version).inc()
        self._reports.append(r)
        if drifted:
            self._warn(r, drifted)

    def _warn(self, r: DriftReport, drifted: list[str]) -> None:
        """One WARNING per drifted window, at most one per model version per ``warn_every_s``."""
        key = (r.model, r.version)
        now = self._clock()
        last, held = self._warned.get(key, (-math.inf, 0))
        if now - last < self.warn_every_s:
            self._warned[key] = (last, held + 1)
            return
        self._warned[key] = (now, 0)
        # a logger per model: the worker's repeat filter (stream/worker/logs.py) keys on the logger
        # and the template, so one model's alarms do not hold back another's
        logging.getLogger(f"{__name__}.{r.model}").warning(
            "feature drift: model %s version %s, %d rows of event time %d..%d: %s%s",
            r.model,
            r.version,
            r.n,
            r.window_start_ms,
            r.window_end_ms,
            _describe_all(r, drifted),
            f" ({held} more drifted window{'s' if held > 1 else ''} not logged)" if held else "",
        )

    # --- timers -----------------------------------------------------------------------------

    def publish(self, now_ms: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Set the quality gauges; returns the ``model_quality`` rows of versions with new pairs since
        the last call and the ``feature_drift`` rows of windows completed since (for the sink)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        for key in list(self._buffered):  # rows waiting for a full chunk are counted now
            self._bin(key)
        m = self.metrics
        fresh = []
        for key, q in self.quality.items():
            if q.seen == self._published.get(key):
                continue
            self._published[key] = q.seen
            snap = q.snapshot()
            fresh.append(snap)
            for metric in QUALITY_METRICS:
                value = snap.metrics.get(metric, math.nan)
                if math.isnan(value):
                    m.quality.remove(*key, metric)  # undefined now (one class in the window): no series
                else:
                    m.quality.labels(*key, metric).set(value)
            m.quality_pairs.labels(*key).set(snap.n)  # last: a reader waiting on it sees this snapshot's metrics
        m.pending.set(self.joiner.pending)
        for reason, n in self.joiner.dropped.items():
            if n > self._dropped.get(reason, 0):
                m.dropped.labels(reason=reason).inc(n - self._dropped.get(reason, 0))
        self._dropped = dict(self.joiner.dropped)
        reports, self._reports = self._reports, []
        return quality_rows(fresh, now_ms), _drift_rows(reports, now_ms)

    def forget(self, partitions: Iterable[int]) -> int:
        """Drop the pending predictions of revoked input partitions (monitoring samples only)."""
        return self.joiner.forget(partitions)


#: drifted columns named in one WARNING (the most drifted first); the others are counted
LOGGED_COLUMNS = 5


def _describe_all(r: DriftReport, drifted: list[str]) -> str:
    """The most drifted columns (PSI relative to its threshold), and how many more there are."""
    worst = sorted(drifted, key=lambda n: r.columns[n].psi / r.columns[n].psi_threshold, reverse=True)
    more = len(worst) - LOGGED_COLUMNS
    return ", ".join(_describe(n, r.columns[n]) for n in worst[:LOGGED_COLUMNS]) + (
        f" and {more} more column{'s' if more > 1 else ''}" if more > 0 else ""
    )


def _describe(name: str, c: ColumnDrift) -> str:
    """One drifted column in a log line: each statistic with its threshold."""
    ks = "" if math.isnan(c.ks) else f", KS {c.ks:.3f} (limit {c.ks_threshold:.3f})"
    return f"{name} (PSI {c.psi:.3f} (limit {c.psi_threshold:.3f}){ks})"


def build_monitor(settings: Settings, models: ModelRegistry, registry: CollectorRegistry) -> Monitor:
    """The worker's monitor from its settings (``STREAM_QUALITY_WINDOW``, ``STREAM_DRIFT_WINDOW``, lateness)."""
    joiner = OutcomeJoiner(
        click_window_ms=CLICK_WINDOW_MS,
        lateness_ms=settings.allowed_lateness_ms,
        session_timeout_ms=DEFAULT_CONFIG.session_timeout_ms,
    )
    return Monitor(
        MonitorMetrics(registry),
        joiner,
        lambda name, version: load_profile(models.get(name, version)),
        quality_window=settings.quality_window,
        drift_window=settings.drift_window,
        drift_calibration=settings.drift_calibration_windows,
    )


def register(
    app: Any,
    monitor: Monitor,
    sink: ClickHouseSink | None,
    interval_s: float,
    events_topic: str,
    timed: Any = None,
) -> None:
    """The monitor's timer (gauges and ClickHouse rows every ``interval_s``) and its revoke handler.

    ``timed``: a histogram (``stream_loop_step_seconds{step="timers"}``) observing each publication's time.
    """

    @app.task
    async def import_drift_thresholds() -> None:
        # scipy.stats (PSI thresholds) takes seconds to import: in a thread, not at start-up nor on
        # the event loop at the first drift window
        await asyncio.to_thread(importlib.import_module, "scipy.stats")

    @app.timer(interval=interval_s)
    async def publish_monitoring() -> None:
        try:
            began = time.perf_counter()
            quality, drift = monitor.publish()
            if timed is not None:
                timed.observe(time.perf_counter() - began)
        except Exception as exc:  # monitoring never stops the worker
            monitor.metrics.errors.labels(error=type(exc).__name__).inc()
            log.warning("monitoring skipped a publication: %s: %s", type(exc).__name__, exc)
            return
        # monitoring rows are not any batch's output: nothing waits for their futures
        if sink is not None and quality:
            await sink.put("model_quality", quality)
        if sink is not None and drift:
            await sink.put("feature_drift", drift)

    @app.on_partitions_revoked.connect
    async def forget_pending_outcomes(app: Any, revoked: Any, **kwargs: Any) -> None:
        monitor.forget({tp.partition for tp in revoked if tp.topic == events_topic})

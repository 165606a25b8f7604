"""``python -m stream outcomes``: churn and conversion quality once their horizon has passed.

Runs :func:`stream.monitoring.horizon.horizon_quality` over the configured ClickHouse: the worker's
churn (and conversion) predictions joined in SQL with the archived events, one ``model_quality``
row per model version and window of prediction time. ``--once`` runs it once (cron, a timer, or
each poll of ``stream monitor``); without it, every ``--interval``. With a metrics port, the latest
window of each version is served as ``stream_model_quality{model,version,metric}`` (the worker's
gauge names) and ``stream_model_quality_window_pairs``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from stream import arguments
from stream.config import Settings
from stream.monitoring.horizon import HORIZON_OUTCOMES, HorizonResult, horizon_quality
from stream.monitoring.outputs import QUALITY_METRICS

log = logging.getLogger("stream.outcomes")


class QualityGauges:
    """The job's gauges, on a registry of their own (names as the worker's)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        self.quality = Gauge(
            "stream_model_quality",
            "Quality of a model version over its latest window of predictions past their horizon (churn, "
            "conversion: auc, log_loss, ece); absent while undefined",
            ["model", "version", "metric"],
            registry=self.registry,
        )
        self.pairs = Gauge(
            "stream_model_quality_window_pairs",
            "Predictions past their horizon in the window stream_model_quality was computed over",
            ["model", "version"],
            registry=self.registry,
        )
        self._set: set[tuple[str, str, str]] = set()

    def set(self, result: HorizonResult) -> None:
        for s in result.latest:
            for metric in QUALITY_METRICS:
                key = (s.model, s.version, metric)
                if metric in s.metrics:
                    self.quality.labels(*key).set(s.metrics[metric])
                    self._set.add(key)
                elif key in self._set:  # undefined in the latest window (one class): no series
                    self.quality.remove(*key)
                    self._set.discard(key)
            self.pairs.labels(s.model, s.version).set(s.n)


def run_once(
    settings: Settings, models: Sequence[str] | None = None, *, now: Callable[[], float] = time.time
) -> HorizonResult:
    """One run over the configured ClickHouse (a connection of its own, closed at the end)."""
    from stream.clickhouse import connect

    specs = [HORIZON_OUTCOMES[m] for m in (models or HORIZON_OUTCOMES)]
    ch = connect(settings)
    try:
        return horizon_quality(
            ch,
            specs,
            window_ms=round(settings.outcomes_window_s * 1000),
            delay_ms=round(settings.outcomes_delay_s * 1000),
            computed_at_ms=int(now() * 1000),
        )
    finally:
        ch.close()


def _stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_outcomes(args: Any) -> int:
    from stream.config import load_settings

    overrides: dict[str, Any] = {}
    if args.window is not None:
        overrides["outcomes_window_s"] = args.window
    if args.delay is not None:
        overrides["outcomes_delay_s"] = args.delay
    settings = load_settings(**overrides)
    gauges = None
    port = settings.outcomes_metrics_port if args.metrics_port is None else args.metrics_port
    if port and not args.once:
        from prometheus_client import start_http_server

        gauges = QualityGauges()
        start_http_server(port, registry=gauges.registry)
        log.info("quality gauges on http://0.0.0.0:%d/metrics", port)
    if args.once:
        print(run_once(settings, args.models).summary())
        return 0
    signal.signal(signal.SIGTERM, _stop_on_signal)
    interval = args.interval or settings.outcomes_interval_s
    stop = threading.Event()
    log.info("horizon outcomes every %gs", interval)
    try:
        while not stop.is_set():
            started = time.time()
            try:
                result = run_once(settings, args.models)
            except Exception as exc:  # ClickHouse down or restarting: try at the next run
                log.warning("horizon outcomes failed (%s: %s); next run in %gs", type(exc).__name__, exc, interval)
            else:
                log.info("%s", result.summary())
                if gauges is not None:
                    gauges.set(result)
            stop.wait(max(0.0, interval - (time.time() - started)))
    except KeyboardInterrupt:
        log.info("outcomes stopped")
    return 0


def register(sub: Any) -> None:
    """Add ``outcomes`` to the CLI (called by :func:`stream.cli.build_parser`)."""
    p = sub.add_parser(
        "outcomes", help="churn and conversion quality per model version once their horizon has passed (ClickHouse)"
    )
    p.add_argument("--once", action="store_true", help="one run, then exit (for cron or a systemd timer)")
    p.add_argument(
        "--interval", type=arguments.duration, help="between runs, like 1h (default: STREAM_OUTCOMES_INTERVAL_S)"
    )
    p.add_argument(
        "--window",
        type=arguments.duration,
        help="window of prediction time, like 1d (default: STREAM_OUTCOMES_WINDOW_S)",
    )
    p.add_argument("--delay", type=arguments.duration, help="default: STREAM_OUTCOMES_DELAY_S")
    p.add_argument("--models", nargs="+", choices=sorted(HORIZON_OUTCOMES), help="default: all")
    p.add_argument(
        "--metrics-port", type=arguments.port, help="serve the gauges here (default: STREAM_OUTCOMES_METRICS_PORT)"
    )
    p.set_defaults(func=cmd_outcomes)

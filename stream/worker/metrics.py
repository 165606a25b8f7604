"""Prometheus metrics of the worker (``_total`` counters, ``_seconds`` histograms).

Each worker gets its own :class:`WorkerMetrics` on its own registry, so tests can start several
workers in one process and read exact values. The registry also carries prometheus_client's
``process_*`` (memory, CPU, open files), ``python_gc_*`` and ``python_info`` metrics.
"""

from __future__ import annotations

import asyncio
import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from stream.errors import ConfigError
from stream.worker.health import Health, web_app

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: the stages of ``stream_stage_seconds``, in the order an event passes them (docs/worker.md, "Latency")
STAGES = ("fetch", "queue", "process", "inflight", "ack", "settle")
_LOOP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
#: the stretches of the stream's event loop that ``stream_loop_step_seconds`` times (docs/worker.md, "Latency")
LOOP_STEPS = ("process", "clicks", "recommend", "monitor", "publish", "articles", "timers")
#: how often the loop-lag probe asks the event loop to run it (s)
LOOP_PROBE_S = 0.005


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts``, with one increment per bucket touched.

    ``observe`` takes a lock per value; a batch's latencies (one per prediction) are counted in
    one pass here. It uses prometheus_client's own fields (``_upper_bounds``, ``_buckets``,
    ``_sum``); a unit test compares every sample with what ``observe`` gives.
    """
    if not amounts:
        return
    bounds = histogram._upper_bounds  # noqa: SLF001 - checked by tests/unit/test_private_apis.py
    counts = [0] * len(bounds)
    for a in amounts:
        counts[bisect_left(bounds, a)] += 1  # the first bucket with a <= bound, as observe() picks
    histogram._sum.inc(sum(amounts))  # noqa: SLF001 - as above
    for bucket, n in zip(histogram._buckets, counts, strict=True):  # noqa: SLF001 - as above
        if n:
            bucket.inc(n)


def observe_n(histogram: Histogram, amount: float, n: int) -> None:
    """``histogram.observe(amount)`` ``n`` times, in one increment (one value per event of a batch)."""
    if n <= 0:
        return
    bounds = histogram._upper_bounds  # noqa: SLF001 - checked by tests/unit/test_private_apis.py
    histogram._sum.inc(amount * n)  # noqa: SLF001 - as above
    histogram._buckets[bisect_left(bounds, amount)].inc(n)  # noqa: SLF001 - as above


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No line per request (probes come every few seconds)."""


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, health: Health | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        #: what /healthz and /readyz answer (served with /metrics)
        self.health = health or Health()
        r = self.registry
        # The process-wide collectors read the process, not this object: registering the same
        # ones on each worker's registry is safe.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.events = Counter("stream_events_total", "Events consumed, by type", ["event_type"], registry=r)
        self.invalid = Counter(
            "stream_invalid_events_total", "Records sent to the dead-letter topic, by reason", ["reason"], registry=r
        )
        self.processing_errors = Counter(
            "stream_processing_errors_total",
            "Records dead-lettered as processing_error (something raised while processing them), by exception type",
            ["error"],
            registry=r,
        )
        self.refetched = Counter(
            "stream_refetched_records_total",
            "Input records faust's consumer fetched but never delivered, read again from the broker",
            registry=r,
        )
        self.article_incomplete = Counter(
            "stream_click_rows_article_incomplete_total",
            "Click rows scored after STREAM_ARTICLE_WAIT_MS without every input partition's article events "
            "folded up to their watermark (their scores may differ in a replay)",
            registry=r,
        )
        self.isolated_batches = Counter(
            "stream_isolated_batches_total", "Batches that raised and were processed again record by record", registry=r
        )
        self.duplicates = Counter("stream_duplicate_events_total", "Events ignored as duplicates", registry=r)
        self.redelivered = Counter(
            "stream_redelivered_events_total",
            "Records delivered again to the process that already handled them (skipped)",
            registry=r,
        )
        self.predictions = Counter("stream_predictions_total", "Predictions published, by model", ["model"], registry=r)
        self.unscored = Counter(
            "stream_unscored_events_total", "Scorable events with no loaded model", ["model"], registry=r
        )
        self.decisions = Counter(
            "stream_bandit_decisions_total", "Bandit decisions, by context and arm", ["context", "arm"], registry=r
        )
        self.event_to_publish = Histogram(
            "stream_event_to_publish_seconds",
            "Event time to prediction acknowledged by Kafka",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ingest_to_publish = Histogram(
            "stream_ingest_to_publish_seconds",
            "Source record's Kafka timestamp to prediction acknowledged by Kafka",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        stage = Histogram(
            "stream_stage_seconds",
            "Seconds an input event spends in each stage, one value per event: fetch (its Kafka timestamp to "
            "fetched by the consumer), queue (fetched to its batch's start), process (batch start to its outputs "
            "queued on the producer), inflight (the part of process spent waiting for a slot among the batches in "
            "flight), ack (queued to acknowledged by Kafka), settle (queued to the batch acked: "
            "Kafka, ClickHouse and the partition's earlier batches)",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        #: ``stream_stage_seconds`` per stage (:data:`STAGES`)
        self.stage = {name: stage.labels(stage=name) for name in STAGES}
        self.batch_size = Histogram(
            "stream_score_batch_size_rows", "Rows per scoring batch", buckets=_BATCH_BUCKETS, registry=r
        )
        closed = Counter(
            "stream_score_batches_total",
            "Batches of input events, by what closed them: size (STREAM_SCORE_BATCH_SIZE events), window "
            "(STREAM_SCORE_BATCH_MS after the first), idle (STREAM_SCORE_BATCH_IDLE_MS without an event, "
            "nothing more to read), urgent (an ad_request, nothing more to read: STREAM_SCORE_BATCH_URGENT_ADS), "
            "backlog (kept open past the window while a backlog waited: STREAM_SCORE_BATCH_BACKLOG_MS, or "
            "nothing more to read)",
            ["closed_by"],
            registry=r,
        )
        #: ``stream_score_batches_total`` per reason (agents/batching.py ``run_batches``)
        self.batches_closed = {
            reason: closed.labels(closed_by=reason) for reason in ("size", "window", "idle", "urgent", "backlog")
        }
        self.loop_lag = Histogram(
            "stream_event_loop_lag_seconds",
            f"How late the event loop ran a probe due every {LOOP_PROBE_S * 1000:g} ms: what anything becoming ready "
            "then (an API request, a delivery report, a batch) waited for the loop (a batch or request in progress, "
            "another thread holding the GIL, no free core)",
            buckets=_LOOP_BUCKETS,
            registry=r,
        )
        step = Histogram(
            "stream_loop_step_seconds",
            "Seconds the event loop spent in one synchronous step of a batch, by step: process (parse, state, "
            "features, scoring, decisions, table writes), clicks (click rows completed and "
            "scored), recommend (session_start recommendations), monitor (outcomes and drift), publish (outputs "
            "queued on the producer and the sink), articles (the article agent's fold), timers (the model reload, the "
            "lag export and the monitoring publication)",
            ["step"],
            buckets=_LOOP_BUCKETS,
            registry=r,
        )
        #: ``stream_loop_step_seconds`` per step (:data:`LOOP_STEPS`)
        self.loop_step = {name: step.labels(step=name) for name in LOOP_STEPS}
        self.model_version = Gauge(
            "stream_model_info", "Loaded model versions (value 1)", ["model", "version"], registry=r
        )
        self.shadow_model_version = Gauge(
            "stream_shadow_model_info",
            "Challenger versions scored in shadow (value 1; STREAM_SHADOW_ALIAS)",
            ["model", "version"],
            registry=r,
        )
        self.shadow_predictions = Counter(
            "stream_shadow_predictions_total",
            "Challenger scores published to predictions-shadow",
            ["model"],
            registry=r,
        )
        self.recommendations = Counter(
            "stream_recommendations_total",
            "Records published to the recommendations topic (one per session_start; STREAM_RECOMMEND_ON_SESSION_START)",
            registry=r,
        )
        self.shadow_errors = Counter(
            "stream_shadow_errors_total",
            "Batches a challenger could not score (production scores were published)",
            ["model"],
            registry=r,
        )
        self.models_refused = Counter(
            "stream_models_refused_total", "Models refused (feature list mismatch)", ["model"], registry=r
        )
        self.sink_errors = Counter(
            "stream_sink_errors_total", "Failed ClickHouse inserts (retried)", ["table"], registry=r
        )
        self.sink_inserted = Counter("stream_sink_rows_total", "Rows inserted into ClickHouse", ["table"], registry=r)
        self.backpressure = Gauge(
            "stream_sink_backpressure_active",
            "1 while ClickHouse does not take the sink's rows (an insert is being retried, or the queue is full): "
            "batches cannot settle and consumption stops at the in-flight limit",
            registry=r,
        )
        self.backpressure_total = Counter(
            "stream_sink_backpressure_pauses_total", "Times the sink's backpressure turned on", registry=r
        )
        self.fatal_errors = Counter(
            "stream_fatal_errors_total",
            "Errors that stopped the worker with their batch uncommitted: an output Kafka did not take "
            "(topic, librdkafka error) or a failed batch (empty topic, exception type)",
            ["topic", "error"],
            registry=r,
        )
        self.dead_letters_shrunk = Counter(
            "stream_dead_letters_shrunk_total",
            "Dead letters too large for one record, sent with the first bytes, size and SHA-256 of the original",
            registry=r,
        )
        self.unconfirmed_age = Gauge(
            "stream_unconfirmed_batch_age_seconds",
            "Per input partition: age of the oldest batch whose outputs are not confirmed yet (0 = none); "
            "nothing after it is committed",
            ["topic", "partition"],
            registry=r,
        )
        self.lag = Gauge(
            "stream_consumer_lag_messages", "Messages behind the high watermark", ["topic", "partition"], registry=r
        )
        self.event_time = Gauge(
            "stream_event_time_latest_seconds",
            "The newest event time this worker has processed (unix seconds; absent before its first event): "
            "the stream's clock in event time, which `stream monitor` waits on",
            registry=r,
        )
        self.idle = Gauge(
            "stream_partition_idle_seconds",
            "Per owned input partition with messages waiting: seconds since one of its records was last "
            "processed (0 = progressing or nothing to read)",
            ["topic", "partition"],
            registry=r,
        )
        self.rejoins = Counter(
            "stream_start_stall_rejoins_total",
            "Times the worker re-joined its group because an assigned input partition delivered nothing since "
            "its assignment, or the tables' recovery read nothing, for STREAM_START_STALL_S while messages waited",
            registry=r,
        )
        self.stalls = Counter(
            "stream_partition_stalls_total",
            "Times an owned input partition with messages waiting processed none for STREAM_STALL_WARNING_S",
            registry=r,
        )
        self._served_on: int | None = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - probes and scrapes come from outside
        """Expose ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` (0 = do not serve); again on that port: no-op.

        One thread per request, none on the event loop: ``/healthz`` answers while the loop is
        wedged (and says so). A port that cannot be bound is a :class:`ConfigError` naming
        ``STREAM_WORKER_WEB_PORT``.
        """
        if not port or port == self._served_on:
            return
        try:
            server = make_server(
                addr,
                port,
                web_app(make_wsgi_app(self.registry), self.health),
                ThreadingWSGIServer,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise ConfigError(
                f"invalid configuration STREAM_WORKER_WEB_PORT={port}: cannot serve metrics on "
                f"port {port} ({exc.strerror}); expected a free port, or 0 for no metrics"
            ) from None
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        self._served_on = port

    async def probe_loop(self, interval_s: float = LOOP_PROBE_S) -> None:
        """Observe ``stream_event_loop_lag_seconds`` every ``interval_s`` until cancelled.

        Timed with ``perf_counter``: uvloop's own clock counts whole milliseconds.
        """
        observe = self.loop_lag.observe
        clock = time.perf_counter
        while True:
            due = clock() + interval_s
            await asyncio.sleep(interval_s)
            observe(max(clock() - due, 0.0))

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (tests and the demo summary)."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v

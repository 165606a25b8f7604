"""Wiring only: the faust app, its topics and tables, and the agents registered on them.

Run it with ``python -m stream worker`` or ``faust -A stream.worker.app worker`` (the module attribute
``app`` is built on first access from the environment).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from time import monotonic
from typing import Any

import faust
from faust.sensors import Sensor
from prometheus_client import Gauge

from stream.clickhouse import connect
from stream.clickhouse.sink import ClickHouseSink
from stream.config import Settings, load_settings
from stream.kafka import clients, faust_producer, fetch, transport
from stream.kafka import topics as T
from stream.kafka.limits import producer_max_bytes
from stream.kafka.schema import RawSchema
from stream.models.recommend import NAME as RECOMMEND_NAME
from stream.models.registry import ModelRegistry
from stream.models.scoring import ModelSet
from stream.state import DEFAULT_CONFIG
from stream.worker import monitor as monitoring
from stream.worker.agents import articles, events
from stream.worker.agents.gaps import GapFiller
from stream.worker.api import server as api
from stream.worker.delivery import COMMIT_INTERVAL_S, Ledger, describe
from stream.worker.health import Health, RecoveryWatch, StallDetector, StartWatch, exit_after, readiness
from stream.worker.logs import limit_repeats
from stream.worker.metrics import WorkerMetrics
from stream.worker.processor import EXPECTED_FEATURES, BatchProcessor, ProcessorConfig
from stream.worker.publisher import INFLIGHT_BATCHES, Publisher
from stream.worker.recommendations import Recommendations
from stream.worker.tuning import thread_ids, tune_gc

log = logging.getLogger(__name__)
RAW: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}


class StreamActivity(Sensor):
    """Notes when each partition last handed an event to a stream, where faust's stall check reads it.

    faust's consumer checks every 2.5 s that each assigned partition with records waiting hands
    them to its stream (``verify_event_path``: "Stream has not started processing TP" or "Stream
    stopped processing", after ``stream_processing_timeout``, 300 s). It reads the time of the last
    event from ``app.monitor.stream_inbound_time``, which only the Monitor sensor fills: without
    it, every busy partition was reported at ERROR every 2.5 s from the fifth minute on.
    """

    def __init__(self, inbound: MutableMapping[Any, float]) -> None:
        super().__init__()
        self.inbound = inbound

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.inbound[tp] = monotonic()


class WorkerApp(faust.App):
    """A faust app without faust's in-memory ``Monitor`` sensor.

    The worker exports its own Prometheus metrics; the Monitor's callbacks on every message and
    stream event cost about 4 % of its throughput and feed only faust's web views (disabled).
    :class:`StreamActivity` takes its place: it keeps faust's stall check fed, and faust warns
    about every rebalance when no sensor is left.
    """

    def on_init_dependencies(self) -> Any:
        services = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        self.sensors.add(StreamActivity(self.monitor.stream_inbound_time))
        # Table writes queue changelog records in faust's producer buffer; past ``max_messages``
        # (100) faust stops delivering input until it drained. One batch writes up to one record
        # per touched key, so the bound follows the batch size.
        self.producer.buffer.max_messages = max(100, 4 * self.changelog_burst)
        return services

    #: records one batch may write to table changelogs (set by create_app from the batch size)
    changelog_burst: int = 500

    #: (fetch_min_bytes, fetch_max_wait_ms) of the consumer (STREAM_CONSUMER_FETCH_*; set by create_app)
    fetch_settings: tuple[int, int] | None = None

    #: STREAM_CONSUMER_HANDOFF (set by create_app)
    consumer_handoff: str = "lean"

    #: STREAM_FAUST_PRODUCER (set by create_app), and what the librdkafka one is built with and
    #: reports a lost record to (stream/kafka/faust_producer.py)
    faust_producer: str = "librdkafka"
    librdkafka_producer: Callable[..., Any] | None = None
    on_producer_failure: Callable[[BaseException], None] | None = None
    #: STREAM_KAFKA_FETCH, and the librdkafka consumer it may need (``**config``; set by create_app)
    kafka_fetch: str = "aiokafka"
    fetch_consumer_factory: Any = None

    #: STREAM_GC_THRESHOLD and STREAM_GC_FREEZE (set by create_app)
    gc_tuning: tuple[tuple[int, int, int], bool] | None = None
    #: sys.setswitchinterval in seconds at start (STREAM_SWITCH_INTERVAL_MS; 0: Python's own)
    switch_interval_s: float = 0.0

    #: the HTTP API (stream/worker/api/; set by create_app when STREAM_API_PORT is set)
    api: Any = None
    #: loops that must run from the start, also through the first recovery, which faust's timers
    #: and tasks wait for (set by create_app)
    watchdogs: tuple[Callable[[], Awaitable[None]], ...] = ()

    async def on_first_start(self) -> None:
        await super().on_first_start()
        if self.switch_interval_s > 0:  # before the API's thread, whose own setting wins
            sys.setswitchinterval(self.switch_interval_s)
        if self.api is not None:  # from the start: it answers 503 until the first assignment is recovered
            await self.api.start()
        for watchdog in self.watchdogs:
            self.add_future(watchdog())
        if self.on_startup_finished is not None:
            # set by the faust Worker that runs this app (``python -m stream worker`` or
            # ``faust -A stream.worker.app worker``), which has configured logging by now
            limit_repeats()
        if self.gc_tuning is not None:  # once everything long-lived exists: see stream/worker/tuning.py
            tune_gc(*self.gc_tuning)

    #: the worker's output publisher (set by create_app)
    publisher: Publisher | None = None

    #: when the current shutdown must be done waiting for batches (loop time; set by on_stop)
    _shutdown_deadline: float | None = None

    #: the timer of STREAM_SHUTDOWN_TIMEOUT_S, once a shutdown began (on_stop)
    _exit_timer: threading.Timer | None = None

    async def on_stop(self) -> None:
        self._shutdown_deadline = self.loop.time() + self.settle_timeout_s()
        if self._exit_timer is None:
            self._exit_timer = exit_after(self.shutdown_timeout_s())
        await super().on_stop()

    def shutdown_timeout_s(self) -> float:
        return self.publisher.settings.shutdown_timeout_s if self.publisher is not None else 120.0

    def settle_timeout_s(self) -> float:
        return self.publisher.settings.settle_timeout_s if self.publisher is not None else 30.0

    def settle_time_left(self) -> float:
        """What is left of ``STREAM_SETTLE_TIMEOUT_S``: of the shutdown's, or a whole one for a rebalance."""
        if self._shutdown_deadline is None:
            return self.settle_timeout_s()
        return max(self._shutdown_deadline - self.loop.time(), 0.0)

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        # faust waits, without a bound, until every message that reached a stream is acked: a
        # batch that cannot be confirmed (Kafka or ClickHouse gone) hung SIGTERM and rebalances.
        timeout = self.settle_time_left()
        waiting = asyncio.ensure_future(super()._consumer_wait_empty(consumer, logger))
        done, _ = await asyncio.wait([waiting], timeout=timeout)
        if not done:
            ages = self.publisher.unconfirmed() if self.publisher is not None else {}
            log.warning(
                "gave up waiting for batches in flight after %.0f s (STREAM_SETTLE_TIMEOUT_S) on %s; "
                "they stay uncommitted and are read again",
                timeout,
                describe(ages),
            )
            # faust's wait swallows a cancel while it waits for an ack; forgetting what it waits
            # for ends it within a second (the messages stay held: nothing more is committed).
            consumer.unacked.clear()
        await waiting

    @property
    def ledger(self) -> Any:
        """What the consumer may commit (stream/worker/delivery.py), once the publisher exists."""
        return self.publisher.ledger if self.publisher is not None else None

    def _new_transport(self) -> Any:
        # faust's aiokafka transport committing the worker's ledger, and by default with a
        # cheaper hand-off of fetched records (same order and interleaving): stream/kafka/transport.py.
        # Its producer (table changelogs) is confluent-kafka's by default: stream/kafka/faust_producer.py;
        # its fetch aiokafka's, or librdkafka's (STREAM_KAFKA_FETCH: stream/kafka/fetch.py).
        lean = self.consumer_handoff != "faust"
        if self.kafka_fetch == "librdkafka":
            cls: type[Any] = fetch.Transport if lean else fetch.LedgerTransport
        else:
            cls = transport.Transport if lean else transport.LedgerTransport
        if self.faust_producer == "librdkafka":
            cls = faust_producer.with_librdkafka_producer(cls)
        return cls(self.conf.broker_consumer, self)


def create_app(
    settings: Settings | None = None,
    bootstrap: str | None = None,
    *,
    clickhouse: bool = True,
    seed: int = 0,
    metrics: WorkerMetrics | None = None,
) -> tuple[WorkerApp, Publisher]:
    s = settings or load_settings()
    bootstrap = bootstrap or s.kafka_bootstrap or "localhost:9092"
    p = s.topic_partitions
    datadir = s.ensure_dir("state_dir", s.worker_instance)
    api_socket = api.bind(s.api_port) if s.api_port else None  # a port in use: one line, before anything starts
    app = WorkerApp(
        s.worker_id,
        broker=[f"kafka://{b.strip()}" for b in bootstrap.split(",")],
        broker_credentials=clients.faust_credentials(s),
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=p,
        topic_replication_factor=s.topic_replication,
        web_enabled=False,  # the API is an aiohttp site of its own (stream/worker/api/)
        # what faust's assignor tells the other members this worker's URL is (the API's owner map)
        canonical_url=s.api_advertised_url(),
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
        producer_compression_type="lz4",
        broker_commit_interval=COMMIT_INTERVAL_S,  # the commit protocol's step 4 (delivery.py)
        broker_session_timeout=s.worker_session_timeout_s,
        broker_heartbeat_interval=max(s.worker_session_timeout_s / 5, 1.0),
        consumer_auto_offset_reset="earliest",
        # faust hands every record of one fetch to the streams before it fetches again, and a fetch
        # holds up to this much per partition: with faust's 1 MiB (about 15,000 compressed events
        # per partition), a backlog on the input kept the article agent's records waiting for
        # seconds (docs/worker.md, "Article popularity").
        consumer_max_fetch_size=s.consumer_max_fetch_bytes,
        table_standby_replicas=0,
        stream_buffer_maxsize=s.stream_buffer_size,
        **RAW,
    )
    app.changelog_burst = s.score_batch_size
    app.gc_tuning = (s.gc_threshold, s.gc_freeze)
    app.switch_interval_s = s.switch_interval_ms / 1000
    app.consumer_handoff = s.consumer_handoff  # before the first topic: that builds the transport
    app.kafka_fetch = s.kafka_fetch
    app.fetch_consumer_factory = functools.partial(clients.consumer, bootstrap, s)
    app.fetch_settings = (s.consumer_fetch_min_bytes, s.consumer_fetch_max_wait_ms)
    app.faust_producer = s.faust_producer
    app.librdkafka_producer = functools.partial(clients.producer, bootstrap, s)
    topics = {
        # Consumed topics decode without the serializer registry (stream/kafka/schema.py).
        "events": app.topic(s.topic(T.SESSION_EVENTS), partitions=p, schema=RawSchema()),
        "predictions": app.topic(s.topic(T.PREDICTIONS), partitions=p, **RAW),
        "predictions_shadow": app.topic(s.topic(T.PREDICTIONS_SHADOW), partitions=p, **RAW),
        "decisions": app.topic(s.topic(T.BANDIT_DECISIONS), partitions=p, **RAW),
        "recommendations": app.topic(s.topic(T.RECOMMENDATIONS), partitions=p, **RAW),
        "dead_letter": app.topic(s.topic(T.DEAD_LETTER), partitions=p, **RAW),
        "article_events": app.topic(
            T.internal_topic(s, T.ARTICLE_EVENTS),
            partitions=p,
            internal=True,
            schema=RawSchema(),
            config=T.record_limit_config(s),
        ),
    }
    kv: dict[str, Any] = {"default": None, "partitions": p, "key_type": bytes, "value_type": bytes}
    tables = {
        # RocksDB, changelog-backed, co-partitioned with session-events (key user_id).
        "users": app.Table(T.USERS_TABLE, **kv),
        "ad_pending": app.Table(T.AD_PENDING_TABLE, **kv),
        # Read by every worker, which keeps every partition of their changelogs in RocksDB like
        # the other tables (faust ignores store="memory://": yarl parses it as an empty URL and
        # the app's store applies). Their keys come back as bytes. Other workers' writes are
        # applied as they arrive (see _apply_at_once).
        "articles": app.GlobalTable(T.ARTICLE_STATS_TABLE, on_changelog_event=_apply_at_once(app), **kv),
        "bandit": app.GlobalTable(T.BANDIT_STATS_TABLE, on_changelog_event=_apply_at_once(app), **kv),
        # each user's recent reads, for recommendations (stream/worker/recommendations.py)
        "reads": app.Table(T.READS_TABLE, **kv),
    }
    metrics = metrics or WorkerMetrics(health=Health(s.health_loop_timeout_s))
    models = ModelSet(
        ModelRegistry(s.models_dir),
        EXPECTED_FEATURES,
        on_refused=lambda name, version, reason: metrics.models_refused.labels(model=name).inc(),
        on_loaded=lambda m: _set_version_gauge(metrics.model_version, m.name, m.version),
    )
    models.refresh()  # before any event is consumed: a worker that has models never skips scoring
    shadow = None
    if s.shadow_alias:
        shadow = ModelSet(
            ModelRegistry(s.models_dir),
            EXPECTED_FEATURES,
            alias=s.shadow_alias,
            on_refused=lambda name, version, reason: metrics.models_refused.labels(model=name).inc(),
            on_loaded=lambda m: _set_version_gauge(metrics.shadow_model_version, m.name, m.version),
            required=False,
            on_unloaded=lambda name: _set_version_gauge(metrics.shadow_model_version, name, None),
        )
        shadow.refresh()
    config = ProcessorConfig(
        bandit_context=s.bandit_context,
        click_join_window_ms=s.click_join_window_ms,
        max_event_bytes=s.max_event_bytes,
        seed=seed,
        state_config=replace(DEFAULT_CONFIG, lateness_ms=s.allowed_lateness_ms),
    )
    processor = BatchProcessor(models.models, s.placements, config, metrics=metrics)
    if shadow is not None:
        processor.shadow = shadow.models  # the same dict: refresh() updates what the processor scores with
    # STREAM_MONITORING: online quality and drift (stream/worker/monitor.py)
    monitor = monitoring.build_monitor(s, models.registry, metrics.registry) if s.monitoring else None
    processor.keep_scored = monitor is not None
    sink = None
    if clickhouse:
        sink = ClickHouseSink(
            lambda: connect(s),
            # half of the events in flight: under a backlog an insert never waits for the timer
            # while the in-flight bound holds the next batches back
            flush_rows=min(5000, max(1, INFLIGHT_BATCHES * s.score_batch_size // 2)),
            flush_s=s.clickhouse_flush_s,
            max_pending=50_000,
            on_error=lambda table, exc: metrics.sink_errors.labels(table=table).inc(),
            on_backpressure=lambda on: _backpressure(metrics, on),
            on_insert=lambda table, n, secs: metrics.sink_inserted.labels(table=table).inc(n),
        )
    producer = clients.producer(
        bootstrap,
        s,
        **{
            "linger.ms": s.output_linger_ms,
            "compression.type": "lz4",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",  # the Java clients' key hashing
            "queue.buffering.max.messages": 500_000,
            "message.max.bytes": producer_max_bytes(s.max_message_bytes),
        },
    )
    # POST /v1/decide waits for Kafka's acknowledgement of its decision: its own producer, without
    # the batch producer's linger (5 ms of every answer) and queue of batch outputs ahead of it
    api_producer = None
    api_threads: frozenset[int] = frozenset()
    if api_socket is not None:
        before = thread_ids()
        api_producer = clients.producer(
            bootstrap,
            s,
            **{"linger.ms": 0, "enable.idempotence": True},
        )
        api_threads = frozenset(thread_ids() - before)  # librdkafka's, kept ahead of the batches
    gap_filler = GapFiller(
        lambda: clients.consumer(
            bootstrap,
            s,
            **{
                "group.id": s.worker_id,  # faust's group: its committed offsets (GapFiller.reading_start)
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
    )
    names = {k: t.get_topic_name() for k, t in topics.items()}
    rt = Publisher(
        s,
        metrics,
        models,
        processor,
        sink,
        topics,
        tables,
        producer=producer,
        api_producer=api_producer,
        api_producer_threads=api_threads,
        gap_filler=gap_filler,
        topic_names=names,
        ledger=Ledger((names["events"], names["article_events"])),
        shadow=shadow,
        consumer=lambda: app.consumer,
        on_fatal=lambda exc: _crash(app, exc, metrics.health),
    )
    app.publisher = rt
    app.on_producer_failure = rt.fail  # a lost changelog record stops the worker like a lost output
    recs = Recommendations(
        ModelRegistry(s.models_dir),
        tables["reads"],
        tables["articles"],
        s.recommend_max_age_hours,
        s.recommend_reads,
        on_loaded=lambda version: _set_version_gauge(metrics.model_version, RECOMMEND_NAME, version),
        refresh_s=s.recommend_refresh_s,
    )
    recs.refresh_model(force=True)  # loaded at start like the scoring models, listed by GET /v1/models
    events.register(app, rt, monitor, recs)
    if monitor is not None:
        monitoring.register(app, monitor, sink, s.monitoring_interval_s, names["events"], metrics.loop_step["timers"])
    articles.register(app, rt)
    _register_services(app, rt, recs)
    app.api = api.register(app, rt, api_socket, recovered=lambda: _recovered(app), recs=recs)  # stream/worker/api/
    return app, rt


def _apply_at_once(app: faust.App) -> Callable[[Any], Awaitable[None]]:
    """A GlobalTable's ``on_changelog_event``: apply what other workers write as it arrives.

    faust assigns every partition of a GlobalTable's changelog to every worker as active (so that
    it is recovered at start) and, those another worker writes, as standby too. Its changelog
    reader takes the active path first, which applies records only once ``recovery_buffer_size``
    (1000) are buffered, also after the recovery: another worker's article states, watermark
    progress and bandit counts stayed invisible until 1000 records had come, and every click wait
    on them timed out. Outside a recovery the buffer is applied at once (as faust does for a plain
    standby, ``standby_buffer_size=1``); a recovery still applies it in batches.
    """

    async def on_changelog_event(event: Any) -> None:
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        if not recovery.in_recovery:
            recovery.flush_buffers()  # the reader appended ``event`` to its table's buffer before this call

    return on_changelog_event


def _crash(app: faust.App, exc: BaseException, health: Health) -> None:
    """Stop the worker cleanly with exit code 1 (mode's Worker re-raises the crash reason); not live from now on."""
    health.fail(f"{type(exc).__name__}: {exc}")
    _tasks.add(task := asyncio.ensure_future(app.crash(exc)))
    task.add_done_callback(_tasks.discard)


_tasks: set[asyncio.Future[Any]] = set()  # keeps the crash task alive until it ran


def _backpressure(metrics: WorkerMetrics, on: bool) -> None:
    metrics.backpressure.set(1 if on else 0)
    if on:
        metrics.backpressure_total.inc()


def _set_version_gauge(gauge: Gauge, name: str, version: str | None) -> None:
    """``gauge{model=name}`` says ``version`` only (no series for ``None``)."""
    for sample in list(next(iter(gauge.collect())).samples):
        if sample.labels.get("model") == name:
            gauge.remove(name, sample.labels["version"])
    if version is not None:
        gauge.labels(model=name, version=version).set(1)


def _recovered(app: faust.App) -> bool:
    """The tables of the current assignment are recovered and its streams resumed (not during a rebalance)."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    return recovery.completed.is_set() and not getattr(app, "in_recovery", False) and not app.rebalancing


def _watch_progress(rt: Publisher, detector: StallDetector, lags: dict[tuple[str, int], int]) -> None:
    """Feed the stalled-partition detector and export each owned partition's idle time."""
    before = set(detector.idle)
    idle = detector.update(lags, rt.positions)
    for topic, partition in before - idle.keys():
        rt.metrics.idle.remove(topic, str(partition))
    for (topic, partition), age in idle.items():
        rt.metrics.idle.labels(topic=topic, partition=str(partition)).set(age)


def _highwater(consumer: Any, tp: Any) -> int | None:
    """The consumer's high watermark of ``tp``; None once a rebalance has taken ``tp`` away.

    aiokafka asserts that ``tp`` is assigned, and its consumer thread can revoke it between the
    read of the assignment and this call: the assertion crashed the worker at a rebalance.
    """
    try:
        return consumer.highwater(tp)
    except AssertionError:
        return None


def _more_after(consumer: Any, tp: Any, offset: int) -> bool:
    """Whether the consumer has a record of ``tp`` after ``offset`` (transport.more_waiting: control
    records, such as a transaction's commit marker, do not count); True when it cannot tell."""
    more_after = getattr(consumer, "more_after", None)
    if more_after is None:
        return True
    try:
        return bool(more_after(tp, offset))
    except AssertionError:  # revoked meanwhile (see _highwater)
        return True


async def _waiting(app: faust.App, rt: Publisher, watch: StartWatch, assigned: Any) -> list[tuple[str, int]]:
    """The watched input partitions (no record since their assignment) with records past the committed offset.

    Asked of the broker, unless the consumer's high watermark shows nothing to read: a partition
    whose fetch never ran has none in the consumer, and the broker's low watermark tells a log
    whose records were all deleted. Offsets the consumer has read up to the broker's high
    watermark without finding a record (transaction markers) are nothing to read.
    """
    consumer = app.consumer
    committed = getattr(consumer, "_committed_offset", {})
    inputs = {rt.topic_names.get("events"), rt.topic_names.get("article_events")}
    loop = asyncio.get_running_loop()
    out = []
    for tp in assigned:
        key = (tp[0], tp[1])
        if tp[0] not in inputs or not watch.watching(key) or rt.gap_filler is None:
            continue
        if (seen := _highwater(consumer, tp)) is not None and seen <= (committed.get(tp) or 0):
            continue  # nothing to read
        try:
            low, high = await loop.run_in_executor(None, rt.gap_filler.watermarks, *key)
        except Exception as exc:  # the broker is away: tried again at the next check
            log.debug("cannot read the watermarks of %s[%d]: %s", key[0], key[1], exc)
            continue
        start = max(committed.get(tp) or 0, low)
        if high > start and not (seen == high and not _more_after(consumer, tp, start - 1)):
            out.append(key)
    return out


async def _rejoin_if_stuck(app: faust.App, rt: Publisher, watch: StartWatch, waiting: list[tuple[str, int]]) -> None:
    """Re-join the group when an owned partition has delivered nothing since its assignment (health.StartWatch)."""
    inbound = app.monitor.stream_inbound_time  # StreamActivity's record of each partition's last event
    stuck = watch.update(waiting, lambda tp: inbound.get(tp))  # type: ignore[call-overload]  # TP is a (topic, partition) tuple
    if not stuck:
        return
    rt.metrics.rejoins.inc()
    log.warning(
        "%s delivered no record since the assignment for %.0f s while records wait "
        "(STREAM_START_STALL_S); re-joining the group",
        ", ".join(f"{t}[{p}]" for t, p in stuck),
        watch.limit_s,
    )
    watch.restart(stuck)
    await _rejoin(app)


async def _rejoin_if_recovery_stuck(app: faust.App, rt: Publisher, watch: RecoveryWatch) -> None:
    """Re-join the group when the tables' recovery reads nothing while records remain (health.RecoveryWatch)."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    running = getattr(app, "in_recovery", False)
    started = getattr(recovery, "_recovery_started_at", None) if running else None
    remaining = sum(max(n, 0) for n in recovery.active_remaining().values()) if running else 0
    if not watch.update(started, remaining):
        return
    rt.metrics.rejoins.inc()
    log.warning(
        "the tables' recovery has read no changelog record for %.0f s with %d left (STREAM_START_STALL_S); "
        "re-joining the group",
        watch.limit_s,
        remaining,
    )
    await _rejoin(app)


async def _rejoin(app: faust.App) -> None:
    """A rebalance of the whole group, which rebuilds every partition's fetch state and recovery."""
    consumer = app.consumer
    assert isinstance(consumer, transport.LedgerConsumer)  # the app's transport (WorkerApp._new_transport)
    await consumer.rejoin()


def _register_services(app: faust.App, rt: Publisher, recs: Recommendations | None = None) -> None:
    s = rt.settings
    health = rt.metrics.health
    detector = StallDetector(s.stall_warning_s, on_stalled=lambda tp: rt.metrics.stalls.inc())
    watch = StartWatch(s.start_stall_s)

    @app.task
    async def start_services() -> None:
        rt.metrics.serve(s.worker_web_port)
        if rt.sink is not None:
            await rt.sink.run()

    @app.task
    async def loop_lag() -> None:
        await rt.metrics.probe_loop()  # stream_event_loop_lag_seconds: what requests wait for the loop

    timed = rt.metrics.loop_step["timers"]

    @app.timer(interval=s.model_reload_s)
    async def reload_models() -> None:
        with timed.time():
            rt.models.refresh()
            if rt.shadow is not None:
                rt.shadow.refresh()
            if recs is not None:
                recs.refresh_model()

    @app.timer(interval=min(5.0, s.stall_warning_s / 2))
    async def consumer_lag() -> None:
        consumer = app.consumer
        # faust's record of the offsets it committed, or read as committed at the assignment
        committed = getattr(consumer, "_committed_offset", {})
        assigned = consumer.assignment()
        await rt.learn_starts(assigned)  # a new group has no committed offset to count the lag from
        with timed.time():
            lags = rt.export_lag(
                assigned, lambda tp: _highwater(consumer, tp), committed.get, lambda tp, o: _more_after(consumer, tp, o)
            )
            _watch_progress(rt, detector, lags if _recovered(app) else {})  # recovery is not a stall
            if rt.processor.event_hwm:
                rt.metrics.event_time.set(max(rt.processor.event_hwm.values()) / 1000)
        if _recovered(app):
            await _rejoin_if_stuck(app, rt, watch, await _waiting(app, rt, watch, assigned))

    async def recovery_stalls() -> None:
        recovery_watch = RecoveryWatch(s.start_stall_s)
        while True:
            await asyncio.sleep(min(5.0, s.start_stall_s / 2))
            try:
                await _rejoin_if_recovery_stuck(app, rt, recovery_watch)
            except Exception as exc:  # the check must outlive a failed rejoin: tried again next time
                log.warning("cannot check the tables' recovery or re-join the group: %s", exc)

    app.watchdogs = (recovery_stalls,)  # type: ignore[attr-defined]  # a WorkerApp (create_app)

    @app.timer(interval=1.0)
    async def health_check() -> None:
        # the heartbeat that /healthz checks, and the readiness verdict /readyz answers with
        health.beat()
        health.set_ready(
            readiness(
                recovered=_recovered(app), unconfirmed=rt.unconfirmed(), idle=detector.idle, limit_s=s.stall_warning_s
            )
        )

    @app.timer(interval=min(5.0, s.stall_warning_s / 2))
    async def stalled_partitions() -> None:
        rt.check_stalls()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        async with rt.processor.stepping:  # not in the middle of a batch (BatchProcessor.process_stepped)
            rt.on_revoked(revoked)
        gone = [(tp.topic, tp.partition) for tp in revoked]
        detector.forget(gone)
        watch.forget(gone)
        for topic, partition in gone:
            rt.metrics.idle.remove(topic, str(partition))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def watch_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
        watch.assigned((tp.topic, tp.partition) for tp in assigned)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def flush_sink(app: WorkerApp, **kwargs: Any) -> None:
        # Bounded by what is left of STREAM_SETTLE_TIMEOUT_S: whatever is not confirmed by then
        # stays uncommitted and is read again after the restart.
        if rt.sink is not None:
            try:
                await asyncio.wait_for(rt.sink.stop(), max(app.settle_time_left(), 1.0))
            except Exception as exc:  # a timeout, or ClickHouse still failing
                log.warning(
                    "ClickHouse rows not inserted at shutdown (%s); their batches stay uncommitted",
                    type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                )
        await rt.drain(app.settle_time_left())  # settle (ack) every batch whose outputs are confirmed
        rt.close(max(app.settle_time_left(), 1.0))


def __getattr__(name: str) -> Any:
    """``faust -A stream.worker.app worker`` reads ``stream.worker.app.app``; build it only when asked."""
    if name == "app":
        app, _ = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)

"""The README's first command: the whole product end to end on embedded infrastructure.

Steps (each printed as it runs):

1. start the embedded Kafka broker (or use ``STREAM_KAFKA_BOOTSTRAP``) and embedded ClickHouse;
2. simulate an audience; backfill its history into ClickHouse;
3. train and promote models (``python -m batch_training run``);
4. start the worker (``python -m stream worker``);
5. stream the following days live, time-shifted to now, for ``minutes`` minutes;
6. print a summary: throughput, latency, predictions per model, samples, bandit posteriors,
   where every output lives and how to query it;
7. write the backtest report of the live window;
8. stop everything and check that no process is left.

All data goes to ``<STREAM_DATA_DIR>/demo`` (replaced on every run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException

from stream.config import Settings, load_settings
from stream.errors import InfraError
from stream.kafka import clients

DAY_MS = 86_400_000
#: live events/s offered by default: about half of what one worker keeps up with live on a shared
#: 2-core host next to the demo's producer (docs/worker.md, "Goals 3 and 4"): the summary shows the
#: live latency at that rate, not a backlog the worker drains
DEMO_RATE = 400.0


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[demo {time.monotonic() - self.t0:6.1f}s] {text}", flush=True)


def _env(settings: Settings, bootstrap: str) -> dict[str, str]:
    """The demo's settings as STREAM_* variables for the subprocesses."""
    env = {
        f"STREAM_{k.upper()}": str(v)
        for k, v in settings.model_dump().items()
        if v is not None and not hasattr(v, "get_secret_value") and not isinstance(v, tuple)
    }
    env["STREAM_PLACEMENTS"] = ",".join(settings.placements)
    env["STREAM_KAFKA_BOOTSTRAP"] = bootstrap
    return env


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_ready(port: int, timeout_s: float) -> None:
    """Wait until the worker's ``/readyz`` answers 200 (its partitions assigned and recovered)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:  # HTTPError (503 while it starts) included
            pass
        time.sleep(0.2)
    raise InfraError(f"the worker was not ready (/readyz on port {port}) within {timeout_s:.0f} s")


def _metrics(port: int) -> dict[str, float]:
    """Scrape the worker's Prometheus endpoint into {sample name{labels}: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(name + "{"))


def hist_quantile(metrics: dict[str, float], name: str, q: float) -> float:
    """Quantile of a Prometheus histogram by linear interpolation within its buckets.

    >>> m = {"h_bucket{le=0.1}": 50.0, "h_bucket{le=0.2}": 100.0, "h_bucket{le=+Inf}": 100.0}
    >>> round(hist_quantile(m, "h", 0.75), 3)
    0.15
    """
    buckets = sorted(
        (float(k.split("le=")[1].rstrip("}").split(",")[0]), v)
        for k, v in metrics.items()
        if k.startswith(name + "_bucket{")
    )
    return bucket_quantile(buckets, q)


def stage_quantile(metrics: dict[str, float], stage: str, q: float) -> float:
    """Quantile of one stage of the worker's ``stream_stage_seconds`` histogram.

    >>> h = "stream_stage_seconds_bucket"
    >>> m = {f"{h}{{le=0.1,stage=ack}}": 4.0, f"{h}{{le=+Inf,stage=ack}}": 4.0, f"{h}{{le=0.1,stage=fetch}}": 0.0}
    >>> round(stage_quantile(m, "ack", 0.5), 3)
    0.05
    """
    tail = f",stage={stage}}}"
    return hist_quantile({k: v for k, v in metrics.items() if k.endswith(tail)}, "stream_stage_seconds", q)


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Quantile of cumulative buckets (``le`` ascending) by interpolation inside the bucket (Prometheus's rule).

    >>> round(bucket_quantile([(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.75), 3)
    0.15
    >>> bucket_quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5)
    nan
    """
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank, lo_bound, lo_count = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lo_bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / max(count - lo_count, 1e-12)
        lo_bound, lo_count = bound, count
    return lo_bound


def window_of(end: dict[str, float], start: dict[str, float]) -> dict[str, float]:
    """The counters and histogram buckets of ``end`` minus those of ``start``: what happened between two scrapes.

    >>> window_of({"h_bucket{le=0.1}": 5.0, "g{}": 2.0}, {"h_bucket{le=0.1}": 3.0})
    {'h_bucket{le=0.1}': 2.0, 'g{}': 2.0}
    """
    return {k: v - start.get(k, 0.0) for k, v in end.items()}


@dataclasses.dataclass
class CatchUp:
    """When the worker had caught up with the live traffic: the latency window starts there.

    Start-up (the first batches, the embedded ClickHouse server the worker's sink starts) leaves a
    backlog that the worker drains in its first seconds; a latency figure over it is that
    catch-up, not the live latency at the offered rate.
    """

    at: float = 0.0  # seconds of live traffic before the mark
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    offered: int = 0  # input records at the broker by then (since live traffic began)


def watch_catch_up(
    port: int,
    offered: Callable[[], int],
    rate: float,
    done: threading.Event,
    found: list[CatchUp],
    min_s: float = 5.0,
    caught_s: float = 0.25,
) -> None:
    """Mark (in ``found``) the first moment, after ``min_s`` of live traffic, at which the worker's
    backlog (records at the broker, ``offered()``, minus the events it processed) is at most
    ``caught_s`` seconds of input; gives up when ``done`` is set (the traffic ended) without one."""
    t0 = time.monotonic()
    while not done.wait(0.5):
        if time.monotonic() - t0 < min_s:
            continue
        try:
            n = offered()
            m = _metrics(port)
        except (OSError, KafkaException):  # a scrape or metadata hiccup: try again at the next tick
            continue
        if n - _sum(m, "stream_events_total") <= max(rate * caught_s, 1.0):
            found.append(CatchUp(time.monotonic() - t0, m, n))
            return


def demo_settings(name: str, worker_id: str, **overrides: Any) -> Settings:
    """A demo's settings: everything under ``<STREAM_DATA_DIR>/<name>`` (emptied first), a free metrics port,
    and (on embedded ClickHouse) a database of its own."""
    from stream.kafka.embedded import free_port

    base = load_settings()
    root = base.data_dir / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return load_settings(
        data_dir=root,
        chdb_path=root / "chdb",
        models_dir=root / "models",
        reports_dir=root / "reports",
        state_dir=root / "state",
        worker_web_port=free_port(),
        worker_id=worker_id,
        clickhouse_database=base.clickhouse_database if base.clickhouse_url else name.replace("-", "_"),
        **overrides,
    )


def run_demo(
    minutes: float = 2.0, users: int = 2000, days: int = 45, rate: float = DEMO_RATE, profile: str = "demo"
) -> int:
    from simulator import SimConfig, generate
    from simulator.sinks import backfill, produce_dataset
    from stream.clickhouse import connect
    from stream.kafka.embedded import kafka_or_embedded
    from stream.kafka.io import consume
    from stream.kafka.topics import ensure_topics
    from stream.tools.process import WorkerProcess

    clock = Clock()
    settings = demo_settings("demo", "demo-worker")
    root, port = settings.data_dir, settings.worker_web_port
    # enough live days for `minutes` of traffic at `rate` (the simulator makes ~8-12 events per user-day)
    live_days = max(1, int(minutes * 60 * rate / (users * 8)) + 1)
    worker: WorkerProcess | None = None
    where = (
        f"server {settings.clickhouse_url}"
        if settings.clickhouse_url
        else f"embedded (chdb in {settings.chdb_path}, served to every process by a local server)"
    )
    with kafka_or_embedded(settings.kafka_bootstrap, settings.topic_partitions, settings.max_message_bytes) as (
        bootstrap,
        jvm,
    ):
        if jvm is not None:
            settings = clients.for_embedded(settings)
        clock.say(f"Kafka at {bootstrap}; ClickHouse: {where}")
        ensure_topics(bootstrap, settings)

        # 2. simulate and backfill history
        ds = generate(SimConfig(n_users=users, days=days + live_days, seed=42))
        start_ms = int(ds.table["event_time"][0].as_py()) // DAY_MS * DAY_MS
        cut = start_ms + days * DAY_MS
        times = ds.table["event_time"].to_numpy()
        history = dataclasses.replace(ds, table=ds.table.filter(times < cut), malformed=[])
        live = dataclasses.replace(ds, table=ds.table.filter(times >= cut), malformed=[])
        ds.write(root / "data", formats=("parquet",))
        ch = connect(settings)
        try:
            if settings.clickhouse_url:
                ch.command("TRUNCATE TABLE IF EXISTS {db}.events")
            rows = backfill(ch, history)
        finally:
            ch.close()
        clock.say(f"backfilled {rows['events']:,} events of {users:,} simulated users over {days} days")

        # 3. train and promote
        env = _env(settings, bootstrap)
        proc = subprocess.run(
            [sys.executable, "-m", "batch_training", "run", "--profile", profile, "--no-progress"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        (root / "training.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise InfraError(f"training failed; see {root / 'training.log'}")
        clock.say(f"trained and promoted models ({settings.models_dir}); evaluation in {settings.reports_dir}")

        try:
            # 4. worker
            worker = WorkerProcess(bootstrap, env, root / "worker.log").start()
            worker.wait_for_log("loaded model churn", timeout_s=120)
            # live traffic starts once the worker owns its partitions (/readyz): the latency figure is
            # the worker's at the offered rate, not the group join and table recovery of its start
            _wait_ready(port, timeout_s=120)
            clock.say(f"worker running (pid {worker.proc.pid if worker.proc else '?'}, metrics :{port}/metrics)")

            # 5. live traffic; the latency window starts once the worker has caught up with it
            n_live = int(minutes * 60 * rate)
            live = dataclasses.replace(live, table=live.table.slice(0, n_live))
            events_topic = settings.topic("session-events")
            watermarks = clients.consumer(bootstrap, settings, **{"group.id": "demo-watermarks"})
            base = _records_at(watermarks, events_topic, settings.topic_partitions)
            m0 = _metrics(port)
            done, found = threading.Event(), list[CatchUp]()
            watcher = threading.Thread(
                target=watch_catch_up,
                args=(
                    port,
                    lambda: _records_at(watermarks, events_topic, settings.topic_partitions) - base,
                    rate,
                    done,
                    found,
                ),
                daemon=True,
            )
            t_live = time.monotonic()
            watcher.start()
            try:
                sent = produce_dataset(
                    live, bootstrap, events_topic, rate=rate, shift_to_now=True, progress=False, settings=settings
                )
            finally:
                done.set()
                watcher.join()
                watermarks.close()
            produced_s = time.monotonic() - t_live
            clock.say(f"streamed {sent:,} live events in {produced_s:.0f}s; waiting for the worker")
            deadline = time.monotonic() + 120
            m = _metrics(port)
            while _sum(m, "stream_events_total") - _sum(m0, "stream_events_total") < sent and (
                time.monotonic() < deadline
            ):
                time.sleep(1)
                m = _metrics(port)
            processed = _sum(m, "stream_events_total") - _sum(m0, "stream_events_total")
            elapsed = time.monotonic() - t_live
            sample_msgs = consume(
                bootstrap,
                settings.topic("predictions"),
                until=lambda got: len(got) >= 3,
                timeout_s=20,
                settings=settings,
            )
            console = (
                _console_consumer(bootstrap, settings.topic("predictions"))
                if settings.kafka_security_protocol == "PLAINTEXT"
                else ["(skipped: the console consumer would need the credentials in a properties file)"]
            )
        finally:
            if worker is not None:
                worker.stop()
        clock.say("worker stopped (clean shutdown: sink flushed, offsets committed)")
        posteriors = _posteriors(bootstrap, "demo-worker", settings)

    # 6. summary
    ch = connect(settings)
    try:
        per_model = ch.query_df(
            "SELECT model_name, model_version, count() AS predictions, round(avg(score), 4) AS "
            "mean_score FROM {db}.predictions FINAL GROUP BY model_name, model_version "
            "ORDER BY model_name"
        )
        decisions = ch.query_df(
            "SELECT context, placement, count() AS decisions, round(avg(propensity), 3) AS "
            "mean_propensity FROM {db}.bandit_decisions FINAL GROUP BY context, placement "
            "ORDER BY context, decisions DESC"
        )
    finally:
        ch.close()
    print("\n================ summary ================")
    print(
        f"offered                         : {rate:,.0f} events/s ({sent:,} events in {produced_s:.0f}s)"
        + (
            "; the default: about half of what one worker keeps up with live on a shared 2-core host "
            'next to this producer (docs/worker.md, "Goals 3 and 4")'
            if rate == DEMO_RATE
            else ""
        )
    )
    print(
        f"processed by the worker         : {processed:,.0f} of {sent:,} ({processed / max(elapsed, 1e-9):,.0f} "
        f"events/s over {elapsed:.0f}s, to the last event)"
    )
    whole = window_of(m, m0)
    if found:
        mark = found[0]
        win = window_of(m, mark.metrics)
        n_win = _sum(win, "stream_events_total")
        print(
            f"latency window                  : from {mark.at:.0f}s of live traffic, once the worker had caught up "
            f"(its backlog under a quarter second of input), to the end: {n_win:,.0f} events, "
            f"{(sent - mark.offered) / max(produced_s - mark.at, 1e-9):,.0f}/s offered"
        )
    else:
        win = whole
        print(
            "latency window                  : the whole live traffic: THE WORKER NEVER CAUGHT UP with the "
            "offered rate (its backlog stayed above a quarter second of input), so these figures include it"
        )
    _print_latency(win)
    if found:
        q50, q99 = (hist_quantile(whole, "stream_ingest_to_publish_seconds", q) * 1000 for q in (0.5, 0.99))
        print(f"  the whole live traffic, start-up included: ingest -> prediction p50 {q50:,.0f} ms, p99 {q99:,.0f} ms")
    print(f"dead-lettered records           : {_sum(m, 'stream_invalid_events_total'):,.0f}")
    print("\npredictions per model (ClickHouse, FINAL):")
    print(per_model.to_string(index=False))
    print("\nsample predictions (topic):")
    for msg in sample_msgs[:3]:
        print("  " + (msg.value() or b"").decode()[:220])
    print("\nbandit posteriors (Beta alpha/beta per context and placement, all partitions merged):")
    for ctx, arms in sorted(posteriors.items()):
        cells = ", ".join(
            f"{arm} {1 + c}/{1 + i - c} (mean {(1 + c) / (2 + i):.3f})" for arm, (i, c) in sorted(arms.items())
        )
        print(f"  {ctx:8s} {cells}")
    print("\nbandit decisions (ClickHouse):")
    print(decisions.to_string(index=False))
    print("\nwhere the outputs live:")
    topics = ", ".join(settings.topic(t) for t in ("predictions", "bandit-decisions", "session-events-dlq"))
    print(
        f"  Kafka topics      : {topics} (the embedded broker is gone after the demo; "
        "`python -m stream kafka up` runs one that stays)"
    )
    print(
        f"  ClickHouse        : database `{settings.clickhouse_database}`, tables predictions, bandit_decisions, "
        f"events, truth_* ({settings.chdb_path})"
    )
    print(f"  models (registry) : {settings.models_dir}")
    print(f"  reports           : {settings.reports_dir}")
    print("\nhow to query them:")
    print(
        f"  STREAM_CHDB_PATH={settings.chdb_path} STREAM_CLICKHOUSE_DATABASE={settings.clickhouse_database} "
        'python -m stream query "SELECT model_name, count() FROM {db}.predictions FINAL GROUP BY model_name"'
    )
    print("  (also while a worker runs: every process shares the directory's ClickHouse server)")
    print(
        "  java -cp 'kafka/lib/*' org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server HOST:PORT "
        f"--topic {settings.topic('predictions')} --from-beginning --formatter-property print.key=true"
    )
    print("  (run during the demo, that command printed:)")
    for line in console[:3]:
        print("    " + line[:200])

    # 7. backtest of the live window
    from stream.tools.backtest.cli import load_window, run_backtest

    window = load_window(root / "data", days=(days, days + live_days))
    result = run_backtest(window, settings.models_dir, settings.reports_dir / "backtest", mode="offline")
    clock.say(f"backtest report: {result['report']}")

    # 8. nothing left behind (the embedded ClickHouse's server too: a later query starts it again)
    from stream.clickhouse import local_server

    servers = local_server.stop(settings.chdb_path) if not settings.clickhouse_url else []
    left = [
        p for p in ([worker.proc.pid] if worker and worker.proc else []) + ([jvm] if jvm else []) + servers if _alive(p)
    ]
    if left:
        raise InfraError(f"processes still running after the demo: {left}")
    clock.say(f"done in {time.monotonic() - clock.t0:.0f}s; no process left behind")
    return 0


def _records_at(consumer: Any, topic: str, partitions: int) -> int:
    """Records in ``topic`` at the broker (the sum of its partitions' high watermarks)."""
    from confluent_kafka import TopicPartition

    return sum(
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1] for p in range(partitions)
    )


def _print_latency(m: dict[str, float]) -> None:
    """Ingest -> prediction and each stage of the worker's histograms in ``m`` (one window)."""
    q50, q90, q99 = (hist_quantile(m, "stream_ingest_to_publish_seconds", q) * 1000 for q in (0.5, 0.9, 0.99))
    print(
        f"ingest -> prediction latency    : p50 {q50:,.0f} ms, p90 {q90:,.0f} ms, p99 {q99:,.0f} ms "
        "(input record's Kafka timestamp to Kafka's ack of the prediction; worker histogram)"
    )
    print('  per stage, p50 / p99 ms (docs/worker.md, "Latency"):')
    labels = {
        "fetch": "broker -> fetched",
        "queue": "fetched -> batch start",
        "process": "processing",
        "ack": "publish -> acknowledged",
        "settle": "publish -> committable (ClickHouse)",
    }
    for stage, label in labels.items():
        p50, p99 = (stage_quantile(m, stage, q) * 1000 for q in (0.5, 0.99))
        print(f"    {stage:8s} {label:36s} {p50:>8,.1f} {p99:>9,.1f}")


def _console_consumer(bootstrap: str, topic: str) -> list[str]:
    """Run the Kafka CLI's console consumer for a few records (shows the subscription works)."""
    from stream.kafka.embedded import LIB_DIR, java_executable

    cmd = [
        java_executable(),
        "-Xmx256m",
        "-cp",
        f"{LIB_DIR}/*",
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--from-beginning",
        "--max-messages",
        "3",
        "--formatter-property",
        "print.key=true",
        "--timeout-ms",
        "20000",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=90)
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _posteriors(bootstrap: str, worker_id: str, settings: Settings) -> dict[str, dict[str, tuple[int, int]]]:
    """Merged bandit counts from the worker's compacted bandit-stats changelog."""
    from stream.kafka.io import consume
    from stream.worker.processor import merged_counts

    latest: dict[Any, bytes] = {}
    with contextlib.suppress(InfraError):
        for msg in consume(bootstrap, f"{worker_id}-bandit-stats-changelog", timeout_s=20, settings=settings):
            value = msg.value()
            if value is not None:
                latest[msg.key()] = value
    return merged_counts(latest)

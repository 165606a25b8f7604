"""Worker throughput and latency, side by side with three baselines, on the embedded broker.

    python bench/worker.py [--users 600] [--days 10] [--repeats 2] [--rate half|N|off] [--tuned-naive]
                           [--quix] [--floor] [--no-check] [--archive-off] [--baseline REV]
                           [--variants b,c,d] [--scale-out] [--latency-seconds 30] [--profile-backlog]

All variants consume the same preloaded topic of simulated events (4 partitions):

  (a) raw confluent-kafka consume-and-produce loop (the ceiling),
  (b) a trivial faust agent that forwards events (the framework's ceiling),
  (c) a naive faust agent: per-event RocksDB table update and per-event predict (the baseline),
  (d) our worker (python -m stream worker).

With ``--tuned-naive``, each repeat also runs (c') = (c) with the worker's process settings
(uvloop and the GC tuning of stream/worker/tuning.py), last: what those settings alone give the baseline.

With ``--quix``, each repeat also runs the peer the worker is measured against (issue 17): the
same pipeline in Quix Streams 3.x with the product's own functions (bench/quix/peer.py, in its own
virtualenv var/venv-quix, built from bench/quix/requirements.txt on first use):

  (q)  Quix, user/article/bandit state in Quix's RocksDB State (get/set per event), article
       popularity and bandit counts through group_by repartitions, scoring batched in a BatchingSink,
  (q+) the same with the decoded states written back once per key and checkpoint.

With ``--floor``, each repeat also runs (f): the worker's BatchProcessor over the same records in
memory, no Kafka and no faust (bench/floor.py): the floor our own code sets.

With ``--archive-off``, each repeat also runs (d-) = (d) with ``STREAM_ARCHIVE_EVENTS=false`` and
``STREAM_MONITORING=false``: what archiving every event into ClickHouse and monitoring the models
(outcome joins, quality, drift) cost together. The ratio (d)/(d-) is printed of the medians, then per repeat
with the median of those: two variants of one repeat run minutes apart, so their ratio cancels
most of the host's drift (docs/monitoring.md, "Cost on the hot path"; 7 repeats or more with
``--days 30``). With ``--baseline REV``, each repeat also runs (d0):
the worker of git revision REV (checked out into the work directory, same virtualenv), so that a
change is measured against the code before it in the same run.

Each repeat runs (b), (c), (d) and those in another order (a rotation, reversed every other
repeat: each runs first, and each follows each other one), and each starts only once the broker
is quiet again (it compacts the changelogs a variant wrote; the naive one writes one record per
event).

Throughput is measured from the consumer group's committed offsets (10% -> 90% of the input),
so start-up and rebalancing are excluded; the 90% mark also waits for 90% of what the group's
internal topics hold (the worker's article agent, the Quix peer's repartitioned stages) to be
committed, so that work left queued there is not counted as done. CPU per event over the same window, of the variant's
process (/proc utime + stime, every thread) and of the broker. The worker's embedded ClickHouse
server is a process of its own: its CPU is shown apart (the peers write no ClickHouse).

The check (first repeat; ``--no-check`` skips it): (d), (q), (q+) and (f) run to the end of the
input, and their predictions and decisions are compared with the worker's: counts and ids must be
equal, churn and engagement scores equal within 1e-9 (they depend only on the user's events, in
order). Click scores also read article popularity, and decisions the bandit counts of every
partition, both as far as folded at that moment in the worker (``STREAM_ARTICLE_WAIT_MS=0``) and
in the peers: the share that agrees is printed, not required.

Maximum sustained rate: (d)'s events/s drains a preloaded backlog, in full batches. A live stream
costs more per event (small batches and fetches, the bench's producer on the same machine), so
with ``--rate half`` (the default) the bench also bisects for the highest offered live rate the
worker keeps up with (its backlog grows by less than half a second of input over a step;
``--probes`` steps of ``--probe-seconds``, :func:`sustained`) and prints both.

Latency (``--rate``, by default ``half``: half of that sustained live rate; ``half-backlog``: half
of (d)'s median events/s, the old definition): our worker alone at that offered load, event
produced (with event_time = now) -> prediction read by a consumer, and ``ad_request`` produced
-> its decision read, after a warm-up of at least 5 s that lasts until the worker has caught up
with the load (its backlog, events offered - processed, under a quarter second of input; at most
30 s more, else the printout says the window began with a backlog). The per-stage breakdown is the worker's own
``stream_stage_seconds`` histogram (fetch, queue, process, inflight, ack, settle; docs/worker.md,
"Latency") over the same window, and the prediction's Kafka timestamp (the worker's produce) ->
read from the records; the CPU per event of the worker, its ClickHouse server, the broker and the
bench's own producer and reader, and how many events the worker processed in how many batches.
``--variants d`` runs only the worker's throughput (to get the rate) before it.

With ``--scale-out``, each repeat also runs (d2): two ``stream worker`` processes in one consumer
group (their own RocksDB directories, one ClickHouse), events/s and CPU per event of both
processes together; the ratio (d2)/(d) is printed per repeat and for the medians. The same input
goes to a topic of its own once both are in the group (:func:`run_scaled`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator import SimConfig, generate  # noqa: E402
from stream.config import load_settings  # noqa: E402
from stream.kafka.embedded import EmbeddedKafka, free_port  # noqa: E402
from stream.kafka.io import produce, produce_blocking  # noqa: E402
from stream.kafka.topics import BANDIT_DECISIONS, PREDICTIONS, ensure_topics  # noqa: E402
from stream.tools.demo import bucket_quantile  # noqa: E402
from tests.support.models import register_recommendation, train_and_register  # noqa: E402

PARTITIONS = 4


@dataclass
class Sample:
    """One variant's run: events/s and CPU µs per event, between 10% and 90% of the input."""

    rate: float
    proc_us: float  # the variant's process
    broker_us: float
    other_us: float = 0.0  # the worker's ClickHouse server (not in the total)
    batches: str = ""  # the worker's scoring batches over the run: events per batch, why they closed

    @property
    def cpu_us(self) -> float:
        return self.proc_us + self.broker_us


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system, every thread) used so far by the live processes of ``pids``."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # not started yet, or gone
            total += _cpu_ticks(pid)
    return total / hz


def internal_behind(admin: AdminClient, c: Consumer, group: str, topic: str, frac: float) -> bool:
    """Whether ``group`` has committed less than ``frac`` of what was written to the other topics it
    consumes (its own repartition topics: a Quix app's article and bandit stages, the worker's
    article agent), so that work left queued there is not counted as done."""
    req = [ConsumerGroupTopicPartitions(group)]
    try:
        offsets = admin.list_consumer_group_offsets(req)[group].result(10).topic_partitions
    except KafkaException:
        return True
    done = end = 0
    for tp in offsets:
        if tp.topic != topic:
            done += max(tp.offset, 0)
            end += c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)[1]
    return done < frac * end


def committed_rate(
    bootstrap: str,
    group: str,
    topic: str,
    total: int,
    timeout_s: float,
    proc: Callable[[], list[int]],
    broker: list[int],
    other: Callable[[], list[int]] = list,
    to_end: bool = False,
) -> Sample:
    """Events/s and CPU per event between 10% and 90% of ``total`` committed by ``group``.

    The 90% mark also waits for 90% of what the group's internal topics hold to be committed
    (:func:`internal_behind`). ``proc``, ``broker``, ``other``: the pids whose CPU is counted
    (asked at each mark: a process may start late). ``to_end``: return only once everything is
    committed.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    marks: dict[float, tuple[float, float, float, float, int]] = {}
    deadline = time.monotonic() + timeout_s
    fracs = (0.1, 0.9, 1.0) if to_end else (0.1, 0.9)
    polls = 0
    try:
        while time.monotonic() < deadline and fracs[-1] not in marks:
            try:
                done = sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
            except KafkaException:  # e.g. NOT_COORDINATOR while the group coordinator moves: ask again
                time.sleep(0.2)
                continue
            polls += 1
            now = time.monotonic()
            for frac in fracs:
                if frac in marks or done < frac * total:
                    continue
                if frac > 0.1 and internal_behind(admin, c, group, topic, frac):
                    break
                marks[frac] = (now, cpu_s(proc()), cpu_s(broker), cpu_s(other()), polls)
            time.sleep(0.1)
    finally:
        c.close()
    if any(f not in marks for f in fracs):
        raise RuntimeError(f"group {group} did not get through the input in {timeout_s:.0f}s")
    (t0, p0, b0, o0, n0), (t1, p1, b1, o1, n1) = marks[0.1], marks[0.9]
    n = 0.8 * total
    if n0 == n1:  # both marks at one commit: the input is too small to measure
        return Sample(float("nan"), float("nan"), float("nan"), float("nan"))
    return Sample(n / (t1 - t0), (p1 - p0) / n * 1e6, (b1 - b0) / n * 1e6, (o1 - o0) / n * 1e6)


def raw_loop(bootstrap: str, topic: str, total: int, broker: list[int]) -> Sample:
    """(a): consume, produce each record to another topic, commit; events/s 10% -> 90%."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    c.subscribe([topic])
    out = f"raw-out-{uuid.uuid4().hex[:6]}"
    n = 0
    t10 = t90 = (0.0, 0.0, 0.0)
    while n < total:
        for msg in c.consume(1000, 1.0):
            if msg.error():
                continue
            produce_blocking(p, out, msg.value(), msg.key())
            n += 1
            if n == int(0.1 * total):
                t10 = (time.monotonic(), time.process_time(), cpu_s(broker))
            if n == int(0.9 * total):
                p.flush()
                t90 = (time.monotonic(), time.process_time(), cpu_s(broker))
        p.poll(0)
        c.commit(asynchronous=True)
    c.close()
    k = 0.8 * total
    return Sample(k / (t90[0] - t10[0]), (t90[1] - t10[1]) / k * 1e6, (t90[2] - t10[2]) / k * 1e6)


# --- the Quix peer's virtualenv -----------------------------------------------------------------
QUIX_DIR = ROOT / "bench" / "quix"
QUIX_VENV = ROOT / "var" / "venv-quix"


def quix_python() -> Path:
    """The Quix peer's interpreter: var/venv-quix, (re)built from bench/quix/requirements.txt when it changed.

    A virtualenv of its own: quixstreams pins confluent-kafka < 2.13 and pydantic < 2.14, below
    the project's. The project itself is not installed there: the peer puts the repository on
    ``sys.path`` and imports only pure modules.
    """
    req = QUIX_DIR / "requirements.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = QUIX_VENV / ".installed"
    python = QUIX_VENV / "bin" / "python"
    if stamp.exists() and stamp.read_text() == digest and python.exists():
        return python
    print(f"building {QUIX_VENV.relative_to(ROOT)} from {req.relative_to(ROOT)} (once; about a minute)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(QUIX_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    stamp.write_text(digest)
    return python


def run_process(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        cwd=cwd,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Latency:
    """One latency run: per output record, seconds from the event's production to its read."""

    rate: float
    seconds: float
    predictions: list[float]  # event produced (event_time = now) -> prediction read
    decisions: list[float]  # ad_request produced -> its decision read
    published_to_read: list[float]  # the prediction's own Kafka timestamp (the worker's produce) -> read
    stages: dict[str, list[tuple[float, float]]]  # the worker's stream_stage_seconds over the window: (le, count)
    proc_us: float  # CPU µs per event offered, of the worker (+ its ClickHouse server) and the broker
    broker_us: float
    chdb_us: float = 0.0  # of that worker figure, its ClickHouse server
    bench_us: float = 0.0  # the bench's own producer and reader (this process), not in the figures above
    processed: float = 0.0  # input events the worker processed in the window (stream_events_total)
    offered: int = 0  # events produced in the window
    batches: float = 0.0  # batches with rows to score in the window (stream_score_batch_size_rows_count)
    alone_broker_us: float = 0.0  # broker CPU per event with the bench's producer and reader alone (no worker)
    alone_bench_us: float = 0.0  # the bench's CPU per event then
    warmup: float = 0.0  # seconds of load before the window
    caught_up: bool = True  # the worker had caught up with the load when the window began
    trace: tuple[int, ...] = ()  # the worker's backlog (events offered - processed), each second of the warm-up


def stage_buckets(port: int) -> dict[str, list[tuple[float, float]]]:
    """The worker's ``stream_stage_seconds`` buckets per stage (cumulative counts, ``le`` ascending)."""
    from stream.testing import scrape_series

    out: dict[str, list[tuple[float, float]]] = {}
    for labels, value in scrape_series(port, "stream_stage_seconds_bucket"):
        out.setdefault(labels["stage"], []).append((float(labels["le"]), value))
    return {k: sorted(v) for k, v in out.items()}


def counters(port: int) -> tuple[float, float]:
    """The worker's input events processed so far and its scoring batches (those with rows)."""
    from stream.testing import scrape_series

    events = sum(v for _, v in scrape_series(port, "stream_events_total"))
    batches = sum(v for _, v in scrape_series(port, "stream_score_batch_size_rows_count"))
    return events, batches


def batch_summary(port: int) -> str:
    """Events per scoring batch and the batches' closing reasons so far (smaller batches under a
    backlog mean more table writes and per-batch work per event); empty if the metrics are gone."""
    from stream.testing import scrape_series

    try:
        events, batches = counters(port)
        closed = {labels["closed_by"]: v for labels, v in scrape_series(port, "stream_score_batches_total")}
    except Exception:  # an older revision without the counter, or the worker has stopped
        return ""
    why = " ".join(f"{k} {v / max(sum(closed.values()), 1):.0%}" for k, v in sorted(closed.items()) if v)
    return f"{events / max(batches, 1):.0f} ev/batch" + (f" ({why})" if why else "")


def wait_metrics(port: int, proc: subprocess.Popen[bytes], log: str, timeout_s: float = 90.0) -> None:
    """Wait until the worker's metrics answer (it has started; its group join follows)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            counters(port)
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the worker did not start within {timeout_s:.0f} s (log: {log})") from None
            time.sleep(0.2)


def own_cpu_s() -> float:
    """CPU seconds of this process (the bench's producer and reader threads)."""
    t = os.times()
    return t.user + t.system


def latency(
    bootstrap: str,
    work: Path,
    models: Path,
    events: list[dict],
    rate: float,
    seconds: float,
    broker: list[int],
    warmup_s: float = 5.0,
    profile: Path | None = None,
    extra_env: dict[str, str] | None = None,
    tree: Path | None = None,
    catchup_s: float = 30.0,
    caught_s: float = 0.25,
) -> Latency:
    """Our worker at ``rate`` events/s offered: seconds from produce (event_time = now) to output read.

    The load starts as soon as the worker's metrics answer (it then joins its group). The warm-up
    is left out: at least ``warmup_s`` of offered load (the worker's first batches, connections and
    caches), then until the worker has caught up with the load (its backlog, events offered minus
    events processed, ``stream_events_total``, is at most ``caught_s`` seconds of input), for at
    most ``catchup_s`` more seconds; if it never catches up, the window starts then and the
    printout says so. The ``seconds`` window follows; the worker's ``stream_stage_seconds`` and
    the CPU are read over the same window.
    ``profile``: py-spy samples the worker over that window into this file (collapsed stacks,
    threads holding the GIL), for :func:`print_profile`. ``tree``: run the worker of that source
    tree (``--baseline``) instead of this one.
    """
    from stream.kafka.embedded import free_port

    prefix = f"lat{uuid.uuid4().hex[:6]}."
    ensure_topics(bootstrap, load_settings(topic_prefix=prefix, topic_partitions=PARTITIONS))
    port = free_port()
    run_dir = work / prefix.rstrip(".")  # each latency run starts with empty state: its topics are new
    chdb = run_dir / "chdb"
    env = {
        "STREAM_KAFKA_BOOTSTRAP": bootstrap,
        "STREAM_TOPIC_PREFIX": prefix,
        "STREAM_WORKER_ID": f"lat-{prefix}",
        "STREAM_STATE_DIR": str(run_dir / "state"),
        "STREAM_CHDB_PATH": str(chdb),
        "STREAM_MODELS_DIR": str(models),
        "STREAM_WORKER_WEB_PORT": str(port),
        **(extra_env or {}),
        **({"PYTHONPATH": str(tree)} if tree is not None else {}),
    }
    got: dict[str, list[tuple[float, float, float]]] = {"predictions": [], "decisions": []}
    stop_at = [0.0]
    window = [float("inf")]  # event_time (s) from which outputs count

    def read() -> None:
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"lat-read-{prefix}",
                "auto.offset.reset": "latest",
                "fetch.wait.max.ms": 5,  # the reader is not the worker: it must not add its own wait
            }
        )
        c.subscribe([f"{prefix}{PREDICTIONS}", f"{prefix}{BANDIT_DECISIONS}"])
        while stop_at[0] == 0.0 or time.time() < stop_at[0] + 5:
            for msg in c.consume(500, 0.05):
                if msg.error():
                    continue
                now = time.time()
                t_event = orjson.loads(msg.value())["event_time"] / 1000
                if t_event >= window[0]:
                    kind = "decisions" if msg.topic().endswith(BANDIT_DECISIONS) else "predictions"
                    got[kind].append((now - t_event, now - msg.timestamp()[1] / 1000, t_event))
        c.close()

    reader = threading.Thread(target=read)
    reader.start()
    worker: subprocess.Popen[bytes] | None = None
    trace: list[int] = []  # the worker's backlog (events offered - processed), each second of the warm-up
    caught, began = False, 0.0
    try:
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        # The broker's CPU for the bench's own traffic: the producer at the same rate (to a topic
        # no one reads) and the idle reader, before the worker starts.
        scratch = f"{prefix}scratch"
        create_topics(bootstrap, [scratch])
        b0, o0, t0, j = cpu_s(broker), own_cpu_s(), time.time(), 0
        while time.time() - t0 < 5:
            while j < int((time.time() - t0) * rate):
                e = {**events[j % len(events)], "event_time": int(time.time() * 1000)}
                p.produce(scratch, key=e["user_id"].encode(), value=orjson.dumps(e))
                j += 1
            p.poll(0)
            time.sleep(0.002)
        p.flush()
        alone = ((cpu_s(broker) - b0) / max(j, 1) * 1e6, (own_cpu_s() - o0) / max(j, 1) * 1e6)
        worker = run_process(
            [sys.executable, "-m", "stream", "worker"], env, work / f"{run_dir.name}-worker.log", cwd=tree or ROOT
        )
        wait_metrics(port, worker, f"{run_dir.name}-worker.log")

        def mark() -> tuple[dict[str, list[tuple[float, float]]], float, float, float, float, tuple[float, float]]:
            """Where the run stands: the stage histogram, CPU (worker with its ClickHouse, broker,
            ClickHouse, this bench) and the worker's counters."""
            return (
                stage_buckets(port),
                cpu_s([worker.pid, *chdb_pids(chdb)]),
                cpu_s(broker),
                cpu_s(chdb_pids(chdb)),
                own_cpu_s(),
                counters(port),
            )

        start, i = time.time(), 0
        marks: list[tuple[dict[str, list[tuple[float, float]]], float, float, float, float, tuple[float, float]]] = []
        # The window starts once the worker keeps up: at least warmup_s of load, then until its
        # backlog (events offered - events processed) is under caught_s of input, at most
        # catchup_s more. Its start-up (group join, first batches, its ClickHouse server) would
        # otherwise leave a backlog that the window measures as latency.
        checked, began = start, float("inf")
        while time.time() - start < began + seconds:
            now = time.time()
            if not marks and now - checked >= 0.25:
                checked = now
                backlog = i - counters(port)[0]
                if len(trace) < int(now - start):  # one figure a second, for the printout
                    trace.append(int(backlog))
                late = now - start > warmup_s + catchup_s
                if now - start >= warmup_s and (backlog <= rate * caught_s or late):
                    caught = not late
                    began = now - start
                    window[0] = time.time()
                    marks.append(mark())
                    i0 = i
                    if profile is not None:
                        spy_cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker.pid)]
                        spy_cmd += ["--duration", str(int(seconds)), "--rate", "100", "--gil", "--format", "raw"]
                        spy = subprocess.Popen(
                            [*spy_cmd, "--output", str(profile), "--nonblocking"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
            due = int((time.time() - start) * rate)
            while i < due:
                e = {**events[i % len(events)], "event_time": int(time.time() * 1000)}
                if i >= len(events):  # the input again, as new events (not duplicates of the first pass)
                    e["event_id"] = f"{e['event_id'][:56]}~{i // len(events)}"
                p.produce(f"{prefix}session-events", key=e["user_id"].encode(), value=orjson.dumps(e))
                i += 1
            p.poll(0)
            time.sleep(0.002)
        end = mark()
        i1 = i
        p.flush()
        stop_at[0] = time.time()
        reader.join()
        marks.append(end)
    finally:
        stop_at[0] = stop_at[0] or time.time()
        reader.join()
        if worker is not None:
            stop(worker)
        stop_chdb(chdb)
    if profile is not None:
        with contextlib.suppress(NameError, subprocess.TimeoutExpired):
            spy.wait(30)
    (b0, p0, k0, h0, o0, (e0, n0)), (b1, p1, k1, h1, o1, (e1, n1)) = marks
    n = max(i1 - i0, 1)
    stages = {k: [(le, c - dict(b0.get(k, [])).get(le, 0.0)) for le, c in v] for k, v in b1.items()}
    return Latency(
        rate,
        seconds,
        [x[0] for x in got["predictions"]],
        [x[0] for x in got["decisions"]],
        [x[1] for x in got["predictions"]],
        stages,
        (p1 - p0) / n * 1e6,
        (k1 - k0) / n * 1e6,
        (h1 - h0) / n * 1e6,
        (o1 - o0) / n * 1e6,
        e1 - e0,
        n,
        n1 - n0,
        *alone,
        began,
        caught,
        tuple(trace),
    )


@dataclass
class Probe:
    """One step of :func:`sustained`: the worker at ``rate`` events/s offered for a while."""

    rate: float
    offered: int
    processed: float
    grew: float  # how much the worker's backlog (offered - processed) grew over the step, in events
    ok: bool
    proc_us: float  # CPU µs per event processed: the worker (+ its ClickHouse server), the broker
    broker_us: float


def sustained(
    bootstrap: str,
    work: Path,
    models: Path,
    events: list[dict],
    broker: list[int],
    hi: float,
    probes: int = 5,
    step_s: float = 10.0,
    extra_env: dict[str, str] | None = None,
) -> tuple[float, list[Probe]]:
    """The highest offered live rate the worker keeps up with, next to this bench's producer.

    One worker on topics of its own; the bench produces at a rate for ``step_s`` seconds at a time
    (each event as it is produced, as in :func:`latency`) and bisects between 0 and ``hi`` (the
    backlog drain rate): a rate is sustained when the worker's backlog (events offered minus
    events it processed, ``stream_events_total``) grows by less than half a second of input over
    the step. Before each step the worker catches up with the producer paused (at most 60 s). The
    first step, at a tenth of ``hi``, warms the worker up and is not counted. Returns the highest
    sustained rate (0 if none) and the steps.
    """
    from stream.kafka.embedded import free_port

    prefix = f"sus{uuid.uuid4().hex[:6]}."
    ensure_topics(bootstrap, load_settings(topic_prefix=prefix, topic_partitions=PARTITIONS))
    port = free_port()
    run_dir = work / prefix.rstrip(".")
    chdb = run_dir / "chdb"
    env = {
        "STREAM_KAFKA_BOOTSTRAP": bootstrap,
        "STREAM_TOPIC_PREFIX": prefix,
        "STREAM_WORKER_ID": f"sus-{prefix}",
        "STREAM_STATE_DIR": str(run_dir / "state"),
        "STREAM_CHDB_PATH": str(chdb),
        "STREAM_MODELS_DIR": str(models),
        "STREAM_WORKER_WEB_PORT": str(port),
        **(extra_env or {}),
    }
    worker = run_process([sys.executable, "-m", "stream", "worker"], env, work / f"{run_dir.name}-worker.log")
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    i = 0

    def offer(rate: float, seconds: float) -> None:
        nonlocal i
        start, i0 = time.time(), i
        while time.time() - start < seconds:
            due = i0 + int((time.time() - start) * rate)
            while i < due:
                e = {**events[i % len(events)], "event_time": int(time.time() * 1000)}
                if i >= len(events):
                    e["event_id"] = f"{e['event_id'][:56]}~{i // len(events)}"
                p.produce(f"{prefix}session-events", key=e["user_id"].encode(), value=orjson.dumps(e))
                i += 1
            p.poll(0)
            time.sleep(0.002)
        p.flush()

    def processed() -> float:
        return counters(port)[0]

    steps: list[Probe] = []
    best = 0.0
    try:
        deadline = time.monotonic() + 90
        while True:  # the worker's metrics answer once it runs; then its group join
            try:
                processed()
                break
            except OSError:
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(f"worker of {prefix} did not start (log: {run_dir.name}-worker.log)") from None
                time.sleep(0.5)
        time.sleep(10)
        lo, top = 0.0, hi
        for k in range(probes + 1):
            rate = hi / 10 if k == 0 else (lo + top) / 2
            caught = time.monotonic() + 60
            while i - processed() > 0 and time.monotonic() < caught:
                time.sleep(0.2)
            e0 = processed()
            c0, b0 = cpu_s([worker.pid, *chdb_pids(chdb)]), cpu_s(broker)
            lag0, n0 = i - e0, i
            offer(rate, step_s)
            e1 = processed()
            c1, b1 = cpu_s([worker.pid, *chdb_pids(chdb)]), cpu_s(broker)
            done = max(e1 - e0, 1.0)
            grew = (i - e1) - lag0
            ok = grew < 0.5 * rate
            if k == 0:
                continue  # the warm-up
            steps.append(Probe(rate, i - n0, e1 - e0, grew, ok, (c1 - c0) / done * 1e6, (b1 - b0) / done * 1e6))
            print(f"  sustained? {rate:,.0f} events/s offered: backlog grew by {grew:,.0f} events", flush=True)
            if ok:
                lo, best = rate, max(best, rate)
            else:
                top = rate
    finally:
        stop(worker)
        stop_chdb(chdb)
    return best, steps


def print_sustained(backlog: float, best: float, steps: list[Probe]) -> None:
    print(f"\nsustained live rate (bisection between 0 and (d)'s backlog rate {backlog:,.0f} events/s):")
    head = f"{'offered/s':>10} {'offered':>8} {'processed':>10} {'backlog grew':>13}"
    print(f"  {head} {'CPU µs/event worker + broker':>30}")
    for s in steps:
        print(
            f"  {s.rate:>10,.0f} {s.offered:>8,} {s.processed:>10,.0f} {s.grew:>13,.0f} "
            f"{s.proc_us:>18,.0f} + {s.broker_us:>7,.0f}   {'kept up' if s.ok else 'fell behind'}"
        )
    print(
        f"  maximum sustained rate: {best:,.0f} events/s live ({best / max(backlog, 1):.0%} of the backlog "
        f"drain rate {backlog:,.0f} events/s)"
    )


#: (label, frames any of which puts a sample in that group), first match wins: the worker's time by part
PROFILE_GROUPS = (
    ("producer poll thread (librdkafka delivery reports)", ("_poll (",)),
    ("batch processing (BatchProcessor.process)", ("stream/worker/processor.py",)),
    ("outputs: produce, sink, settle", ("stream/worker/publisher.py", "stream/clickhouse/")),
    ("article agent", ("agents/articles.py",)),
    ("table writes and changelogs (faust tables)", ("faust/tables", "rocksdb")),
    (
        "consumer: fetch, hand-off, streams",
        ("faust/transport", "aiokafka", "faust/streams", "transport.py", "kafka/fetch.py"),
    ),
    ("batching and agents", ("agents/batching.py", "agents/events.py", "faust/agents")),
)


def print_profile(path: Path, window: str = "the latency window") -> None:
    """Shares of the worker's GIL samples by part (py-spy's collapsed stacks in ``path``)."""
    if not path.exists():
        print(f"  (no profile: {path} missing)")
        return
    groups: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        label = "other (event loop, asyncio, mode)"
        for name, needles in PROFILE_GROUPS:
            if any(needle in f for f in frames for needle in needles):
                label = name
                break
        groups[label] = groups.get(label, 0) + n
    print(f"\nworker profile over {window} (py-spy, {total} GIL samples, {path}):")
    for label, n in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {label:48s} {n / max(total, 1):6.1%}")


def print_latencies(lats: list[tuple[str, Latency]], work: Path, profile: bool) -> None:
    for j, (extra, lat) in enumerate(lats):
        if extra:
            print(f"\n== worker: {extra}")
        print_latency(lat)
        if profile:
            print_profile(work / f"latency-profile-{j}.txt")


def print_latency(lat: Latency) -> None:
    """The latency table: end to end, per stage, the decisions."""

    def ms(xs: list[float], q: float) -> str:
        return f"{pct(xs, q) * 1000:,.0f}" if xs else "n/a"

    trace = ", ".join(f"{x:,}" for x in lat.trace)
    warm = (
        f"after a {lat.warmup:.1f} s warm-up, the worker caught up"
        if lat.caught_up
        else f"WITH A BACKLOG: the worker had not caught up after a {lat.warmup:.1f} s warm-up"
    )
    print(
        f"\nlatency at {lat.rate:,.0f} events/s offered for {lat.seconds:.0f} s ({warm}); "
        f"CPU µs per event: worker {lat.proc_us:,.0f} (of which its ClickHouse server {lat.chdb_us:,.0f}) "
        f"+ broker {lat.broker_us:,.0f}; the bench's producer and reader {lat.bench_us:,.0f}"
    )
    print(
        f"  the worker processed {lat.processed:,.0f} of the {lat.offered:,} events offered in the window "
        f"({lat.processed / max(lat.offered, 1):.0%}), in {lat.batches:,.0f} scoring batches "
        f"({lat.processed / max(lat.batches, 1):,.1f} events per batch)"
    )
    print(f"  the worker's backlog (events offered - processed) each second of the warm-up: {trace}")
    print(
        f"  without the worker (the bench's producer and reader alone, 5 s at the same rate): broker "
        f"{lat.alone_broker_us:,.0f} µs/event, the bench {lat.alone_bench_us:,.0f} µs/event"
    )
    print(f"  {'':44s} {'p50 ms':>8} {'p99 ms':>8} {'n':>8}")
    print(
        f"  {'event produced -> prediction read':44s} {ms(lat.predictions, 0.5):>8} "
        f"{ms(lat.predictions, 0.99):>8} {len(lat.predictions):>8}   target p99 <= 100"
    )
    print(
        f"  {'ad_request produced -> decision read':44s} {ms(lat.decisions, 0.5):>8} "
        f"{ms(lat.decisions, 0.99):>8} {len(lat.decisions):>8}   target p99 <= 50"
    )
    labels = {
        "fetch": "broker -> fetched (Kafka timestamp -> worker)",
        "queue": "fetched -> batch start",
        "process": "processing (batch start -> outputs queued)",
        "inflight": "  of which waiting for an in-flight slot",
        "ack": "publish -> acknowledged by Kafka",
        "settle": "publish -> batch committable (+ ClickHouse)",
    }
    for key, label in labels.items():
        b = lat.stages.get(key)
        if b:
            q50, q99 = (bucket_quantile(b, q) * 1000 for q in (0.5, 0.99))
            print(f"  {label:44s} {q50:>8,.1f} {q99:>8,.1f} {b[-1][1]:>8,.0f}   (per event, worker histogram)")
    print(
        f"  {'published (prediction timestamp) -> read':44s} {ms(lat.published_to_read, 0.5):>8} "
        f"{ms(lat.published_to_read, 0.99):>8} {len(lat.published_to_read):>8}   (ack + the reader's fetch)"
    )


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def settle(broker_pid: int | None, min_s: float, max_s: float = 120.0, quiet: float = 0.05) -> float:
    """Wait at least ``min_s``, then until the broker uses under ``quiet`` of a core over 2 s.

    After a variant the broker keeps working (log cleaning of the changelogs just written, segment
    rolls); the next variant would share the two cores with it. Returns the seconds waited.
    """
    start = time.monotonic()
    time.sleep(min_s)
    if broker_pid is None or not Path(f"/proc/{broker_pid}/stat").exists():
        return time.monotonic() - start
    hz = os.sysconf("SC_CLK_TCK")
    while time.monotonic() - start < max_s:
        before = _cpu_ticks(broker_pid)
        time.sleep(2.0)
        if (_cpu_ticks(broker_pid) - before) / hz / 2.0 < quiet:
            break
    return time.monotonic() - start


def orders(keys: list[str], r: int) -> tuple[str, ...]:
    """The variants' order in repeat ``r``: a rotation by ``r // 2``, reversed in odd repeats.

    Over ``2 * len(keys)`` repeats each variant runs first, and each follows each other one
    (for three variants: all six orders). Rotating by ``r`` instead cancels out for two variants:
    the second rotation reversed is the first order again.

    >>> [orders(["d", "d0"], r) for r in range(2)]
    [('d', 'd0'), ('d0', 'd')]
    >>> sorted(orders(["a", "b", "c"], r) for r in range(6)) == sorted(__import__("itertools").permutations("abc"))
    True
    """
    k = (r // 2) % len(keys)
    order = keys[k:] + keys[:k]
    return tuple(reversed(order) if r % 2 else order)


NAMES = {
    "a": "raw confluent-kafka loop (ceiling)",
    "b": "trivial faust agent (framework ceiling)",
    "c": "naive faust agent (baseline)",
    "d": "our worker",
    "c'": "naive agent, uvloop + worker's GC tuning",
    "q": "Quix peer, batched scoring in a sink",
    "q+": "Quix peer, + state written once per checkpoint",
    "f": "compute floor: BatchProcessor in memory",
    "d-": "our worker, event archive and monitoring off",
    "d0": "our worker at the --baseline revision",
    "d2": "our worker, two processes in one group",
}


@dataclass
class Outputs:
    """What a variant published: predictions and decisions (read back for the check)."""

    predictions: list[dict[str, Any]]
    decisions: list[dict[str, Any]]


def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{uuid.uuid4().hex}"})
    try:
        return {
            (t, p): c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
            for t in topics
            for p in range(PARTITIONS)
        }
    finally:
        c.close()


def read_from(bootstrap: str, starts: dict[tuple[str, int], int]) -> dict[str, list[dict[str, Any]]]:
    """Per topic, the JSON values from ``starts`` up to the end offsets of now."""
    ends = end_offsets(bootstrap, sorted({t for t, _ in starts}))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}", "enable.auto.commit": False})
    out: dict[str, list[dict[str, Any]]] = {t: [] for t, _ in starts}
    todo = {tp for tp in starts if ends[tp] > starts[tp]}
    c.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in todo])
    deadline = time.monotonic() + 120
    try:
        while todo and time.monotonic() < deadline:
            for msg in c.consume(1000, 1.0):
                tp = (msg.topic(), msg.partition())
                if msg.error() or tp not in todo:
                    continue
                out[tp[0]].append(orjson.loads(msg.value()))
                if msg.offset() + 1 >= ends[tp]:
                    todo.discard(tp)
    finally:
        c.close()
    if todo:
        raise RuntimeError(f"could not read the outputs of {sorted(todo)} within 120 s")
    return out


def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept until the futures resolve
    for f in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        f.result(30)


def stop_chdb(chdb: Path) -> None:
    """Stop the embedded ClickHouse server a latency or sustained-rate run's worker started.

    It would stay for its idle time (merging its parts) and take CPU from the runs after it.
    """
    from stream.clickhouse import local_server

    if chdb.exists():
        local_server.stop(chdb)


def chdb_pids(chdb: Path) -> list[int]:
    """The worker's embedded ClickHouse server (stream/clickhouse/local_server.py), once it runs."""
    try:
        return [int(json.loads((chdb / "local-server.json").read_text())["pid"])]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return []


def checkout(rev: str, work: Path) -> Path:
    """The tree of git revision ``rev`` (for (d0)), exported into ``work``."""
    tree = work / f"baseline-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


#: --worker-env: settings of this tree's worker in every run (not (d0)'s)
WORKER_ENV: dict[str, str] = {}
#: --profile-backlog: where the first repeat's (d) worker is sampled while it drains the backlog
BACKLOG_PROFILE: Path | None = None


def sample_backlog(port: int, worker: subprocess.Popen[bytes], out: Path, after: int = 5000, seconds: int = 10) -> None:
    """py-spy on ``worker`` for ``seconds`` (GIL samples at 100 Hz, into ``out``), from when it has
    processed ``after`` events: the middle of the bench's backlog, past its start-up."""

    def run() -> None:
        while worker.poll() is None:
            try:
                if counters(port)[0] >= after:
                    break
            except Exception:  # metrics not up yet
                pass
            time.sleep(0.2)
        else:
            return
        spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker.pid), "--duration"]
        spy += [str(seconds), "--rate", "100", "--gil", "--format", "raw", "--output", str(out), "--nonblocking"]
        subprocess.run(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    threading.Thread(target=run, name="backlog-profile", daemon=True).start()


def run_variant(
    key: str,
    r: int,
    bootstrap: str,
    topic: str,
    total: int,
    work: Path,
    models: Path,
    broker: list[int],
    check: bool,
    baseline: Path | None = None,
) -> tuple[Sample, Outputs | None]:
    """Events/s and CPU per event of variant ``key`` in a fresh consumer group; with ``check`` (for
    the variants that publish) it runs to the end of the input and its outputs are read back."""
    if key == "f":
        return run_floor(work, models, check)
    other: Callable[[], list[int]] = list
    outputs: dict[tuple[str, int], int] = {}
    if key in ("b", "c", "c'"):
        mode = {"b": "forward", "c": "naive", "c'": "naive-tuned"}[key]
        group = f"{mode}-{r}-{uuid.uuid4().hex[:6]}"
        cmd = [
            sys.executable,
            "bench/faust_baselines.py",
            mode,
            bootstrap,
            topic,
            f"{group}-out",
            group,
            str(work / group),
            str(models),
        ]
        env: dict[str, str] = {}
        check = False
    elif key in ("q", "q+"):
        group = f"quix{'-wb' if key == 'q+' else ''}-{r}-{uuid.uuid4().hex[:6]}"
        names = [f"{group}-predictions", f"{group}-decisions"]
        create_topics(bootstrap, names)
        outputs = {(n, p): 0 for n in names for p in range(PARTITIONS)}
        cmd = [
            str(quix_python()),
            "bench/quix/peer.py",
            "checkpoint" if key == "q+" else "per-event",
            bootstrap,
            topic,
            f"{group}-",
            group,
            str(work / group),
            str(models),
        ]
        env = {}
    else:
        group = f"bench-worker-{r}-{uuid.uuid4().hex[:6]}"
        cmd = [sys.executable, "-m", "stream", "worker"]
        env = {
            "STREAM_KAFKA_BOOTSTRAP": bootstrap,
            "STREAM_TOPIC_PREFIX": "bench.",
            "STREAM_WORKER_ID": group,
            "STREAM_STATE_DIR": str(work / group),
            "STREAM_CHDB_PATH": str(work / f"{group}-chdb"),
            "STREAM_MODELS_DIR": str(models),
            "STREAM_WORKER_WEB_PORT": str(port := free_port()),
            "STREAM_TOPIC_PARTITIONS": str(PARTITIONS),
        }
        if key == "d-":
            env["STREAM_ARCHIVE_EVENTS"] = "false"
            env["STREAM_MONITORING"] = "false"
        if key == "d0":
            assert baseline is not None
            env["PYTHONPATH"] = str(baseline)
        else:
            env.update(WORKER_ENV)
        chdb = work / f"{group}-chdb"
        other = lambda: chdb_pids(chdb)  # noqa: E731
        if check:  # every run writes the same output topics: this one's start where they end now
            outputs = end_offsets(bootstrap, [f"bench.{PREDICTIONS}", f"bench.{BANDIT_DECISIONS}"])
    procs = [run_process(cmd, env, work / f"{group}.log", cwd=baseline if key == "d0" and baseline else ROOT)]
    if key == "d" and r == 0 and BACKLOG_PROFILE is not None:
        sample_backlog(port, procs[0], BACKLOG_PROFILE)
    try:
        sample = committed_rate(
            bootstrap,
            group,
            topic,
            total,
            timeout_s=900,
            proc=lambda: [p.pid for p in procs],
            broker=broker,
            other=other,
            to_end=check,
        )
        if key in ("d", "d-", "d0"):
            sample.batches = batch_summary(port)
    finally:
        for p in procs:
            stop(p)
        if key in ("d", "d-", "d0"):
            stop_chdb(work / f"{group}-chdb")
    if not check:
        return sample, None
    got = read_from(bootstrap, outputs)
    preds = [v for t, vs in got.items() if t.endswith(PREDICTIONS) for v in vs]
    decs = [v for t, vs in got.items() if t.endswith("decisions") for v in vs]
    return sample, Outputs(preds, decs)


def run_scaled(
    r: int, bootstrap: str, payloads: list[tuple[bytes, bytes]], work: Path, models: Path, broker: list[int]
) -> Sample:
    """(d2): two worker processes in one group, events/s and CPU per event of both together.

    The input goes to a topic of its own once both processes are members of the group and it is
    stable, so that the measured window holds no join of the second worker (a rebalance and its
    recovery): what two workers sustain, not how fast they start.
    """
    from confluent_kafka import ConsumerGroupState

    prefix = f"scale{r}{uuid.uuid4().hex[:6]}."
    ensure_topics(bootstrap, load_settings(topic_prefix=prefix, topic_partitions=PARTITIONS))
    topic = f"{prefix}session-events"
    group = f"bench-scale-{r}-{uuid.uuid4().hex[:6]}"
    chdb = work / f"{group}-chdb"
    env = {
        "STREAM_KAFKA_BOOTSTRAP": bootstrap,
        "STREAM_TOPIC_PREFIX": prefix,
        "STREAM_WORKER_ID": group,
        "STREAM_STATE_DIR": str(work / group),
        "STREAM_CHDB_PATH": str(chdb),
        "STREAM_MODELS_DIR": str(models),
        "STREAM_WORKER_WEB_PORT": "0",
        "STREAM_TOPIC_PARTITIONS": str(PARTITIONS),
        **WORKER_ENV,
    }
    cmd = [sys.executable, "-m", "stream", "worker"]
    procs = [run_process(cmd, {**env, "STREAM_WORKER_INSTANCE": str(i)}, work / f"{group}-{i}.log") for i in (1, 2)]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                desc = admin.describe_consumer_groups([group])[group].result(10)
                if desc.state == ConsumerGroupState.STABLE and len(desc.members) == 2:
                    break
            except KafkaException:
                pass  # the group does not exist yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"the two workers of {group} did not form a stable group in 180 s")
            time.sleep(0.5)
        time.sleep(3)  # faust's recovery of the (empty) tables after the assignment
        produce(bootstrap, topic, payloads)
        return committed_rate(
            bootstrap,
            group,
            topic,
            len(payloads),
            timeout_s=900,
            proc=lambda: [p.pid for p in procs],
            broker=broker,
            other=lambda: chdb_pids(chdb),
        )
    finally:
        for p in procs:
            stop(p)


def run_floor(work: Path, models: Path, check: bool) -> tuple[Sample, Outputs | None]:
    """(f): bench/floor.py over the records file written by :func:`main`."""
    keep = work / "floor-outputs.jsonl"
    cmd = [sys.executable, "bench/floor.py", str(work / "records.jsonl"), str(models)] + ([str(keep)] if check else [])
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
    fig = json.loads(res.stdout.decode().strip().splitlines()[-1])
    sample = Sample(fig["events"] / fig["seconds"], fig["cpu_s"] / fig["events"] * 1e6, 0.0)
    if not check:
        return sample, None
    rows = [orjson.loads(line) for line in keep.read_bytes().splitlines() if line]
    return sample, Outputs([x for x in rows if "prediction_id" in x], [x for x in rows if "decision_id" in x])


def dump_records(bootstrap: str, topic: str, total: int, path: Path) -> None:
    """The input topic as JSON lines [partition, offset, key, value], for the floor."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"dump-{uuid.uuid4().hex}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    n = 0
    with path.open("wb") as f:
        while n < total:
            for msg in c.consume(1000, 1.0):
                if msg.error():
                    continue
                key = msg.key().decode() if msg.key() is not None else None
                f.write(orjson.dumps([msg.partition(), msg.offset(), key, msg.value().decode()]) + b"\n")
                n += 1
    c.close()


def compare(ref: Outputs, other: Outputs) -> tuple[bool, list[str]]:
    """Does ``other`` publish what the worker (``ref``) does? Lines to print, and the verdict.

    Exact: counts and ids of predictions (per model) and decisions, churn and engagement scores
    within 1e-9. Reported only: click scores and the decisions' arms (timing-dependent reads).
    """
    ok, lines = True, []
    for name in sorted({p["model_name"] for p in ref.predictions + other.predictions}):
        a = {p["prediction_id"]: p["score"] for p in ref.predictions if p["model_name"] == name}
        b = {p["prediction_id"]: p["score"] for p in other.predictions if p["model_name"] == name}
        common = a.keys() & b.keys()
        diff = max((abs(a[k] - b[k]) for k in common), default=0.0)
        same = sum(abs(a[k] - b[k]) <= 1e-9 for k in common)
        exact = name != "click"
        good = len(a) == len(b) == len(common) and (diff <= 1e-9 or not exact)
        ok = ok and good
        lines.append(
            f"{name:10s} {len(a):>6} vs {len(b):>6}, ids in both {len(common):>6}, max |diff| {diff:.1e}, "
            f"{same / max(len(common), 1):6.1%} within 1e-9"
            + ("" if exact else " (article popularity as folded: not required)")
            + ("" if good else "  <-- MISMATCH")
        )
    da = {d["decision_id"]: d["placement"] for d in ref.decisions}
    db = {d["decision_id"]: d["placement"] for d in other.decisions}
    common = da.keys() & db.keys()
    good = len(da) == len(db) == len(common)
    ok = ok and good
    arms = sum(da[k] == db[k] for k in common) / max(len(common), 1)
    lines.append(
        f"{'decisions':10s} {len(da):>6} vs {len(db):>6}, ids in both {len(common):>6}, same arm {arms:6.1%} "
        "(posterior snapshot timing: not required)" + ("" if good else "  <-- MISMATCH")
    )
    return ok, lines


def env_pairs(text: str) -> dict[str, str]:
    """``K=V[,K=V]`` as a dict."""
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


def paired(results: dict[str, list[Any]], a: str, b: str) -> str:
    """(a)/(b) per repeat, events/s and CPU per event, and the medians of those ratios.

    Each repeat runs the two variants minutes apart at most: the ratio within a repeat cancels
    most of a shared machine's drift, which the ratio of the two medians does not.
    """
    rates = [x.rate / y.rate for x, y in zip(results[a], results[b], strict=True) if y.rate > 0]
    cpus = [x.cpu_us / y.cpu_us for x, y in zip(results[a], results[b], strict=True) if y.cpu_us > 0]
    if not rates or not cpus:
        return "n/a"
    return (
        f"per repeat: events/s {', '.join(f'{r:.2f}' for r in rates)} (median {statistics.median(rates):.2f}); "
        f"CPU/event {', '.join(f'{c:.2f}' for c in cpus)} (median {statistics.median(cpus):.2f})"
    )


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)]


def rate_arg(text: str) -> str:
    """``--rate``: events/s (a positive number), ``half``, ``half-backlog`` or ``off``."""
    if text in ("half", "half-backlog", "off"):
        return text
    try:
        if float(text) > 0:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected events/s (a positive number), 'half', 'half-backlog' or 'off'"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--rate",
        type=rate_arg,
        default="half",
        help="offered load of the latency run: events/s, 'half' (half of the highest live rate the worker "
        "sustains, found by bisection in this run), 'half-backlog' (half of (d)'s median events/s draining "
        "the preloaded input) or 'off' (no latency run)",
    )
    ap.add_argument("--probes", type=int, default=5, help="bisection steps for the sustained live rate (--rate half)")
    ap.add_argument("--probe-seconds", type=float, default=10.0, help="seconds offered per bisection step")
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument(
        "--latency-env",
        action="append",
        metavar="K=V[,K=V]",
        help="run the latency run (again) with these worker settings, e.g. STREAM_SCORE_BATCH_MS=10; repeatable",
    )
    ap.add_argument(
        "--worker-env",
        action="append",
        metavar="K=V",
        help="a setting of this tree's worker in every run, (d), (d-), (d2) and the latency runs (not (d0)), "
        "e.g. STREAM_KAFKA_FETCH=librdkafka; repeatable",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample the worker with py-spy during the latency run and print where its time goes",
    )
    ap.add_argument(
        "--profile-backlog",
        action="store_true",
        help="sample (d)'s worker with py-spy for 10 s while it drains the backlog (first repeat) and print "
        "where its time goes",
    )
    ap.add_argument(
        "--variants",
        default="b,c,d",
        help="which of the framework variants to run, comma-separated (of b, c, d), or none (with a numeric "
        "--rate: the latency runs alone, with --latency-baseline also (d0)'s); the flags add others",
    )
    ap.add_argument(
        "--scale-out",
        action="store_true",
        help="also run (d2): two worker processes in one group; prints events/s for one and two and the ratio",
    )
    ap.add_argument(
        "--tuned-naive",
        action="store_true",
        help="also run (c') = (c) with uvloop and the worker's GC tuning, last in each repeat",
    )
    ap.add_argument(
        "--quix",
        action="store_true",
        help="also run the Quix Streams peer, (q) and (q+) (bench/quix/peer.py, own virtualenv)",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also run (f), the worker's BatchProcessor over the records in memory (bench/floor.py)",
    )
    ap.add_argument(
        "--no-check",
        action="store_true",
        help="skip the check that the variants publish the worker's predictions (first repeat)",
    )
    ap.add_argument(
        "--pause",
        type=float,
        default=5.0,
        help="idle seconds before each variant, after which it waits for a quiet broker",
    )
    ap.add_argument(
        "--archive-off", action="store_true", help="also run (d-): the worker without its event archive and monitoring"
    )
    ap.add_argument("--baseline", metavar="REV", help="also run (d0): the worker at git revision REV")
    ap.add_argument(
        "--latency-baseline",
        action="store_true",
        help="with --baseline: also run each latency run with (d0)'s worker, after this tree's",
    )
    args = ap.parse_args()
    for kv in args.worker_env or []:
        if "=" not in kv:
            ap.error(f"--worker-env {kv!r}: expected K=V")
        key, value = kv.split("=", 1)
        WORKER_ENV[key] = value

    if args.quix:
        quix_python()  # build its virtualenv before anything is measured
    events = list(generate(SimConfig(n_users=args.users, days=args.days, seed=7)).iter_events())
    total = len(events)
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    models = work / "models"
    train_and_register(models, events[: min(total, 30_000)], seed=1)
    register_recommendation(models, events[: min(total, 30_000)], seed=1)  # ranked at each session_start
    payloads = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    print(f"input: {total} simulated events ({args.users} users x {args.days} days), {PARTITIONS} partitions")
    base = [k.strip() for k in args.variants.split(",") if k.strip() and k.strip() != "none"]
    if any(k not in ("b", "c", "d") for k in base):
        ap.error(f"--variants {args.variants!r}: expected a comma-separated list of b, c, d, or none")
    if (args.rate in ("half", "half-backlog") or args.scale_out or args.profile_backlog) and "d" not in base:
        base.append("d")
    global BACKLOG_PROFILE
    BACKLOG_PROFILE = work / "backlog-profile.txt" if args.profile_backlog else None
    keys = (
        base
        + (["q", "q+"] if args.quix else [])
        + (["f"] if args.floor else [])
        + (["d-"] if args.archive_off else [])
        + (["d0"] if args.baseline else [])
        + (["d2"] if args.scale_out else [])
    )
    baseline = checkout(args.baseline, work) if args.baseline else None
    results: dict[str, list[Sample]] = {k: [] for k in ["a", *keys] + (["c'"] if args.tuned_naive else [])}
    checks: dict[str, Outputs] = {}
    with EmbeddedKafka(workdir=work / "kafka") as broker:
        bootstrap = broker.bootstrap
        broker_pids = [broker.pid] if broker.pid is not None else []
        settings = load_settings(topic_prefix="bench.", topic_partitions=PARTITIONS)
        ensure_topics(bootstrap, settings)
        topic = "bench.session-events"
        produce(bootstrap, topic, payloads)
        if args.floor:
            dump_records(bootstrap, topic, total, work / "records.jsonl")
        for r in range(args.repeats if base else 0):  # --variants none: the latency runs alone
            results["a"].append(raw_loop(bootstrap, topic, total, broker_pids))
            # Vary the order, and start each variant on a quiet broker: right after the naive
            # variant the broker compacts its changelog, which measured ~20 % off the next variant.
            order = orders(keys, r) + (("c'",) if args.tuned_naive else ())
            waited = []
            for key in order:
                waited.append(settle(broker.pid, args.pause))
                check = r == 0 and not args.no_check and key not in ("d-", "d0", "d2")
                if key == "d2":
                    sample, out = run_scaled(r, bootstrap, payloads, work, models, broker_pids), None
                else:
                    sample, out = run_variant(
                        key,
                        r,
                        bootstrap,
                        topic,
                        total,
                        work,
                        models,
                        broker_pids,
                        check=check,
                        baseline=baseline,
                    )
                results[key].append(sample)
                if out is not None:
                    checks[key] = out
            print(
                f"repeat {r + 1} (order {'-'.join(order)}, settled {'/'.join(f'{w:.0f}' for w in waited)} s): "
                + ", ".join(
                    f"({k}) {v[-1].rate:,.0f}/s {v[-1].cpu_us:,.0f} µs"
                    + (f" [{v[-1].batches}]" if v[-1].batches else "")
                    for k, v in results.items()
                ),
                flush=True,
            )
        lats: list[tuple[str, Latency]] = []
        live: tuple[float, float, list[Probe]] | None = None
        if args.rate != "off":
            if args.rate == "half":
                backlog = statistics.median(s.rate for s in results["d"])
                settle(broker.pid, args.pause)
                best, steps = sustained(
                    bootstrap, work, models, events, broker_pids, backlog, args.probes, args.probe_seconds
                )
                live = (backlog, best, steps)
                rate = (best or min(s.rate for s in steps)) / 2
            elif args.rate == "half-backlog":
                rate = statistics.median(s.rate for s in results["d"]) / 2
            else:
                rate = float(args.rate)
            trees: list[tuple[str, Path | None]] = [("", None)]
            if args.latency_baseline and baseline is not None:
                trees.append((f"(d0) {args.baseline}", baseline))
            runs = [(extra, tree) for extra in args.latency_env or [""] for tree in trees]
            for j, (extra, (label, tree)) in enumerate(runs):
                settle(broker.pid, args.pause)
                profile = work / f"latency-profile-{j}.txt" if args.profile else None
                env_extra = {
                    **(WORKER_ENV if tree is None else {}),
                    **env_pairs(extra),
                }
                lat = latency(
                    bootstrap,
                    work,
                    models,
                    events,
                    rate,
                    args.latency_seconds,
                    broker_pids,
                    profile=profile,
                    extra_env=env_extra,
                    tree=tree,
                )
                lats.append((" ".join(x for x in (label, extra) if x), lat))

    if not base:
        print_latencies(lats, work, args.profile)
        print(f"logs: {work}")
        return
    med = {k: statistics.median(s.rate for s in v) for k, v in results.items()}
    cpu = {k: statistics.median(s.cpu_us for s in v) for k, v in results.items()}
    print(
        f"\nsustained events/s and CPU µs per event, median of {args.repeats} (10% -> 90% of {total} events "
        "committed; CPU of the variant's process + the broker's):"
    )
    print(f"       {'variant':48s} {'events/s':>10} {'CPU µs/event':>13} {'= process':>10} {'+ broker':>9}")
    for k in med:
        proc = statistics.median(s.proc_us for s in results[k])
        brk = statistics.median(s.broker_us for s in results[k])
        label = f"({k})".ljust(5)
        print(f"  {label}{NAMES[k]:48s} {med[k]:>10,.0f} {cpu[k]:>13,.0f} {proc:>10,.0f} {brk:>9,.0f}")
    chdb = statistics.median(s.other_us for s in results["d"])
    print(f"  (d)'s embedded ClickHouse server, not in its figures: {chdb:,.0f} µs/event")
    print()
    if "c" in med:
        print(f"  (d)/(c) = {med['d'] / med['c']:.2f}   target >= 5")
    if "b" in med:
        print(f"  (d)/(b) = {med['d'] / med['b']:.2f}   target >= 0.5")
    print(f"  (d)/(a) = {med['d'] / med['a']:.2f}")
    if "d2" in med:
        print(
            f"  scale-out: one worker {med['d']:,.0f} events/s ({cpu['d']:,.0f} µs/event), two workers in one "
            f"group {med['d2']:,.0f} events/s ({cpu['d2']:,.0f} µs/event): (d2)/(d) = {ratio(med['d2'], med['d'])}"
            f", per repeat {', '.join(ratio(a.rate, b.rate) for a, b in zip(results['d2'], results['d'], strict=True))}"
        )
    if "c'" in med:
        tuned = med["c'"]
        print(f"  (d)/(c') = {med['d'] / tuned:.2f}   (c) with the worker's process settings")
    for q in ("q", "q+"):
        if q in med:
            print(
                f"  (d)/({q}) = {ratio(med['d'], med[q])} events/s, target >= 1.5;   CPU/event (d)/({q}) = "
                f"{ratio(cpu['d'], cpu[q])}, target <= 0.67"
            )
    if "f" in med:
        print(
            f"  (d)/(f) = {ratio(med['d'], med['f'])} events/s, target >= 0.5;   CPU/event (f)/(d) = "
            f"{ratio(cpu['f'], cpu['d'])}"
        )
    if "d-" in med:
        print(
            f"  (d)/(d-) = {ratio(med['d'], med['d-'])} events/s;   CPU/event (d)/(d-) = {ratio(cpu['d'], cpu['d-'])}"
            "   (the cost of the event archive and monitoring, goal <= 10 %)"
        )
        print(f"      {paired(results, 'd', 'd-')}")
    if "d0" in med:
        # with (d-), the like-for-like row: the baseline may predate the archive and monitoring
        mine, what = ("d-", "this code, archive + monitoring off") if "d-" in med else ("d", "this code")
        print(
            f"  ({mine})/(d0) = {ratio(med[mine], med['d0'])} events/s;   CPU/event ({mine})/(d0) = "
            f"{ratio(cpu[mine], cpu['d0'])}   ({what}, vs {args.baseline})"
        )
        print(f"      {paired(results, mine, 'd0')}")
    if BACKLOG_PROFILE is not None:
        print_profile(BACKLOG_PROFILE, "(d), first repeat, 10 s of the backlog")
    if checks:
        print("\ncheck, first repeat: each variant's outputs vs the worker's (d), whole input")
        verdicts = []
        for k, out in checks.items():
            if k == "d":
                continue
            ok, lines = compare(checks["d"], out)
            verdicts.append(ok)
            print(f"  ({k}) {'PASS' if ok else 'FAIL'}")
            for line in lines:
                print(f"      {line}")
    if live is not None:
        print_sustained(*live)
    print_latencies(lats, work, args.profile)
    print(f"logs: {work}")
    if checks and not all(verdicts):
        sys.exit(1)


if __name__ == "__main__":
    main()

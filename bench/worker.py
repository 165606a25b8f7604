"""Worker throughput and latency, side by side with three baselines, on the embedded broker.

    python bench/worker.py [--users 600] [--days 10] [--repeats 2] [--rate 2000] [--tuned-naive]

All variants consume the same preloaded topic of simulated events (4 partitions):

  (a) raw confluent-kafka consume-and-produce loop (the ceiling),
  (b) a trivial faust agent that forwards events (the framework's ceiling),
  (c) a naive faust agent: per-event RocksDB table update and per-event predict (the baseline),
  (d) our worker (python -m stream worker).

With ``--tuned-naive``, each repeat also runs (c') = (c) with the worker's process settings
(uvloop and the GC tuning of stream/worker/tuning.py), last: what those settings alone give the baseline.

Each repeat runs (b), (c) and (d) in another order (each runs first, and each follows each other
one), and each starts only once the broker is quiet again (it compacts the changelogs a variant
wrote; the naive one writes one record per event).

Throughput is measured from the consumer group's committed offsets (10% -> 90% of the input),
so start-up and rebalancing are excluded. Latency: our worker alone, at a fixed offered load,
event produced (with event_time = now) -> prediction read by a consumer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator import SimConfig, generate  # noqa: E402
from stream.config import load_settings  # noqa: E402
from stream.kafka.embedded import EmbeddedKafka  # noqa: E402
from stream.kafka.io import produce, produce_blocking  # noqa: E402
from stream.kafka.topics import ensure_topics  # noqa: E402
from tests.support.models import train_and_register  # noqa: E402

PARTITIONS = 4


def committed_rate(bootstrap: str, group: str, topic: str, total: int, timeout_s: float) -> float:
    """Events/s between 10% and 90% of ``total`` committed by ``group``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    marks: dict[float, float] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                done = sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
            except KafkaException:  # e.g. NOT_COORDINATOR while the group coordinator moves: ask again
                time.sleep(0.2)
                continue
            now = time.monotonic()
            for frac in (0.1, 0.9):
                if frac not in marks and done >= frac * total:
                    marks[frac] = now
            if 0.9 in marks:
                break
            time.sleep(0.1)
    finally:
        c.close()
    if 0.9 not in marks or 0.1 not in marks:
        raise RuntimeError(f"group {group} did not get through the input in {timeout_s:.0f}s")
    return 0.8 * total / max(marks[0.9] - marks[0.1], 1e-9)


def raw_loop(bootstrap: str, topic: str, total: int) -> float:
    """(a): consume, produce each record to another topic, commit; events/s 10% -> 90%."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    c.subscribe([topic])
    out = f"raw-out-{uuid.uuid4().hex[:6]}"
    n, t10, t90 = 0, 0.0, 0.0
    while n < total:
        for msg in c.consume(1000, 1.0):
            if msg.error():
                continue
            produce_blocking(p, out, msg.value(), msg.key())
            n += 1
            if n == int(0.1 * total):
                t10 = time.monotonic()
            if n == int(0.9 * total):
                p.flush()
                t90 = time.monotonic()
        p.poll(0)
        c.commit(asynchronous=True)
    c.close()
    return 0.8 * total / (t90 - t10)


def run_process(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def latency(bootstrap: str, work: Path, models: Path, events: list[dict], rate: float, seconds: float) -> list[float]:
    """Our worker at ``rate`` events/s: seconds from produce (event_time = now) to prediction read."""
    prefix = f"lat{uuid.uuid4().hex[:6]}."
    ensure_topics(bootstrap, load_settings(topic_prefix=prefix, topic_partitions=PARTITIONS))
    env = {"STREAM_KAFKA_BOOTSTRAP": bootstrap, "STREAM_TOPIC_PREFIX": prefix, "STREAM_WORKER_ID": f"lat-{prefix}",
           "STREAM_STATE_DIR": str(work / "lat-state"), "STREAM_CHDB_PATH": str(work / "lat-chdb"),
           "STREAM_MODELS_DIR": str(models), "STREAM_WORKER_WEB_PORT": "0"}
    worker = run_process([sys.executable, "-m", "stream", "worker"], env, work / "latency-worker.log")
    lat: list[float] = []
    stop_at = [0.0]

    def read() -> None:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-read-{prefix}", "auto.offset.reset": "latest"})
        c.subscribe([f"{prefix}predictions"])
        while stop_at[0] == 0.0 or time.time() < stop_at[0] + 5:
            for msg in c.consume(500, 0.2):
                if not msg.error():
                    lat.append(time.time() - orjson.loads(msg.value())["event_time"] / 1000)
        c.close()

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(15)  # worker start-up and group join
    lat.clear()
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    start, i = time.time(), 0
    while time.time() - start < seconds:
        due = int((time.time() - start) * rate)
        while i < due and i < len(events):
            e = {**events[i], "event_time": int(time.time() * 1000)}
            p.produce(f"{prefix}session-events", key=e["user_id"].encode(), value=orjson.dumps(e))
            i += 1
        p.poll(0)
        time.sleep(0.005)
    p.flush()
    stop_at[0] = time.time()
    reader.join()
    stop(worker)
    return lat


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


#: Orders of (b), (c), (d) per repeat: each variant runs first, and each follows each other one.
ORDERS = (("b", "c", "d"), ("d", "c", "b"), ("c", "b", "d"), ("d", "b", "c"), ("c", "d", "b"), ("b", "d", "c"))


def run_variant(key: str, r: int, bootstrap: str, topic: str, total: int, work: Path, models: Path) -> float:
    """Events/s of variant ``key`` (b, c or d) in a fresh consumer group."""
    if key in ("b", "c", "c'"):
        mode = {"b": "forward", "c": "naive", "c'": "naive-tuned"}[key]
        group = f"{mode}-{r}-{uuid.uuid4().hex[:6]}"
        cmd = [sys.executable, "bench/faust_baselines.py", mode, bootstrap, topic, f"{group}-out", group,
               str(work / group), str(models)]
        env: dict[str, str] = {}
    else:
        group = f"bench-worker-{r}-{uuid.uuid4().hex[:6]}"
        cmd = [sys.executable, "-m", "stream", "worker"]
        env = {"STREAM_KAFKA_BOOTSTRAP": bootstrap, "STREAM_TOPIC_PREFIX": "bench.", "STREAM_WORKER_ID": group,
               "STREAM_STATE_DIR": str(work / group), "STREAM_CHDB_PATH": str(work / f"{group}-chdb"),
               "STREAM_MODELS_DIR": str(models), "STREAM_WORKER_WEB_PORT": "0",
               "STREAM_TOPIC_PARTITIONS": str(PARTITIONS)}
    proc = run_process(cmd, env, work / f"{group}.log")
    try:
        return committed_rate(bootstrap, group, topic, total, timeout_s=900)
    finally:
        stop(proc)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rate", type=float, default=2000.0, help="offered load for the latency run (events/s)")
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--tuned-naive", action="store_true",
                    help="also run (c') = (c) with uvloop and the worker's GC tuning, last in each repeat")
    ap.add_argument("--pause", type=float, default=5.0,
                    help="idle seconds before each variant, after which it waits for a quiet broker")
    args = ap.parse_args()

    events = list(generate(SimConfig(n_users=args.users, days=args.days, seed=7)).iter_events())
    total = len(events)
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    models = work / "models"
    train_and_register(models, events[: min(total, 30_000)], seed=1)
    payloads = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    print(f"input: {total} simulated events ({args.users} users x {args.days} days), {PARTITIONS} partitions")
    results: dict[str, list[float]] = {"a": [], "b": [], "c": [], "d": []}
    if args.tuned_naive:
        results["c'"] = []
    with EmbeddedKafka(workdir=work / "kafka") as broker:
        bootstrap = broker.bootstrap
        settings = load_settings(topic_prefix="bench.", topic_partitions=PARTITIONS)
        ensure_topics(bootstrap, settings)
        topic = "bench.session-events"
        produce(bootstrap, topic, payloads)
        for r in range(args.repeats):
            results["a"].append(raw_loop(bootstrap, topic, total))
            # Vary the order, and start each variant on a quiet broker: right after the naive
            # variant the broker compacts its changelog, which measured ~20 % off the next variant.
            order = ORDERS[r % len(ORDERS)] + (("c'",) if args.tuned_naive else ())
            waited = []
            for key in order:
                waited.append(settle(broker.pid, args.pause))
                results[key].append(run_variant(key, r, bootstrap, topic, total, work, models))
            print(f"repeat {r + 1} (order {'-'.join(order)}, settled {'/'.join(f'{w:.0f}' for w in waited)} s): "
                  + ", ".join(f"({k}) {v[-1]:,.0f}/s" for k, v in results.items()), flush=True)
        lat = latency(bootstrap, work, models, events, args.rate, args.latency_seconds)

    med = {k: statistics.median(v) for k, v in results.items()}
    names = {"a": "raw confluent-kafka loop (ceiling)", "b": "trivial faust agent (framework ceiling)",
             "c": "naive faust agent (baseline)", "d": "our worker",
             "c'": "naive agent, uvloop + worker's GC tuning"}
    print(f"\nsustained events/s, median of {args.repeats} (10% -> 90% of {total} events committed):")
    for k in med:
        print(f"  ({k}) {names[k]:42s} {med[k]:>10,.0f}")
    print(f"\n  (d)/(c) = {med['d'] / med['c']:.2f}   target >= 5")
    print(f"  (d)/(b) = {med['d'] / med['b']:.2f}   target >= 0.5")
    print(f"  (d)/(a) = {med['d'] / med['a']:.2f}")
    if "c'" in med:
        tuned = med["c'"]
        print(f"  (d)/(c') = {med['d'] / tuned:.2f}   (c) with the worker's process settings")
    if lat:
        print(f"\nlatency at {args.rate:,.0f} events/s offered for {args.latency_seconds:.0f}s, "
              f"event -> prediction read ({len(lat)} predictions): "
              f"p50 {pct(lat, 0.5) * 1000:.0f} ms, p99 {pct(lat, 0.99) * 1000:.0f} ms")
    print(f"logs: {work}")


if __name__ == "__main__":
    main()

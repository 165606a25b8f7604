"""The worker API's latency and what serving it costs the stream, two workers on the embedded broker.

    python bench/api.py [--users 1000] [--days 10] [--rps 500] [--seconds 10]

Two workers in one group (4 partitions) first process a third of the simulated history. Then, at
``--rps`` requests per second (open loop: each request is sent at its scheduled time, latency counts
from then, so a slow answer cannot hold back the next ones), for ``--seconds`` each:

* ``GET /v1/users/{id}`` sent to worker a for users a owns (local), and for users b owns (one hop);
* ``POST /v1/decide`` sent to worker a;

once with the workers idle and once while they drain a backlog (the second third, produced just
before: the workers at their full event rate, a harder condition than the issue's half rate).
Event throughput: how fast the group drains the last third with no API load, against the second
third's drain under load (from committed offsets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator import SimConfig, generate  # noqa: E402
from stream.config import load_settings  # noqa: E402
from stream.kafka.embedded import EmbeddedKafka, free_port  # noqa: E402
from stream.kafka.io import committed_offsets, produce  # noqa: E402
from stream.kafka.topics import ensure_topics  # noqa: E402
from tests.support.models import train_and_register  # noqa: E402

PARTITIONS = 4


def ends(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-api-ends"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    finally:
        c.close()


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    try:
        return sum(v or 0 for v in committed_offsets(bootstrap, group, topic).values())
    except Exception:  # the coordinator is busy: ask again
        return -1


def wait_drained(bootstrap: str, group: str, topic: str, timeout_s: float = 300) -> float:
    """Seconds until the group committed every record of ``topic`` (polled every 0.25 s)."""
    target = sum(ends(bootstrap, topic).values())
    began = time.monotonic()
    while committed_total(bootstrap, group, topic) < target:
        if time.monotonic() - began > timeout_s:
            raise SystemExit(f"not drained within {timeout_s:.0f} s")
        time.sleep(0.25)
    return time.monotonic() - began


async def load(
    session: aiohttp.ClientSession, method: str, urls: list[str], body: bytes | None, rps: float, seconds: float
) -> tuple[list[float], dict[int, int]]:
    """Open-loop requests; latencies (s) from each request's scheduled time, and the status counts."""
    lat: list[float] = []
    statuses: dict[int, int] = {}

    async def one(url: str, due: float) -> None:
        async with session.request(method, url, data=body) as r:
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
        lat.append(time.perf_counter() - due)

    tasks = []
    start = time.perf_counter()
    n = int(rps * seconds)
    for i in range(n):
        due = start + i / rps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(urls[i % len(urls)], due)))
    await asyncio.gather(*tasks)
    return lat, statuses


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


async def measure(
    base: list[str], owned: dict[str, list[str]], rps: float, seconds: float, until: Any = None
) -> dict[str, Any]:
    """The three cases in turn; then, with ``until``, users requests go on until ``until()`` holds."""
    a, b = base
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
        cases = {
            "users, local": ("GET", [f"{a}/v1/users/{u}" for u in owned[a]], None),
            "users, one hop": ("GET", [f"{a}/v1/users/{u}" for u in owned[b]], None),
            "decide": ("POST", [f"{a}/v1/decide"], b'{"user_id": "bench", "context": {"device": "mobile"}}'),
        }
        for name, (method, urls, body) in cases.items():
            if until is None:  # first, one request at a time: the service time without queueing
                one_by_one = []
                for i in range(300):
                    began = time.perf_counter()
                    async with session.request(method, urls[i % len(urls)], data=body) as r:
                        await r.read()
                    one_by_one.append(time.perf_counter() - began)
                out[f"{name} (one at a time)"] = {
                    "n": len(one_by_one),
                    "statuses": {},
                    "p50_ms": pct(one_by_one, 0.5),
                    "p99_ms": pct(one_by_one, 0.99),
                    "max_ms": max(one_by_one) * 1000,
                }
            lat, statuses = await load(session, method, urls, body, rps, seconds)
            out[f"{name} at {rps:.0f}/s"] = {
                "n": len(lat),
                "statuses": statuses,
                "p50_ms": pct(lat, 0.5),
                "p99_ms": pct(lat, 0.99),
                "max_ms": max(lat) * 1000,
            }
        loop = asyncio.get_running_loop()
        mixed = [f"{a}/v1/users/{u}" for u in owned[a] + owned[b]]
        began = time.monotonic()
        while until is not None and not await loop.run_in_executor(None, until):
            if time.monotonic() - began > 90:
                print("the backlog was not drained within 90 s of users requests", flush=True)
                break
            await load(session, "GET", mixed, None, rps, 1.0)
    return out


def owners(base: list[str], users: list[str]) -> dict[str, list[str]]:
    import urllib.request

    got: dict[str, list[str]] = {u: [] for u in base}
    for uid in users:
        with urllib.request.urlopen(f"{base[0]}/v1/users/{uid}", timeout=10) as r:
            got[r.headers["X-Stream-Served-By"]].append(uid)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--rps", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the workers and the broker (finally) on a timeout

    events = list(generate(SimConfig(n_users=args.users, days=args.days, seed=7)).iter_events())
    third = len(events) // 3
    parts = [events[:third], events[third : 2 * third], events[2 * third :]]
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    models = work / "models"
    train_and_register(models, events[:third], seed=1)
    print(f"input: {len(events)} simulated events ({args.users} users x {args.days} days), in thirds")
    with EmbeddedKafka(workdir=work / "kafka") as broker:
        bootstrap = broker.bootstrap
        prefix = "bench."
        ensure_topics(bootstrap, load_settings(topic_prefix=prefix, topic_partitions=PARTITIONS))
        topic, group = f"{prefix}session-events", "bench-api"
        produce(bootstrap, topic, [(e["user_id"].encode(), orjson.dumps(e)) for e in parts[0]])
        ports = [free_port(), free_port()]
        base = [f"http://127.0.0.1:{p}" for p in ports]
        procs = []
        for i, port in enumerate(ports):
            env = {
                **os.environ,
                "STREAM_KAFKA_BOOTSTRAP": bootstrap,
                "STREAM_TOPIC_PREFIX": prefix,
                "STREAM_WORKER_ID": group,
                "STREAM_WORKER_INSTANCE": str(i),
                "STREAM_STATE_DIR": str(work / "state"),
                "STREAM_CHDB_PATH": str(work / "chdb"),
                "STREAM_MODELS_DIR": str(models),
                "STREAM_WORKER_WEB_PORT": "0",
                "STREAM_API_PORT": str(port),
                "STREAM_API_URL": base[i],
                "PYTHONUNBUFFERED": "1",
            }
            log = open(work / f"worker{i}.log", "wb")  # noqa: SIM115 - the child's
            procs.append(subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=env, stdout=log, stderr=log))
        try:
            drained = wait_drained(bootstrap, group, topic)
            print(f"first third processed ({drained:.0f} s after start)", flush=True)
            users = sorted({e["user_id"] for e in parts[0]})
            while True:
                try:
                    owned = owners(base, users)
                except Exception:
                    time.sleep(1)
                    continue
                if all(owned.values()):
                    break
                time.sleep(1)
            print(f"users per worker: {[len(v) for v in owned.values()]}", flush=True)
            results = {"idle": asyncio.run(measure(base, owned, args.rps, args.seconds))}
            print("idle latencies measured", flush=True)
            before = sum(ends(bootstrap, topic).values())
            produce(bootstrap, topic, [(e["user_id"].encode(), orjson.dumps(e)) for e in parts[1]])
            target = sum(ends(bootstrap, topic).values())
            t0 = time.monotonic()

            def drained() -> bool:
                done = committed_total(bootstrap, group, topic)
                print(f"  committed {done} of {target}", flush=True)
                return done >= target

            results["draining a backlog"] = asyncio.run(measure(base, owned, args.rps, args.seconds, drained))
            loaded_s = time.monotonic() - t0
            n1 = target - before
            before = sum(ends(bootstrap, topic).values())
            produce(bootstrap, topic, [(e["user_id"].encode(), orjson.dumps(e)) for e in parts[2]])
            idle_s = wait_drained(bootstrap, group, topic)
            n2 = sum(ends(bootstrap, topic).values()) - before
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
    print(f"\nrequests sent to worker a (of 2); at {args.rps:.0f}/s for {args.seconds:.0f} s, open loop:")
    print("| condition | request | n | statuses | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for cond, rows in results.items():
        for name, r in rows.items():
            print(
                f"| {cond} | {name} | {r['n']} | {json.dumps(r['statuses'])} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} |"
            )
    under = n1 / loaded_s
    idle = n2 / idle_s
    print(
        f"\nevent throughput (2 workers, backlog drained, from committed offsets): {under:,.0f} events/s under "
        f"{args.rps:.0f} requests/s ({n1} events in {loaded_s:.1f} s), {idle:,.0f} events/s with no requests "
        f"({n2} events in {idle_s:.1f} s); ratio {under / idle:.2f}"
    )
    print(f"(one run; logs in {work})")


if __name__ == "__main__":
    main()

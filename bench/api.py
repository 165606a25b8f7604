"""The worker API's latency with the stream at half its maximum event rate, and what serving costs the stream.

    python bench/api.py [--users 1000] [--days 6] [--rps 500] [--seconds 6]

Two workers in one group (4 partitions, embedded broker) first process a fifth of the simulated
history. Then, in one run:

1. **Service time**: 200 requests of each case one at a time (stream idle), the cost without queueing.
2. **Maximum event rate**: a backlog of the next events is drained with no API load; events/s of the
   two workers (their ``stream_events_total``) and their CPU per event (``/proc``).
3. **Half rate**: the rest of the history is produced at half that rate (a paced producer in this
   process), and, for ``--seconds`` each: no requests (API idle), then each case at ``--rps``
   requests per second (open loop: each request is due at its scheduled time and its latency counts
   from then, so a slow answer cannot hold back the next ones):

   * ``GET /v1/users/{id}`` sent to worker a for users a owns (local), and for users b owns (one hop);
   * ``POST /v1/decide`` sent to worker a.

   Per window: p50/p99 per case, events/s and worker CPU per event, and the cores each process
   used: worker a, worker b, the broker, the embedded ClickHouse server, this process (the paced
   producer and the metric scrapes), the load generator, and the rest of the machine.

Before it starts, the bench warns when the host already has more than ``QUIET_CORES`` busy, and
names the busiest processes.

The load generator is a separate process, one of two (``--client``, both by default: each case
runs once with each, the same run): ``go``, ``bench/loadgen`` (a small Go program, built here
with the Go toolchain), or ``python`` (``--loadgen``), a minimal HTTP/1.1 keep-alive client on
uvloop (no aiohttp client: it costs several times the CPU per request). Both are open loop and
count each latency from the request's due time (no coordinated omission). All of it shares the
machine's cores with the two workers: read the CPU columns before the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARTITIONS = 4
#: the load generator's connections (at most), and how long it waits for an answer (then status 0)
MAX_CONNECTIONS = 256
REQUEST_TIMEOUT_S = 30.0
CLK = os.sysconf("SC_CLK_TCK")
#: busy cores before a run above which the bench warns that the host is not quiet
QUIET_CORES = 0.2


# --- the load generator (its own process) --------------------------------------------------------
class _Conn:
    """One keep-alive HTTP/1.1 connection: one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    cpu0 = time.process_time()  # the generator's own work, without the interpreter's start
    host, port = spec["host"], spec["port"]
    rps, seconds = spec["rps"], spec["seconds"]
    raws = [r.encode("latin-1") for r in spec["requests"]]
    idle: list[_Conn] = []
    lat: list[float] = []
    statuses: dict[int, int] = {}
    # At most MAX_CONNECTIONS open, as a client's pool: a request past them waits for one (its
    # latency still counts from its due time). Unbounded, a slow server had thousands opened,
    # more than its accept queue, and the ones it never accepted hung the generator.
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def one(raw: bytes, due: float) -> None:
        async with slots:
            conn = None
            try:
                conn = idle.pop() if idle else _Conn(*await asyncio.open_connection(host, port))
                status = await asyncio.wait_for(conn.send(raw), REQUEST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):  # status 0: no answer
                statuses[0] = statuses.get(0, 0) + 1
                if conn is not None:
                    conn.writer.close()
                return
            lat.append(time.perf_counter() - due)
            statuses[status] = statuses.get(status, 0) + 1
            idle.append(conn)

    if spec.get("sequential"):
        for i in range(spec["sequential"]):
            await one(raws[i % len(raws)], time.perf_counter())
    else:
        tasks = []
        start = time.perf_counter() + 0.05
        for i in range(int(rps * seconds)):
            due = start + i / rps
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(raws[i % len(raws)], due)))
        await asyncio.gather(*tasks)
    for c in idle:
        c.writer.close()
    lat.sort()
    n = len(lat)
    return {
        "n": n,
        "statuses": statuses,
        "p50_ms": lat[n // 2] * 1000 if n else float("nan"),
        "p99_ms": lat[min(n - 1, int(0.99 * n))] * 1000 if n else float("nan"),
        "max_ms": lat[-1] * 1000 if n else float("nan"),
        "cpu_s": time.process_time() - cpu0,
    }


def loadgen_main(spec_json: str) -> None:
    import uvloop

    spec = json.loads(spec_json)
    print(json.dumps(uvloop.run(_generate(spec))), flush=True)


def request_lines(method: str, host: str, paths: list[str], body: bytes | None) -> list[str]:
    """Raw HTTP/1.1 requests (keep-alive) for the generator."""
    out = []
    for p in paths:
        head = f"{method} {p} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        out.append(head + "\r\n" + (body or b"").decode())
    return out


#: the Go load generator's binary (``build_go_loadgen``), when built
GO_LOADGEN: Path | None = None


def build_go_loadgen(out: Path) -> str | None:
    """``bench/loadgen`` built with the Go toolchain (standard library only: nothing is downloaded).

    Returns why it could not be built (no toolchain, or the build failed), or None once ``out`` is built.
    """
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        return "no Go toolchain (go on PATH)"
    env = {**os.environ, "GOTOOLCHAIN": "local"}  # never a toolchain download
    if "HOME" not in env and "GOCACHE" not in env:
        env["GOCACHE"] = str(out.parent / "gocache")  # go needs a build cache
    built = subprocess.run(
        [go, "build", "-o", str(out), "."], cwd=ROOT / "bench" / "loadgen", env=env, capture_output=True, text=True
    )
    if built.returncode != 0:
        return f"go build failed: {built.stderr.strip()[-500:]}"
    return None


def run_loadgen(spec: dict[str, Any], client: str = "python") -> dict[str, Any]:
    if client == "go":
        assert GO_LOADGEN is not None
        cmd, stdin = [str(GO_LOADGEN)], json.dumps(spec)
    else:
        cmd, stdin = [sys.executable, __file__, "--loadgen", json.dumps(spec)], None
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"load generator ({client}) failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("p50_ms", "p99_ms", "max_ms"):
        if result.get(key) is None:  # none answered (Go says null)
            result[key] = float("nan")
    result["statuses"] = {int(k): v for k, v in result.get("statuses", {}).items()}
    return result


# --- the bench -------------------------------------------------------------------------------------
def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of the processes (all their threads)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK


def threads_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads by name (``main``: the event loop's; librdkafka's are ``rdk:*``)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        name = "main" if task.name == str(pid) else comm.split("-")[0].split(":")[0] + (":" if ":" in comm else "")
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK
    return out


def chdb_server_pid(chdb: Path) -> int | None:
    """The embedded ClickHouse server's pid (``local-server.json``), if it runs."""
    try:
        pid = int(json.loads((chdb / "local-server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core, every process: /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK


def busiest_processes(seconds: float = 2.0, top: int = 3) -> tuple[float, list[tuple[float, str]]]:
    """The machine's busy cores over ``seconds``, and its ``top`` processes by cores (command lines)."""

    def each() -> dict[int, float]:
        out = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    out[int(d.name)] = cpu_s([int(d.name)])
                except (OSError, IndexError, ValueError):  # gone meanwhile
                    continue
        return out

    before, busy = each(), machine_busy_s()
    time.sleep(seconds)
    after, busy = each(), machine_busy_s() - busy
    cores = sorted(((after[p] - before[p]) / seconds, p) for p in after.keys() & before.keys())[::-1][:top]
    named = []
    for c, pid in cores:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        named.append((c, f"{pid} {cmd[:100]}"))
    return busy / seconds, named


#: the workers' latency histograms the bench reads before and after each window (the event loop's
#: lag and steps: workers of this version only)
HISTOGRAMS = (
    "stream_api_request_seconds",
    "stream_api_decision_log_seconds",
    "stream_api_decision_ack_seconds",
    "stream_event_loop_lag_seconds",
    "stream_loop_step_seconds",
)


def histograms(base: str, names: tuple[str, ...] = HISTOGRAMS) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of the worker's histograms, by metric and route or step: {key: {le: count}}."""
    out: dict[str, dict[float, float]] = {}
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            name, _, rest = line.partition("_bucket{")
            if not rest or name not in names:
                continue
            labels, _, value = rest.rpartition(" ")
            le = float(labels.split('le="', 1)[1].split('"', 1)[0])
            label = ""
            for which in ("route", "step"):
                if f'{which}="' in labels:
                    label = labels.split(f'{which}="', 1)[1].split('"', 1)[0]
            out.setdefault(f"{name}:{label}", {})[le] = float(value)
    return out


def bucket_quantiles(before: dict[float, float], after: dict[float, float]) -> str:
    """p50 / p99 / max (ms, the upper bound of the bucket holding it) of the observations between two scrapes."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    n = counts[-1] if counts else 0
    if not n:
        return "-"

    def q(f: float) -> str:
        for le, c in zip(les, counts, strict=True):
            if c >= f * n:
                return "inf" if le == float("inf") else f"{le * 1000:g}"
        return "inf"

    return f"<={q(0.5)} / <={q(0.99)} / max <={q(1.0)} (n {n:.0f})"


def events_done(bases: list[str]) -> int:
    """Events consumed by the workers (the sum of their ``stream_events_total``)."""
    total = 0.0
    for b in bases:
        with urllib.request.urlopen(f"{b}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("stream_events_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return int(total)


class Feeder(threading.Thread):
    """Produces ``events`` at ``rate`` per second (in 20 ms steps) until stopped or out of events."""

    def __init__(self, bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "partitioner": "murmur2_random"})
        self.topic, self.events, self.rate = topic, events, rate
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        began = time.perf_counter()
        while not self.stop.is_set() and self.sent < len(self.events):
            due = int((time.perf_counter() - began) * self.rate)
            while self.sent < min(due, len(self.events)):
                e = self.events[self.sent]
                self.producer.produce(self.topic, orjson.dumps(e), e["user_id"].encode())
                self.sent += 1
            self.producer.poll(0)
            time.sleep(0.02)
        self.producer.flush(30)


def window(
    bases: list[str],
    pids: list[int],
    seconds: float,
    load: dict[str, Any] | None,
    profile: Path | None = None,
    client: str = "python",
    others: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Events/s and worker CPU/event over ``seconds``, with ``load`` (a generator spec) running meanwhile.

    With ``profile``: py-spy samples worker a (the one asked) meanwhile, folded stacks to that file.
    ``others``: further processes whose cores are reported (the broker, the ClickHouse server).
    """
    spy = None
    if profile is not None:
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pids[0]), "--rate", "50",
             "--duration", str(int(seconds)), "--nonblocking", "--threads", "--format", "raw", "-o", str(profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    procs = {"worker a": pids[0], "worker b": pids[1], **(others or {})}
    h0 = [histograms(b) for b in bases]
    p0 = {k: cpu_s([pid]) for k, pid in procs.items()}
    th0 = threads_cpu_s(pids[0])
    e0, c0, t0, o0, m0 = events_done(bases), cpu_s(pids), time.monotonic(), os.times(), machine_busy_s()
    result = run_loadgen(load, client) if load is not None else (time.sleep(seconds) or {})
    e1, c1, t1, o1, m1 = events_done(bases), cpu_s(pids), time.monotonic(), os.times(), machine_busy_s()
    p1 = {k: cpu_s([pid]) for k, pid in procs.items()}
    th1 = threads_cpu_s(pids[0])
    h1 = [histograms(b) for b in bases]
    inside = {  # the time the workers' handlers took (bucketed): what the client saw beyond it was queueing
        f"{'ab'[i]} {key.replace('stream_', '').replace('api_', '').replace('_seconds', '')}": bucket_quantiles(
            h0[i].get(key, {}), got
        )
        for i in range(len(bases))
        for key, got in sorted(h1[i].items())
        if "/v1/" in key or "decision_" in key or "loop" in key
    }
    elapsed = t1 - t0
    cores = {k: (p1[k] - p0[k]) / elapsed for k in procs}
    cores["bench (feeder, scrapes)"] = (o1.user + o1.system - o0.user - o0.system) / elapsed
    cores["load generator"] = result.get("cpu_s", 0.0) / elapsed
    cores["rest of the machine"] = (m1 - m0) / elapsed - sum(cores.values())
    threads = {k: (v - th0.get(k, 0.0)) / elapsed for k, v in th1.items() if v - th0.get(k, 0.0) > 0}
    if spy is not None:
        spy.wait(60)
    n = e1 - e0
    return {
        **result,
        "events": n,
        "seconds_measured": t1 - t0,
        "events_per_s": n / (t1 - t0),
        "cpu_us_per_event": (c1 - c0) / n * 1e6 if n else float("nan"),
        "worker_cores": (c1 - c0) / (t1 - t0),
        "feeder_cores": (o1.user + o1.system - o0.user - o0.system) / (t1 - t0),
        "gen_cores": result.get("cpu_s", 0.0) / (t1 - t0),
        "machine_cores": (m1 - m0) / (t1 - t0),
        "inside": {k: v for k, v in inside.items() if v != "-"},
        "cores": cores,
        "threads a": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
        "client": client if load is not None else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--days", type=int, default=6)
    ap.add_argument("--rps", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--profile", type=Path, help="py-spy worker a during each half-rate window, into this directory")
    ap.add_argument(
        "--event-rate",
        type=float,
        help="feed events at this rate (events/s) instead of half the measured maximum, e.g. one the workers sustain",
    )
    ap.add_argument(
        "--worker-tree",
        type=Path,
        default=ROOT,
        help="run the workers from this source tree (e.g. main's checkout, for a baseline)",
    )
    ap.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of both workers (repeatable), e.g. STREAM_API_THREAD=false",
    )
    ap.add_argument(
        "--worker-env-file",
        type=Path,
        help="settings of both workers from this file (NAME=VALUE lines), e.g. deploy/serving.env; "
        "--worker-env wins over it",
    )
    ap.add_argument(
        "--client",
        choices=("both", "go", "python"),
        default="both",
        help="the load generator: bench/loadgen (Go), the Python one, or each case with both (default)",
    )
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        loadgen_main(args.loadgen)
        return
    extra = dict(kv.split("=", 1) for kv in args.worker_env if "=" in kv)
    if len(extra) != len(args.worker_env):
        ap.error(f"--worker-env: expected NAME=VALUE, got {args.worker_env}")
    if args.worker_env_file is not None:
        if not args.worker_env_file.is_file():
            ap.error(f"--worker-env-file: expected a file of NAME=VALUE lines, got {str(args.worker_env_file)!r}")
        from dotenv import dotenv_values

        extra = {k: v for k, v in dotenv_values(args.worker_env_file).items() if v is not None} | extra
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the workers and the broker (finally) on a timeout

    from simulator import SimConfig, generate
    from stream.config import load_settings
    from stream.kafka.embedded import EmbeddedKafka, free_port
    from stream.kafka.io import produce
    from stream.kafka.topics import ensure_topics
    from tests.support.models import train_and_register

    busy, busiest = busiest_processes()
    if busy > QUIET_CORES:  # e.g. workers of an earlier run that never stopped
        print(f"WARNING: the host was busy before the run: {busy:.2f} cores; the busiest processes:")
        for cores, what in busiest:
            print(f"  {cores:.2f} cores: {what}")
    events = list(generate(SimConfig(n_users=args.users, days=args.days, seed=7)).iter_events())
    warm = len(events) // 5
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    clients = ["go", "python"] if args.client == "both" else [args.client]
    if "go" in clients:
        global GO_LOADGEN
        why = build_go_loadgen(work / "loadgen")
        if why is None:
            GO_LOADGEN = work / "loadgen"
        elif args.client == "go":
            raise SystemExit(f"--client go: {why}; use --client python")
        else:  # both: the Python client alone
            print(f"the Go load generator is not used ({why}): the Python client alone", flush=True)
            clients = ["python"]
    models = work / "models"
    train_and_register(models, events[:warm], seed=1)
    print(f"input: {len(events)} simulated events ({args.users} users x {args.days} days)", flush=True)
    with EmbeddedKafka(workdir=work / "kafka") as broker:
        bootstrap = broker.bootstrap
        prefix = "bench."
        ensure_topics(bootstrap, load_settings(topic_prefix=prefix, topic_partitions=PARTITIONS))
        topic = f"{prefix}session-events"
        produce(bootstrap, topic, [(e["user_id"].encode(), orjson.dumps(e)) for e in events[:warm]])
        ports = [free_port(), free_port()]
        base = [f"http://127.0.0.1:{p}" for p in ports]
        procs = []
        for i, port in enumerate(ports):
            env = {
                **os.environ,
                "STREAM_KAFKA_BOOTSTRAP": bootstrap,
                "STREAM_TOPIC_PREFIX": prefix,
                "STREAM_WORKER_ID": "bench-api",
                "STREAM_WORKER_INSTANCE": str(i),
                "STREAM_STATE_DIR": str(work / "state"),
                "STREAM_CHDB_PATH": str(work / "chdb"),
                "STREAM_MODELS_DIR": str(models),
                "STREAM_WORKER_WEB_PORT": "0",
                "STREAM_API_PORT": str(port),
                "STREAM_API_URL": base[i],
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(args.worker_tree),
                **extra,
            }
            log = open(work / f"worker{i}.log", "wb")  # noqa: SIM115 - the child's
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "stream", "worker"], env=env, stdout=log, stderr=log, cwd=args.worker_tree
                )
            )
        pids = [p.pid for p in procs]
        results: dict[str, dict[str, Any]] = {}
        feeder = None
        try:
            users = sorted({e["user_id"] for e in events[:warm]})
            owned = wait_owned(base, users, warm)
            print(f"warm-up processed; users per worker: {[len(v) for v in owned.values()]}", flush=True)
            a, b = base
            host = a.split("//")[1]
            decide = b'{"user_id": "bench", "context": {"device": "mobile"}}'
            cases = {
                "users, local": request_lines("GET", host, [f"/v1/users/{u}" for u in owned[a]], None),
                "users, one hop": request_lines("GET", host, [f"/v1/users/{u}" for u in owned[b]], None),
                "decide": request_lines("POST", host, ["/v1/decide"], decide),
            }
            gen = {"host": "127.0.0.1", "port": ports[0]}
            for client in clients:
                for name, reqs in cases.items():
                    r = run_loadgen({**gen, "requests": reqs, "rps": 0, "seconds": 0, "sequential": 200}, client)
                    results[f"one at a time, stream idle | {name} [{client}]"] = {**r, "client": client}
            # the maximum event rate: a backlog drained with no requests
            backlog = events[warm : warm + min(10_000, (len(events) - warm) // 4)]
            rest = events[warm + len(backlog) :]
            e0 = events_done(base)
            c0, t0, m0 = cpu_s(pids), time.monotonic(), machine_busy_s()
            produce(bootstrap, topic, [(e["user_id"].encode(), orjson.dumps(e)) for e in backlog])
            while events_done(base) < e0 + len(backlog):
                time.sleep(0.1)
            t1 = time.monotonic()
            max_rate = len(backlog) / (t1 - t0)
            results["max rate (backlog, API idle)"] = {
                "events_per_s": max_rate,
                "machine_cores": (machine_busy_s() - m0) / (t1 - t0),
                "cpu_us_per_event": (cpu_s(pids) - c0) / len(backlog) * 1e6,
                "worker_cores": (cpu_s(pids) - c0) / (t1 - t0),
            }
            rate = args.event_rate or max_rate / 2
            print(f"max event rate {max_rate:,.0f}/s ({len(backlog)} events); feeding at {rate:,.0f}/s", flush=True)
            args.fed_rate = rate
            feeder = Feeder(bootstrap, topic, rest, rate)
            feeder.start()
            time.sleep(2)  # the stream settles at the fed rate
            prof = args.profile
            if prof is not None:
                prof.mkdir(parents=True, exist_ok=True)
            others = {"broker": broker.pid, "clickhouse server": chdb_server_pid(work / "chdb")}
            others = {k: v for k, v in others.items() if v is not None}
            results["half rate, API idle"] = window(
                base, pids, args.seconds, None, prof / "idle.txt" if prof else None, others=others
            )
            for name, reqs in cases.items():
                for client in clients:
                    spec = {**gen, "requests": reqs, "rps": args.rps, "seconds": args.seconds}
                    out = prof / f"{name.replace(', ', '-').replace(' ', '-')}-{client}.txt" if prof else None
                    results[f"half rate, {args.rps:.0f}/s | {name} [{client}]"] = window(
                        base, pids, args.seconds, spec, out, client, others
                    )
            results["half rate, API idle (again)"] = window(base, pids, args.seconds, None, others=others)
            if feeder.sent >= len(rest):
                print("WARNING: the feeder ran out of events before the end: use more --users or --days")
        finally:
            if feeder is not None:
                feeder.stop.set()
                feeder.join(60)
            for p in procs:
                p.terminate()
            for p in procs:  # a worker still running would take cores from the next run
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    idle = results.get("half rate, API idle", {}).get("cpu_us_per_event")
    for key, r in results.items():
        if " | " in key and "events_per_s" in r and idle is not None and r.get("n"):
            # the worker CPU beyond what its events cost when idle, per request answered
            spent = r["worker_cores"] * r["seconds_measured"] - r["events"] * idle / 1e6
            r["api_us_per_request"] = spent / r["n"] * 1e6
    report(results, args)
    print(f"(one run; logs in {work})")


def wait_owned(base: list[str], users: list[str], warm: int) -> dict[str, list[str]]:
    while True:
        try:
            if events_done(base) >= warm:
                got: dict[str, list[str]] = {u: [] for u in base}
                for uid in users:
                    with urllib.request.urlopen(f"{base[0]}/v1/users/{uid}", timeout=10) as r:
                        got[r.headers["X-Stream-Served-By"]].append(uid)
                if all(got.values()):
                    return got
        except Exception:  # not listening, rebalancing (503) or the user's events not applied yet (404)
            pass
        time.sleep(1)


def report(results: dict[str, dict[str, Any]], args: Any) -> None:
    nan = float("nan")
    given = ([f"the settings of {args.worker_env_file}"] if args.worker_env_file else []) + args.worker_env
    settings = f"workers from {args.worker_tree}, " + (" ".join(given) or "default settings")
    fed = getattr(args, "fed_rate", float("nan"))
    print(
        f"\nrequests to worker a (of 2); open loop at {args.rps:.0f}/s for {args.seconds:.0f} s per case; "
        f'events fed at {fed:,.0f}/s ("half rate"{", --event-rate" if args.event_rate else ""}); {settings}'
    )
    print(
        "| condition | request [client] | n | statuses | p50 ms | p99 ms | max ms | events/s | worker µs CPU/event "
        "| API µs CPU/request | worker cores | generator cores | feeder cores | machine busy cores |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in results.items():
        cond, _, name = key.partition(" | ")
        print(
            f"| {cond} | {name or '-'} | {r.get('n', '')} | {json.dumps(r.get('statuses', {}))} | "
            f"{r.get('p50_ms', nan):.1f} | {r.get('p99_ms', nan):.1f} | {r.get('max_ms', nan):.1f} | "
            f"{r.get('events_per_s', nan):,.0f} | {r.get('cpu_us_per_event', nan):,.0f} | "
            f"{r.get('api_us_per_request', nan):,.0f} | "
            f"{r.get('worker_cores', nan):.2f} | {r.get('gen_cores', nan):.2f} | {r.get('feeder_cores', nan):.2f} | "
            f"{r.get('machine_cores', nan):.2f} |"
        )
    windows = {k: r for k, r in results.items() if r.get("cores")}
    if windows:
        names = list(next(iter(windows.values()))["cores"])
        print("\ncores used per process in each window (CPU seconds / wall seconds; the machine has 2):")
        print("| window | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for key, r in windows.items():
            print(f"| {key} | " + " | ".join(f"{r['cores'].get(n, nan):.2f}" for n in names) + " |")
        print("\nworker a's threads (cores; main runs the event loop, rdk:* are librdkafka's):")
        for key, r in windows.items():
            print(f"- {key}: " + ", ".join(f"{n} {c:.2f}" for n, c in list(r["threads a"].items())[:6]))
    print("\nin the workers (p50 / p99 / max ms, bucket upper bounds, from their histograms):")
    for key, r in results.items():
        if r.get("inside"):
            print(f"- {key}: " + "; ".join(f"{k} {v}" for k, v in r["inside"].items()))


if __name__ == "__main__":
    main()

"""The worker's event archive: CPU per event of the two ways of inserting session events, side by side.

    python bench/bench_archive.py                    # 20,000 simulated events, 5 repeats
    python bench/bench_archive.py --events 50000 --batch 5000 --repeats 7

What the worker's ClickHouse sink does with ``STREAM_ARCHIVE_EVENTS`` on, without Kafka or faust:
the events (parsed from their JSON as the worker parses them) are inserted in batches of
``--batch`` (the sink's ``flush_rows``) into ``{db}.events`` of the embedded ClickHouse, a local
server in a process of its own (stream/clickhouse/local_server.py), each way in a fresh database:

  frame  events_to_frame + insert_by_day: a pandas DataFrame in Native format (clickhouse-connect),
         the archive before issue 16;
  json   insert_events: the events as JSON (orjson), flattened by ClickHouse in
         ``INSERT ... SELECT ... FROM input(...) FORMAT JSONEachRow``.

Per way: this process's CPU (every thread: the serialization and the HTTP client) and the
server's (from /proc: the HTTP server and chdb's parsing and writing), in µs per event, and the
wall time; the median over the repeats, which run the ways in a rotated order. Each run checks
that all the events are in the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (every thread), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000, help="events per run (default 20,000)")
    ap.add_argument("--batch", type=int, default=5_000, help="events per insert, as the sink's flush_rows (5,000)")
    ap.add_argument("--repeats", type=int, default=5, help="runs of each way (default 5; the median is shown)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    os.environ["STREAM_CHDB_PATH"] = str(work / "chdb")
    os.environ["STREAM_DATA_DIR"] = str(work / "var")

    from simulator import SimConfig, generate
    from stream.clickhouse import connect, events_to_frame, insert_by_day, insert_events
    from stream.clickhouse.local_server import server_pids, stop
    from stream.config import load_settings

    days, users = 7, max(10, args.events // 50)  # about 10 events per user and day
    ds = generate(SimConfig(n_users=users, days=days, seed=7))
    while len(ds) < args.events:
        users *= 2
        ds = generate(SimConfig(n_users=users, days=days, seed=7))
    # as the worker has them: parsed from the record's bytes
    events = [orjson.loads(orjson.dumps(ev)) for _, ev in zip(range(args.events), ds.iter_events(), strict=False)]
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    print(f"{len(events)} simulated events in batches of {args.batch}, {args.repeats} repeats", file=sys.stderr)

    ways: dict[str, Callable[[Any, list[dict[str, Any]]], int]] = {
        "frame": lambda ch, batch: insert_by_day(ch, "events", events_to_frame(batch)),
        "json": insert_events,
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    names = list(ways)
    admin = connect(load_settings(clickhouse_database="bench_admin"))
    try:
        (pid,) = server_pids(work / "chdb")
        for r in range(args.repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                ch = connect(load_settings(clickhouse_database=f"bench_{name}_{uuid.uuid4().hex[:8]}"))
                try:
                    c0, s0, t0 = time.process_time(), _cpu_s(pid), time.perf_counter()
                    for batch in batches:
                        ways[name](ch, batch)
                    c1, s1, t1 = time.process_time(), _cpu_s(pid), time.perf_counter()
                    stored = int(ch.query_df("SELECT count() AS n FROM {db}.events FINAL")["n"].iloc[0])
                    if stored != len(events):
                        raise SystemExit(f"{name}: {stored} events stored of {len(events)}")
                    per = 1e6 / len(events)
                    results[name].append(((c1 - c0) * per, (s1 - s0) * per, t1 - t0))
                finally:
                    ch.command("DROP DATABASE IF EXISTS {db}")
                    ch.close()
    finally:
        admin.close()
        stop(work / "chdb")
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'way':6} {'process µs/event':>17} {'server µs/event':>16} {'total µs/event':>15} {'wall s':>7}")
    medians = {}
    for name in names:
        proc, server, wall = (statistics.median(x) for x in zip(*results[name], strict=True))
        medians[name] = (proc, server)
        print(f"{name:6} {proc:17.1f} {server:16.1f} {proc + server:15.1f} {wall:7.2f}")
    (fp, fs), (jp, js) = medians["frame"], medians["json"]
    print(f"json / frame: process ×{jp / fp:.2f}, server ×{js / fs:.2f}, total ×{(jp + js) / (fp + fs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

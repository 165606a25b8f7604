"""Ingest benchmark: events/s and CPU seconds per event of ``python -m stream ingest`` into embedded chdb.

    python bench/bench_ingest.py                 # 1 million events of the foreign history (150 days)
    python bench/bench_ingest.py --events 200000

Writes a JSONL history (tests/support/history.py: 150 days, so the inserts are cut by day) to a
temporary directory, then ingests it into a fresh database of a temporary chdb directory, the way
the CLI does (validation, de-duplication by event id, chunks). CPU is counted for this process and
for the local ClickHouse server that does the inserts (from /proc), from the start of the ingest.
The goal (issue 16): 1 million events in under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (0 where /proc is absent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="about this many events (default 1 million)")
    ap.add_argument("--days", type=int, default=150)
    ap.add_argument("--chunk-rows", type=int, default=200_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    os.environ["STREAM_CHDB_PATH"] = str(work / "chdb")
    os.environ["STREAM_DATA_DIR"] = str(work / "var")

    from stream.clickhouse import connect
    from stream.clickhouse.local_server import server_pids
    from stream.config import load_settings
    from stream.tools.ingest import run_ingest
    from stream.tools.replay import FileSource
    from tests.support.history import foreign_events, write_jsonl

    t = time.perf_counter()
    users = max(1, round(args.events / 61_000 * 150 * 150 / args.days))  # ~61k events per 150 users x 150 days
    events = foreign_events(n_users=users, days=args.days, seed=1)[: args.events]
    path = work / "events.jsonl"
    write_jsonl(path, events)
    print(
        f"wrote {len(events)} events ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )
    del events
    settings = load_settings(clickhouse_database="bench_ingest")
    ch = connect(settings)
    try:
        servers = server_pids(settings.chdb_path)
        cpu0 = {pid: _cpu_s(pid) for pid in servers}
        res = run_ingest(
            FileSource(path),
            ch,
            rejects_path=work / "rejects.jsonl",
            max_bytes=settings.max_event_bytes,
            chunk_rows=args.chunk_rows,
            progress=False,
        )
        server_cpu = sum(_cpu_s(pid) - cpu0[pid] for pid in servers)
        stored = int(ch.query_df("SELECT count() AS n FROM {db}.events")["n"].iloc[0])
    finally:
        ch.close()
    n = res.counts.read
    print(
        f"ingest: {n} events in {res.seconds:.1f} s = {n / res.seconds:,.0f} events/s "
        f"({stored} stored, {res.counts.rejected} rejected)"
    )
    print(
        f"CPU: ingest process {1e6 * res.cpu_seconds / n:.1f} µs/event, ClickHouse server "
        f"{1e6 * server_cpu / n:.1f} µs/event, total {1e6 * (res.cpu_seconds + server_cpu) / n:.1f} µs/event "
        f"({os.cpu_count()} cores)"
    )
    return 0 if stored == n else 1


if __name__ == "__main__":
    sys.exit(main())

"""Simulator throughput: generation + Parquet write, against plain pyarrow writing the same table.

    python bench/bench_simulator.py [--users 20000] [--days 30] [--runs 3]

Prints events/s (median of the runs) for the full path (simulate, build the table, write
events + truth Parquet) and for pyarrow alone writing the same events table, so the ratio shows
how much the simulation itself costs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from simulator import SimConfig, generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    cfg = SimConfig(n_users=args.users, days=args.days)
    full: list[float] = []
    plain: list[float] = []
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            t = time.perf_counter()
            ds = generate(cfg)
            ds.write(Path(tmp) / f"run{i}", formats=("parquet",))
            full.append(time.perf_counter() - t)
            n = len(ds)
            t = time.perf_counter()
            pq.write_table(ds.table, Path(tmp) / f"plain{i}.parquet", compression="zstd")
            plain.append(time.perf_counter() - t)
            del ds
    f, b = statistics.median(full), statistics.median(plain)
    print(f"events: {n} ({args.users} users x {args.days} days), median of {args.runs} runs")
    print(f"simulate + write Parquet : {n / f:12,.0f} events/s  ({f:.2f} s)")
    print(f"pyarrow write only       : {n / b:12,.0f} events/s  ({b:.2f} s)")
    print(f"ratio                    : {b / f:.2f} (share of time spent writing)")


if __name__ == "__main__":
    main()

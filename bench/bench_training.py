"""Batch-training benchmark: per-step and total pipeline wall time, and the training-set build rate.

    python bench/bench_training.py                          # 2500 users x 45 days, profile fast
    python bench/bench_training.py --users 20000 --days 60 --profile default
    python bench/bench_training.py --chdb /path/with/data   # reuse a backfilled chdb directory

Generates and backfills a simulated dataset into a temporary chdb directory (unless ``--chdb``),
runs ``batch_training`` end to end with its own registry and reports, then measures the build
rate of the training sets: the profile's configuration (sampled rows, N processes) against the
baseline the package started from (every row, daily cut-offs, one process) on a user sample.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2500)
    ap.add_argument("--days", type=int, default=45)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--profile", default="fast")
    ap.add_argument("--chdb", default=None, help="existing chdb directory holding the events (skip backfill)")
    ap.add_argument("--baseline-share", type=float, default=0.1, help="user share for the baseline build")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-training-"))
    os.environ["STREAM_CHDB_PATH"] = args.chdb or str(work / "chdb")
    for key, sub in (("STREAM_DATA_DIR", "var"), ("STREAM_MODELS_DIR", "models"), ("STREAM_REPORTS_DIR", "reports")):
        os.environ[key] = str(work / sub)

    from batch_training.cli import pipeline
    from batch_training.context import Context, get_profile
    from batch_training.datasets import Sampling, build_training_sets
    from stream.clickhouse import connect
    from stream.config import load_settings

    settings = load_settings()
    ch = connect(settings)
    if not args.chdb:
        from simulator import SimConfig, generate
        from simulator.sinks import backfill

        t = time.perf_counter()
        ds = generate(SimConfig(n_users=args.users, days=args.days, seed=args.seed))
        backfill(ch, ds)
        print(
            f"dataset: {args.users} users x {args.days} days, {len(ds)} events "
            f"(generated + backfilled in {time.perf_counter() - t:.1f} s)"
        )
    n_events = int(ch.query_df("SELECT count() AS n FROM {db}.events")["n"].iloc[0])
    ctx = Context(settings, get_profile(args.profile), progress=False, _ch=ch)
    print(f"profile {args.profile}: {ctx.profile.sampling}, processes {ctx.profile.processes}")
    timings = pipeline(ctx, log=lambda s: print(f"  {s}"))
    print(f"pipeline total: {timings['total']:.1f} s for {n_events} events")

    def rate(sampling: Sampling, processes: int) -> tuple[float, float, int]:
        t = time.perf_counter()
        sets = build_training_sets(ch, sampling=sampling, processes=processes)
        secs = time.perf_counter() - t
        rows = len(sets.users) + len(sets.clicks) + len(sets.engagement)
        return rows / secs, secs, rows

    share = args.baseline_share
    base = rate(Sampling(user_share=share, seed=1), 1)
    prof = ctx.profile
    new = rate(
        Sampling(
            **{
                **prof.sampling.__dict__,
                "user_share": share * prof.sampling.user_share if prof.sampling.user_share < 1 else share,
            }
        ),
        prof.processes,
    )
    print(
        f"training-set build on a {share:.0%} user sample: baseline (all rows, daily, 1 process) "
        f"{base[0]:,.0f} rows/s ({base[2]} rows, {base[1]:.1f} s); profile {args.profile} "
        f"{new[0]:,.0f} rows/s ({new[2]} rows, {new[1]:.1f} s)"
    )
    ch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The horizon-outcome job (``python -m stream outcomes``) on a synthetic archive in chdb.

Generates ``--events`` events of ``--users`` users over ``--days`` days in ClickHouse itself (every
fifth a ``session_end``, each scored by churn and conversion), then times: the first run (every
window), a second run (nothing newly settled), and a run after one more day of events.

    python bench/bench_outcomes.py [--events 2000000 --users 100000 --days 120]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.monitoring.horizon import horizon_quality
from tests.support.chdb import fresh_database

T0 = 1_767_225_600_000  # 2026-01-01 UTC
DAY = 86_400_000
MANY_PARTS = {"max_partitions_per_insert_block": 10_000}


def _events(ch: Any, first: int, n: int, users: int, lo_day: int, days: int) -> None:
    ch.command(
        "INSERT INTO {db}.events (event_id, event_type, user_id, session_id, event_time) "
        f"SELECT toString(number), "
        "multiIf(number % 5 = 4, 'session_end', number % 97 = 0, 'newsletter_signup', 'article_view'), "
        f"concat('u', toString(cityHash64(number) % {users})), concat('s', toString(intDiv(number, 5))), "
        f"fromUnixTimestamp64Milli(toInt64({T0 + lo_day * DAY} + cityHash64(number, 1) % {days * DAY})) "
        f"FROM numbers({first}, {n}) SETTINGS max_partitions_per_insert_block = 10000"
    )
    for model in ("churn", "conversion"):
        ch.command(
            "INSERT INTO {db}.predictions (prediction_id, model_name, model_version, event_id, user_id, event_time, "
            "score, predicted_at) "
            f"SELECT concat('{model}-', event_id), '{model}', '1', event_id, user_id, event_time, "
            "(cityHash64(event_id, 2) % 1000000) / 1e6, event_time FROM {db}.events "
            f"WHERE event_type = 'session_end' AND toUInt64(event_id) >= {first} AND toUInt64(event_id) < {first + n}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=120)
    args = ap.parse_args()
    with fresh_database("bench_outcomes") as ch:
        t = time.perf_counter()
        _events(ch, 0, args.events, args.users, 0, args.days)
        n_pred = int(ch.query_df("SELECT count() AS n FROM {db}.predictions")["n"].iloc[0])
        print(f"generated {args.events} events, {n_pred} predictions in {time.perf_counter() - t:.1f} s")
        for label in ("first run", "second run"):
            t = time.perf_counter()
            r = horizon_quality(ch, window_ms=DAY, delay_ms=3_600_000, computed_at_ms=int(time.time() * 1000))
            dt = time.perf_counter() - t
            pairs = sum(row["pairs"] for row in r.rows)
            rate = f", {pairs / dt:,.0f} predictions/s" if pairs else ""
            print(f"{label}: {dt:.2f} s, {len(r.rows)} windows, {pairs} predictions{rate}")
        _events(ch, args.events, args.events // args.days, args.users, args.days, 1)
        t = time.perf_counter()
        r = horizon_quality(ch, window_ms=DAY, delay_ms=3_600_000, computed_at_ms=int(time.time() * 1000))
        print(f"after one more day: {time.perf_counter() - t:.2f} s, {len(r.rows)} windows written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

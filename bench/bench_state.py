"""Benchmark of the rolling state: updates/s, feature builds/s, (de)serialization, bytes per user.

Each figure is the median of several runs, printed next to a trivial baseline measured in the same
run (so that a loaded machine shows up in both). Run: ``python bench/bench_state.py [--users N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import orjson

from stream.state import (
    USER_FEATURES,
    UserState,
    encode_event,
    new_user_state,
    update_user,
    user_features,
    user_features_batch,
)
from stream.state.synthetic import generate_events


def _rate(fn: Callable[[], int], runs: int) -> float:
    """Median items/s of ``fn`` (which returns how many items it processed)."""
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    events = generate_events(n_users=args.users, days=args.days, seed=1)
    encoded = [encode_event(e) for e in events]
    print(f"{len(events)} synthetic events, {args.users} users, {args.days} days; median of {args.runs} runs")

    states: dict[str, UserState] = {}

    def feed() -> int:
        states.clear()
        st = defaultdict(new_user_state)
        for e in events:
            update_user(st[e["user_id"]], e)
        states.update(st)
        return len(events)

    def feed_encoded() -> int:
        st: dict[str, UserState] = defaultdict(new_user_state)
        for e, ev in zip(events, encoded, strict=True):
            update_user(st[e["user_id"]], ev)
        return len(events)

    def baseline_counter() -> int:
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for e in events:
            c = counts[e["user_id"]]
            c[e["event_type"]] = c.get(e["event_type"], 0) + 1
        return len(events)

    print(f"updates/s (dict events)       {_rate(feed, args.runs):>10,.0f}   "
          f"baseline dict counter {_rate(baseline_counter, args.runs):>10,.0f}")
    print(f"updates/s (pre-encoded Ev)    {_rate(feed_encoded, args.runs):>10,.0f}")

    users = list(states.values())
    as_of = max(e["event_time"] for e in events)
    row = [0.5] * len(USER_FEATURES)

    def single() -> int:
        for s in users:
            user_features(s, as_of)
        return len(users)

    def batched() -> int:
        for i in range(0, len(users), 500):
            user_features_batch(users[i:i + 500], as_of)
        return len(users)

    def baseline_vec() -> int:
        for _ in users:
            np.asarray(row, dtype=np.float32)
        return len(users)

    print(f"feature vectors/s single      {_rate(single, args.runs):>10,.0f}   "
          f"baseline np.asarray(list) {_rate(baseline_vec, args.runs):>10,.0f}")
    print(f"feature vectors/s batch(500)  {_rate(batched, args.runs):>10,.0f}")

    blobs = [s.to_bytes() for s in users]
    plain = [orjson.dumps({"counts": s.tot, "max_t": s.max_t}) for s in users]

    def ser() -> int:
        for s in users:
            s.to_bytes()
        return len(users)

    def de() -> int:
        for b in blobs:
            UserState.from_bytes(b)
        return len(users)

    def base_ser() -> int:
        for s in users:
            orjson.loads(orjson.dumps({"counts": s.tot, "max_t": s.max_t}))
        return len(users)

    print(f"to_bytes/s                    {_rate(ser, args.runs):>10,.0f}")
    print(f"from_bytes/s                  {_rate(de, args.runs):>10,.0f}   "
          f"baseline orjson 12-count dict round trip {_rate(base_ser, args.runs):>10,.0f}")
    sizes = np.array([len(b) for b in blobs])
    print(f"bytes per user                median {np.median(sizes):.0f}, p95 {np.percentile(sizes, 95):.0f}, "
          f"max {sizes.max()}   (baseline orjson 12 counts: median {np.median([len(p) for p in plain]):.0f})")


if __name__ == "__main__":
    main()

"""Benchmark of the rolling state: updates/s, feature builds, (de)serialization, bytes per user.

Each figure is the median of several runs, printed next to a trivial baseline measured in the same
run (so that a loaded machine shows up in both). Per-item figures are microseconds per call over
all users (cold-ish caches, as in the worker), not a tight loop over one state.

Run: ``python bench/bench_state.py [--users N]``.

Before/after: ``--ref DIR`` runs the same measurements against another source tree (for example
``mkdir /tmp/ref && git archive HEAD stream schemas | tar -x -C /tmp/ref``), alternating the two
trees in subprocesses ``--rounds`` times, and prints both columns and their ratio. Only public
APIs present in both trees are timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

#: (key, label, unit, higher is better)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("update", "update_user (dict event)", "us", False),
    ("user_row", "user_row", "us", False),
    ("to_bytes", "UserState.to_bytes", "us", False),
    ("from_bytes", "UserState.from_bytes", "us", False),
    ("art_to_bytes", "ArticleState.to_bytes", "us", False),
    ("art_from_bytes", "ArticleState.from_bytes", "us", False),
    ("article_row", "article_row", "us", False),
    ("parse_event", "parse_event (valid event)", "us", False),
    ("prop2", "propensities, 2 arms", "us", False),
    ("prop4", "propensities, 4 arms", "us", False),
    ("bytes_median", "bytes per user, median", "B", False),
    ("bytes_p95", "bytes per user, p95", "B", False),
    ("bytes_max", "bytes per user, max", "B", False),
    ("base_dict", "baseline: dict counter update", "us", False),
    ("base_orjson", "baseline: orjson 12-count round trip", "us", False),
)


def _per_item(fn: Callable[[], int], runs: int) -> float:
    """Median microseconds per item of ``fn`` (which returns how many items it processed)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        n = fn()
        times.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(times)


def measure(users_n: int, days: int, runs: int) -> dict[str, float]:
    """Every metric of :data:`METRICS` for the ``stream`` package on ``sys.path``."""
    import numpy as np

    from stream.bandits.thompson import propensities
    from stream.events.schema import parse_event
    from stream.state import (
        ArticleState,
        UserState,
        article_row,
        new_article_state,
        new_user_state,
        update_article,
        update_user,
        user_row,
    )
    from stream.state.synthetic import generate_events

    events = generate_events(n_users=users_n, days=days, seed=1)
    out: dict[str, float] = {}
    states: dict[str, UserState] = {}

    def feed() -> int:
        st: dict[str, UserState] = defaultdict(new_user_state)
        for e in events:
            update_user(st[e["user_id"]], e)
        states.clear()
        states.update(st)
        return len(events)

    def baseline_counter() -> int:
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for e in events:
            c = counts[e["user_id"]]
            c[e["event_type"]] = c.get(e["event_type"], 0) + 1
        return len(events)

    out["update"] = _per_item(feed, max(1, runs // 2))
    out["base_dict"] = _per_item(baseline_counter, runs)

    users = list(states.values())
    as_of = max(e["event_time"] for e in events)
    # a mix of "now" and later as-of times, as when scoring
    times = [u.max_t + (i % 4) * 600_000 for i, u in enumerate(users)]

    def rows() -> int:
        for u, t in zip(users, times, strict=True):
            user_row(u, t)
        return len(users)

    out["user_row"] = _per_item(rows, runs)
    blobs = [u.to_bytes() for u in users]

    def ser() -> int:
        for u in users:
            u.to_bytes()
        return len(users)

    def de() -> int:
        for b in blobs:
            UserState.from_bytes(b)
        return len(users)

    def base_ser() -> int:
        for u in users:
            orjson.loads(orjson.dumps({"counts": u.tot, "max_t": u.max_t}))
        return len(users)

    out["to_bytes"] = _per_item(ser, runs)
    out["from_bytes"] = _per_item(de, runs)
    out["base_orjson"] = _per_item(base_ser, runs)
    sizes = np.array([len(b) for b in blobs])
    out["bytes_median"] = float(np.median(sizes))
    out["bytes_p95"] = float(np.percentile(sizes, 95))
    out["bytes_max"] = float(sizes.max())

    arts: dict[str, ArticleState] = defaultdict(new_article_state)
    for e in events:
        if "article_id" in e:
            update_article(arts[e["article_id"]], e)
    art_list = list(arts.values())
    art_blobs = [a.to_bytes() for a in art_list]

    def art_ser() -> int:
        for a in art_list:
            a.to_bytes()
        return len(art_list)

    def art_de() -> int:
        for b in art_blobs:
            ArticleState.from_bytes(b)
        return len(art_list)

    def art_rows() -> int:
        for a in art_list:
            article_row(a, as_of)
        return len(art_list)

    out["art_to_bytes"] = _per_item(art_ser, runs)
    out["art_from_bytes"] = _per_item(art_de, runs)
    out["article_row"] = _per_item(art_rows, runs)

    raws = [orjson.dumps(e) for e in events[:20_000]]

    def parse() -> int:
        for r in raws:
            parse_event(r, 16_384)
        return len(raws)

    out["parse_event"] = _per_item(parse, runs)

    rng = np.random.default_rng(3)
    posteriors = {}
    for k in (2, 4):
        imps = rng.integers(100, 50_000, (20, k)).astype(float)
        clicks = np.floor(imps * rng.uniform(0.01, 0.2, (20, k)))
        posteriors[k] = [(1 + c, 1 + i - c) for c, i in zip(clicks, imps, strict=True)]

    for k in (2, 4):

        def prop(k: int = k) -> int:
            for alpha, beta in posteriors[k]:
                propensities(alpha, beta)
            return len(posteriors[k])

        out[f"prop{k}"] = _per_item(prop, runs)
    return out


def _print_one(res: dict[str, float], head: str) -> None:
    print(f"{'metric':<40} {head:>12}")
    for key, label, unit, _ in METRICS:
        print(f"{label:<40} {res[key]:>10.1f} {unit}")


def _run_tree(tree: Path | None, args: argparse.Namespace) -> dict[str, float]:
    """Measure in a subprocess with ``tree`` (or this checkout) first on the import path."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree or root)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--json",
        "--users",
        str(args.users),
        "--days",
        str(args.days),
        "--runs",
        str(args.runs),
    ]
    proc = subprocess.run(cmd, env=env, cwd="/", capture_output=True, check=True)
    res: dict[str, float] = orjson.loads(proc.stdout)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ref", type=Path, help="another source tree (holding stream/ and schemas/) to compare with")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two trees with --ref")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON (used by --ref)")
    args = ap.parse_args()
    if args.json:
        sys.stdout.write(orjson.dumps(measure(args.users, args.days, args.runs)).decode())
        return
    print(
        f"synthetic history of {args.users} users over {args.days} days; median of {args.runs} runs; "
        f"microseconds per call"
    )
    if args.ref is None:
        _print_one(measure(args.users, args.days, args.runs), "this tree")
        return
    mine: list[dict[str, Any]] = []
    ref: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        ref.append(_run_tree(args.ref, args))
        mine.append(_run_tree(None, args))
    print(
        f"{'metric':<40} {'ref':>12} {'this tree':>12} {'ref/this':>9}   (median of {args.rounds} "
        f"alternating rounds; ref = {args.ref})"
    )
    for key, label, unit, _ in METRICS:
        r = statistics.median(x[key] for x in ref)
        m = statistics.median(x[key] for x in mine)
        print(f"{label:<40} {r:>10.1f}{unit:>2} {m:>10.1f}{unit:>2} {r / m if m else float('nan'):>8.2f}x")


if __name__ == "__main__":
    main()

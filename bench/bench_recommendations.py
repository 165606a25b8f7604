"""What a recommendation costs the worker, in process (no broker): the answer, the candidate refresh, the reads.

    python bench/bench_recommendations.py [--articles 2000] [--factors 16] [--reads 50]

* ``answer``: ``Recommendations.answer`` for a user with ``--reads`` reads (fold-in, ranking, top 10)
  over the fresh articles, candidates cached (as between two refreshes);
* ``refresh``: rebuilding the candidates from ``--articles`` stored article states, all changed
  (the worst case: every state decoded) and none changed (only the table scan);
* ``record``: appending the reads of simulated events (300 users x 4 days) per event, dict store.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from simulator import SimConfig, generate
from stream.models.recommend import RecommendModel
from stream.state.article import ArticleState, update_article
from stream.worker.recommendations import Recommendations

HOUR = 3_600_000
T0 = 1_700_000_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--articles", type=int, default=2000)
    ap.add_argument("--factors", type=int, default=16)
    ap.add_argument("--reads", type=int, default=50)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    arts: dict[bytes, bytes] = {}
    for i in range(a.articles):
        st = ArticleState()
        first = T0 + int(rng.integers(0, 8 * 24 * HOUR))
        for t in sorted((first + rng.integers(0, 48 * HOUR, size=30)).tolist()):
            update_article(st, {"event_type": "article_view", "event_time": int(t)})
        arts[f"a{i:05d}".encode()] = st.to_bytes()
    items = [f"a{i:05d}" for i in range(a.articles)]
    factors = rng.gamma(0.5, 1.0, (a.articles, a.factors))
    params = {"weights": {"cf": 0.5, "content": 0.25, "popularity": 0.25}, "item_ids": items}
    recs = Recommendations(None, {}, arts, 96, 200)  # type: ignore[arg-type]
    recs.refresh_model = lambda: None  # type: ignore[method-assign]
    recs.model = RecommendModel.from_params("1", {**params, "item_factors": factors.tolist()})
    for i, aid in enumerate(items):
        recs.content[aid] = (f"b{i % 6}", f"c{i % 10}")

    t = time.perf_counter()
    cands = recs.candidates()
    cold = time.perf_counter() - t
    recs._cands_at = -1e18
    t = time.perf_counter()
    recs.candidates()
    warm = time.perf_counter() - t
    print(
        f"refresh: {len(arts)} article states, {len(cands)} fresh: "
        f"all changed {cold * 1e3:.0f} ms, none {warm * 1e3:.1f} ms"
    )

    reads = items[: a.reads]
    recs.answer("u", reads, 10)  # first call: imports, caches
    times = []
    for _ in range(500):
        t = time.perf_counter()
        recs.answer("u", reads, 10)
        times.append(time.perf_counter() - t)
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    print(f"answer: {a.reads} reads, {a.factors} factors, {len(cands)} candidates: p50 {p50:.2f} ms, p99 {p99:.2f} ms")

    events = list(generate(SimConfig(n_users=300, days=4, seed=11)).iter_events())
    sink = Recommendations(None, {}, {}, 96, 200)  # type: ignore[arg-type]
    t = time.perf_counter()
    for i in range(0, len(events), 500):
        sink.record(events[i : i + 500])
    per = (time.perf_counter() - t) / len(events) * 1e6
    print(f"record: {len(events)} events in batches of 500: {per:.2f} µs an event (dict store)")


if __name__ == "__main__":
    main()

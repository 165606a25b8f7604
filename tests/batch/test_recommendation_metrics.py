"""The recommendation step's popularity, recent-popularity, exposure and oracle precision@10 equal a hand computation.

A tiny seeded history (30 users, 40 articles, 6 days) goes through ``recommendation(ctx)`` with a
stand-in ClickHouse that returns it; the test computes the split, candidates, rankings and
precision itself, in plain Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from batch_training.context import Context, get_profile
from batch_training.recommendation import recommendation
from stream.config import load_settings

HOUR = 3_600_000
N_USERS, N_ARTS, SPAN_MS = 30, 40, 6 * 24 * HOUR


def world(seed: int = 4) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows = []
    times = rng.choice(SPAN_MS, size=N_USERS * 9, replace=False)  # distinct times: no ties in the split
    i = 0
    for u in range(N_USERS):
        for a in rng.choice(N_ARTS, size=int(rng.integers(5, 10)), replace=False).tolist():
            rows.append({"user_id": f"u{u:02d}", "article_id": f"a{a:02d}", "t": int(times[i])})
            i += 1
    cons = pd.DataFrame(rows)
    span = cons.groupby("article_id")["t"].agg(["min", "max"])
    items = pd.DataFrame(
        {
            "article_id": span.index,
            "brand": [f"b{int(x)}" for x in rng.integers(0, 3, len(span))],
            "category": [f"c{int(x)}" for x in rng.integers(0, 3, len(span))],
            "first_t": span["min"].to_numpy(),
            "last_t": span["max"].to_numpy(),
        }
    )
    arts = pd.DataFrame(
        {
            "article_id": items["article_id"],
            "publish_time": items["first_t"] - rng.integers(0, 2 * HOUR, len(items)),
            "brand_index": [int(b[1:]) for b in items["brand"]],
            "category_index": [int(c[1:]) for c in items["category"]],
            "topic": rng.integers(0, 4, len(items)),
            "quality_logit": rng.normal(size=len(items)),
            "popularity_logit": rng.normal(size=len(items)),
            "popularity_decay_hours": 18.0,
            "feed_max_age_hours": 96.0,
        }
    )
    # impressions + views per (article, hour): the article's reads and as many impressions again
    hours = cons.assign(hour=cons["t"] // HOUR)
    hourly = pd.concat([hours, hours.sample(frac=1.0, replace=True, random_state=seed)])
    hourly = hourly.groupby(["article_id", "hour"]).size().rename("n").reset_index()
    prefs = pd.DataFrame(
        [
            {"user_id": f"u{u:02d}", "kind": kind, "key": k, "logit": float(rng.normal())}
            for u in range(N_USERS)
            for kind, n in (("brand", 3), ("category", 3), ("topic", 4))
            for k in range(n)
        ]
    )
    return {"cons": cons, "items": items, "truth_articles": arts, "prefs": prefs, "hourly": hourly}


class StandIn:
    """Answers the step's queries from the frames (the step's SQL is covered by the pipeline tests)."""

    def __init__(self, w: dict[str, pd.DataFrame]) -> None:
        self.w = w

    def query_df(self, sql: str) -> pd.DataFrame:
        if "GROUP BY article_id, hour" in sql:
            return self.w["hourly"]
        if "count()" in sql:
            return pd.DataFrame({"n": [1]})
        if "truth_articles" in sql:
            return self.w["truth_articles"]
        if "truth_user_preferences" in sql:
            return self.w["prefs"]
        if "GROUP BY user_id, article_id" in sql:
            return self.w["cons"]
        return self.w["items"]

    def close(self) -> None:
        pass


def hand(w: dict[str, pd.DataFrame], window_hours: float) -> dict[str, float]:
    """precision@10 of popularity, recent popularity, exposure (the hybrid's window) and oracle, the plain way."""
    reads: dict[str, list[tuple[int, str]]] = {}
    for r in w["cons"].itertuples():
        reads.setdefault(r.user_id, []).append((r.t, r.article_id))
    train: dict[str, set[str]] = {}
    held: dict[str, list[tuple[int, str]]] = {}
    for u, rs in reads.items():
        rs.sort()
        if len(rs) >= 5:
            train[u], held[u] = {a for _, a in rs[:-2]}, rs[-2:]
        else:
            train[u] = {a for _, a in rs}
    pop = {a: sum(a in s for s in train.values()) for a in w["items"]["article_id"]}
    alive = {r.article_id: (r.first_t, r.last_t) for r in w["items"].itertuples()}
    everything = [(t, a) for rs in reads.values() for t, a in rs]
    ta = w["truth_articles"].set_index("article_id")
    pref = {(r.user_id, r.kind, r.key): r.logit for r in w["prefs"].itertuples()}
    hourly = {(r.article_id, r.hour): r.n for r in w["hourly"].itertuples()}
    prec: dict[str, list[float]] = {"popularity": [], "recent_popularity": [], "exposure": [], "oracle": []}
    for u, h in sorted(held.items()):
        lo, hi = h[0][0], h[1][0]
        cands = [a for a, (f, last) in alive.items() if a not in train[u] and f <= hi and last >= lo]
        recent = {a: 0.0 for a in cands}
        for t, a in everything:
            if a in recent and lo - 3 * 24 * HOUR <= t < lo:
                recent[a] += 0.5 ** ((lo - t) / (12 * HOUR))

        # exposure: impressions + views per hour in the whole hours of the window before lo's hour,
        # over the hours of the window the article existed
        end = lo // HOUR * HOUR
        start = end - int(window_hours) * HOUR
        exposure = {}
        for a in cands:
            n = sum(hourly.get((a, hh), 0) for hh in range(start // HOUR, end // HOUR))
            existed = end - max(start, alive[a][0])
            exposure[a] = n / (max(existed, HOUR / 2) / HOUR) if existed > 0 else 0.0

        def oracle(a: str, u: str = u, lo: int = lo) -> float:
            r = ta.loc[a]
            age_h = (lo - r["publish_time"]) / HOUR
            if not 0 <= age_h < 96:
                return -1e6
            return float(
                r["popularity_logit"]
                - age_h / 18.0
                + r["quality_logit"]
                + pref[(u, "brand", r["brand_index"])]
                + pref[(u, "category", r["category_index"])]
                + pref[(u, "topic", r["topic"])]
            )

        want = {a for _, a in h}
        rankers = (("popularity", pop.get), ("recent_popularity", recent.get), ("exposure", exposure.get))
        for name, score in (*rankers, ("oracle", oracle)):
            top = sorted(cands, key=lambda a, s=score: (-s(a), a))[:10]  # type: ignore[misc]
            prec[name].append(len(want & set(top)) / 10)
    return {k: sum(v) / len(v) for k, v in prec.items()}


def test_precision_of_the_baselines_and_the_oracle_equals_a_hand_computation(tmp_path: Path) -> None:
    w = world()
    settings = load_settings(data_dir=tmp_path, models_dir=tmp_path / "models", reports_dir=tmp_path / "reports")
    ctx = Context(settings, get_profile("fast"), progress=False, _ch=StandIn(w))  # type: ignore[arg-type]
    result: dict[str, Any] = recommendation(ctx)
    models = result["evaluation"]["models"]
    want = hand(w, result["evaluation"]["hybrid_config"]["window_hours"])
    assert result["evaluation"]["users"] == len([u for u, g in w["cons"].groupby("user_id") if len(g) >= 5])
    for name, p in want.items():
        assert models[name]["precision@10"] == pytest.approx(p, abs=1e-12), name
    table = {r["ranker"]: r for r in result["evaluation"]["table"]}
    assert table["oracle"]["value"] == pytest.approx(want["oracle"])
    assert table["recent-popularity"]["vs_popularity"] == pytest.approx(want["recent_popularity"] / want["popularity"])
    assert (tmp_path / "reports" / "training" / "recommendation.md").read_text().count("\n| ") == 5

"""Online recommendations: the NNLS fold-in against scipy on the full system, exclusions, freshness, reasons."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import nnls

from batch_training.recommendation import exposure_rates, hourly_counts
from stream.models.recommend import Candidate, Candidates, RecommendModel, blend, exposure_rate, fold_in, rank
from stream.state.article import ArticleState, update_article
from stream.worker.recommendations import Recommendations, add_reads, hour_counts, unpack_reads

HOUR = 3_600_000
T0 = 1_700_000_000_000


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fold_in_equals_nnls_of_the_full_user_row(seed: int) -> None:
    rng = np.random.default_rng(seed)
    factors = rng.gamma(0.5, 1.0, size=(300, 8))  # items x k, non-negative like NMF's
    read = sorted(rng.choice(300, size=12, replace=False).tolist())
    r = np.zeros(300)
    r[read] = np.log(2.0)  # the interaction value of the batch matrix
    want, _ = nnls(factors, r)  # min ||F w - r||, w >= 0, over all 300 items
    got = fold_in(factors, read, np.log(2.0))
    assert got == pytest.approx(want, abs=1e-8)
    assert np.linalg.norm(factors @ got - r) == pytest.approx(np.linalg.norm(factors @ want - r), abs=1e-10)


def test_fold_in_of_no_reads_is_zero() -> None:
    assert fold_in(np.ones((5, 3)), [], 1.0).tolist() == [0.0, 0.0, 0.0]


def test_reads_are_distinct_newest_last_and_bounded() -> None:
    reads = add_reads([], ["a", "b", "a", "c"], 10)
    assert reads == ["b", "a", "c"]
    assert add_reads(reads, ["d", "e"], 3) == ["c", "d", "e"]
    assert unpack_reads("\n".join(reads).encode()) == reads and unpack_reads(None) == []


def _model(items: list[str], factors: np.ndarray, weights: tuple[float, float, float]) -> RecommendModel:
    return RecommendModel.from_params(
        "7",
        {
            "weights": dict(zip(("cf", "content", "popularity"), weights, strict=True)),
            "item_ids": items,
            "item_factors": factors.tolist(),
            "interaction": float(np.log(2.0)),
            "popularity": {"half_life_hours": 12.0},
        },
    )


def _article(views_at: list[int], first: int) -> bytes:
    st = ArticleState()
    update_article(st, {"event_type": "article_impression", "event_time": first})
    for t in views_at:
        update_article(st, {"event_type": "article_view", "event_time": t})
    return st.to_bytes()


class _Registry:
    """A registry with one recommendation model (the API's model loading is tested with the worker)."""

    def __init__(self, model: RecommendModel | None) -> None:
        self.model = model


def _recs(model: RecommendModel | None, articles: dict[bytes, bytes], max_age_hours: float) -> Recommendations:
    recs = Recommendations(None, {}, articles, max_age_hours, 50)  # type: ignore[arg-type]
    recs.refresh_model = lambda: None  # type: ignore[method-assign]
    recs.model = model
    return recs


def test_answer_excludes_reads_and_stale_articles_and_names_reasons() -> None:
    newest = T0 + 100 * HOUR
    articles = {
        b"old": _article([newest - 2 * HOUR] * 9, T0),  # first seen 100 h before the newest event
        b"hot": _article([newest - HOUR] * 5 + [newest], newest - 10 * HOUR),
        b"read": _article([newest - HOUR] * 20, newest - 5 * HOUR),
        b"taste": _article([newest - 30 * HOUR], newest - 40 * HOUR),
        b"same-brand": _article([newest - 30 * HOUR], newest - 40 * HOUR),
    }
    # item factors: "read" and "taste" share the first factor; "hot" and "old" the second
    items = ["hot", "old", "read", "taste"]
    factors = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    recs = _recs(_model(items, factors, (0.6, 0.3, 0.1)), articles, max_age_hours=48)
    events: list[dict[str, Any]] = [
        {"event_type": "article_view", "user_id": "u", "article_id": "read", "brand": "b1", "category": "c1"},
        {
            "event_type": "article_impression",
            "user_id": "u",
            "article_id": "same-brand",
            "brand": "b1",
            "category": "c1",
        },
        {"event_type": "article_impression", "user_id": "v", "article_id": "hot", "brand": "b2", "category": "c2"},
    ]
    recs.record(events)
    reads = unpack_reads(recs.reads["u"])
    assert reads == ["read"] and "v" not in recs.reads  # an impression is not a read
    body = recs.answer("u", reads, 10)
    got = {r["article_id"]: r for r in body["recommendations"]}
    assert set(got) == {"hot", "taste", "same-brand"}  # not read, not older than 48 h
    assert got["taste"]["reason"] == "collaborative"  # the read's factor
    assert got["same-brand"]["reason"] == "content"  # unknown to the factors, same brand and category
    assert got["hot"]["reason"] == "popular"
    scores = [r["score"] for r in body["recommendations"]]
    assert scores == sorted(scores, reverse=True) and body["model_version"] == "7" and body["reads"] == 1


def test_without_a_model_exposure_decides() -> None:
    t0 = T0 // HOUR * HOUR
    newest = t0 + 20 * HOUR + 5
    articles = {
        b"a": _article([newest - HOUR] * 3 + [newest] * 50, t0 + 18 * HOUR),
        b"b": _article([t0 + 2 * HOUR] * 40 + [newest - 2 * HOUR] * 2, t0),
    }
    body = _recs(None, articles, 96).answer("u", [], 2)
    # the 12 whole hours before the newest event's hour: a has 1 impression + 3 views in the 2 hours
    # since it was first seen (2 an hour; the 50 views of the current hour do not count yet), b 2
    # views in 12 hours (its 40 views are older than the window)
    assert [r["article_id"] for r in body["recommendations"]] == ["a", "b"]
    assert {r["reason"] for r in body["recommendations"]} == {"popular"} and body["model_version"] is None


def test_the_worker_reads_the_exposure_rate_from_the_article_state() -> None:
    t0 = T0 // HOUR * HOUR
    st = ArticleState()
    events = [("article_impression", t0 + 3 * HOUR + 1)] * 2 + [("article_view", t0 + 5 * HOUR)] * 4
    events += [("article_click", t0 + 5 * HOUR), ("article_impression", t0 + 9 * HOUR)]
    for kind, t in events:
        update_article(st, {"event_type": kind, "event_time": t})
    counts = hour_counts(st)
    assert counts == {t0 // HOUR + 3: 2, t0 // HOUR + 5: 4, t0 // HOUR + 9: 1}  # clicks are not counted
    # at 9:30 with a 12 h window: hours 0..8 counted, 6 events since 3:00:00.001
    got = exposure_rate(counts, st.first_t, t0 + 9 * HOUR + HOUR // 2, 12)
    assert got == pytest.approx(6 / ((6 * HOUR - 1) / HOUR))


@pytest.mark.parametrize("seed", [0, 1])
def test_training_evaluates_the_exposure_rate_the_worker_serves(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t0 = T0 // HOUR * HOUR
    arts = pd.Index([f"a{i}" for i in range(8)])
    first = t0 + rng.integers(0, 30 * HOUR, len(arts))
    rows = [
        (a, int(h), int(rng.integers(1, 9)))
        for i, a in enumerate(arts)
        for h in range(first[i] // HOUR, t0 // HOUR + 40)
        if rng.random() < 0.6
    ]
    frame = pd.DataFrame(rows, columns=["article_id", "hour", "n"])
    at = t0 + rng.integers(0, 45 * HOUR, 6)
    for window in (6.0, 12.0):
        offline = exposure_rates(hourly_counts(frame, arts), first, at, window)
        for i, a in enumerate(arts):
            counts = {h: n for art, h, n in rows if art == a}
            for j, now in enumerate(at.tolist()):
                assert offline[j, i] == pytest.approx(exposure_rate(counts, int(first[i]), now, window), abs=1e-12)


def test_the_worker_ranks_by_the_evaluated_blend() -> None:
    rng = np.random.default_rng(3)
    items = [f"a{i:02d}" for i in range(30)]
    factors = rng.gamma(0.5, 1.0, (30, 4))
    model = _model(items, factors, (0.5, 1.0, 1.0))
    cands = Candidates(
        [Candidate(a, f"b{i % 3}", f"c{i % 4}", float(rng.gamma(1.0))) for i, a in enumerate(items)], model
    )
    reads = ["a01", "a07"]
    got = rank(model, reads, [("b1", "c1"), ("b1", "c3")], cands, 28)
    keep = [i for i, a in enumerate(items) if a not in reads]
    user = fold_in(factors, [1, 7], model.interaction)
    cf = factors[keep] @ user
    # content: cosine of (brand, category) one-hots with the reads' profile b1: 2, c1: 1, c3: 1
    prof = {"b1": 2.0, "c1": 1.0, "c3": 1.0}
    cb = np.array([(prof.get(f"b{i % 3}", 0) + prof.get(f"c{i % 4}", 0)) / (6**0.5 * 2**0.5) for i in keep])
    pop = cands.popularity[keep]
    want = blend(pop / pop.max(), cb / cb.max(), cf / cf.max(), 0.5, 1.0)
    assert [r["article_id"] for r in got] == [items[keep[i]] for i in np.argsort(-want, kind="stable")]
    assert [r["score"] for r in got] == pytest.approx(np.exp(sorted(want, reverse=True)), abs=1e-6)


def test_rank_of_nothing_is_empty() -> None:
    assert rank(None, [], [], [], 10) == []

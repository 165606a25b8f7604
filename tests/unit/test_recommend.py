"""Online recommendations: the NNLS fold-in against scipy on the full system, exclusions, freshness, reasons."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.optimize import nnls

from stream.models.recommend import RecommendModel, fold_in, rank
from stream.state.article import ArticleState, update_article
from stream.worker.recommendations import Recommendations, add_reads, unpack_reads

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


def test_without_a_model_popularity_decides() -> None:
    newest = T0 + 10 * HOUR
    articles = {b"a": _article([newest] * 3, T0), b"b": _article([newest - 24 * HOUR + 1] * 6, T0)}
    body = _recs(None, articles, 96).answer("u", [], 2)
    # b: 6 views a day old weigh at most 6 * 0.5 ** (23 / 12) < 1.6; a: 3 views of the last hour at least 2.8
    assert [r["article_id"] for r in body["recommendations"]] == ["a", "b"]
    assert {r["reason"] for r in body["recommendations"]} == {"popular"} and body["model_version"] is None


def test_rank_of_nothing_is_empty() -> None:
    assert rank(None, [], [], [], 10) == []

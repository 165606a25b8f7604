"""Online recommendations from the registry's ``recommendation`` model (batch_training/recommendation.py).

The model (JSON, alias production) holds NMF item factors, the hybrid's weights, the content
vocabulary (brand/category) and the exposure window. Per request, pure functions here, the same
ones batch training evaluates the model with:

- :func:`fold_in`: the user's vector from their reads with the item factors fixed, the
  non-negative least squares ``min ||H^T w - r||, w >= 0`` of NMF's own objective;
- :func:`exposure_rate`: an article's impressions and views per hour over the last complete
  hours (at most ``window_hours``, and only since it was first seen): how much the site shows
  it now, the best estimate of how often anyone reads it next (news articles fade within hours);
- :func:`blend`: ``log(rate / max rate + POP_FLOOR) + w_content * content + w_cf * collaborative``:
  a user reads an article about as often as it is shown times how much they like it, so the
  personal parts multiply the exposure (add to its log);
- :func:`rank`: the ``k`` best, with the reason of each article: the part that weighs most.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls

from stream.models.registry import ModelVersion

NAME = "recommendation"
REASONS = ("collaborative", "content", "popular")
HOUR_MS = 3_600_000
#: the exposure part is ``log(rate / best rate + POP_FLOOR)``: an article not shown lately is not ruled out
POP_FLOOR = 0.01
#: exposure window of models trained before it was a parameter
DEFAULT_WINDOW_HOURS = 12.0


@dataclass(frozen=True)
class RecommendModel:
    """The parameters the worker needs, with the Gram factor of the item factors precomputed."""

    version: str
    index: Mapping[str, int]
    #: (n_items, k) NMF item factors (H transposed)
    factors: np.ndarray
    weights: tuple[float, float, float]  # collaborative, content, popularity
    interaction: float
    #: the exposure rate counts the last this many complete hours
    window_hours: float
    vocabulary: tuple[str, ...]

    @classmethod
    def from_params(cls, version: str, params: Mapping[str, Any]) -> RecommendModel:
        w = params["weights"]
        factors = np.asarray(params["item_factors"], dtype=np.float64).reshape(len(params["item_ids"]), -1)
        return cls(
            version=version,
            index={a: i for i, a in enumerate(params["item_ids"])},
            factors=factors,
            weights=(float(w["cf"]), float(w["content"]), float(w["popularity"])),
            interaction=float(params.get("interaction", np.log1p(1.0))),
            window_hours=float(params.get("popularity", {}).get("window_hours", DEFAULT_WINDOW_HOURS)),
            vocabulary=tuple(params.get("content_vocabulary", ())),
        )

    @classmethod
    def load(cls, mv: ModelVersion) -> RecommendModel:
        return cls.from_params(mv.version, json.loads(mv.model_file.read_text()))


def fold_in(factors: np.ndarray, read: Sequence[int], interaction: float) -> np.ndarray:
    """The user's NMF vector from the item rows ``read`` (their reads known to the model).

    Solves ``min_w ||factors @ w - r||, w >= 0`` with ``r`` = ``interaction`` on the read items and
    0 elsewhere, as NMF fitted the user rows. Through the k x k Gram matrix (the same minimiser,
    without the n_items-long system): with ``G = F^T F = L L^T`` it is
    ``min ||L^T w - L^-1 F^T r||``.
    """
    k = factors.shape[1]
    if len(read) == 0:
        return np.zeros(k)
    b = interaction * factors[np.asarray(read, dtype=np.intp)].sum(axis=0)
    gram = factors.T @ factors
    try:
        low = np.linalg.cholesky(gram)
    except np.linalg.LinAlgError:  # degenerate factors: the long system
        r = np.zeros(factors.shape[0])
        r[np.asarray(read, dtype=np.intp)] = interaction
        return np.asarray(nnls(factors, r)[0])
    return np.asarray(nnls(low.T, np.linalg.solve(low, b))[0])


def exposure_rate(hour_counts: Mapping[int, int], first_t: int, now_ms: int, window_hours: float) -> float:
    """Impressions and views per hour of an article over the complete hours before ``now_ms``.

    ``hour_counts`` maps an hour (``t // HOUR_MS``) to the article's impressions + views in it.
    The hours counted are the last ``window_hours`` whole hours before the one holding ``now_ms``
    (the current hour is not complete); the rate divides by the part of them since ``first_t``
    (at least half an hour), so a young article is not penalised for the hours before it existed.

    >>> exposure_rate({9: 4, 10: 6, 11: 50}, first_t=9 * HOUR_MS, now_ms=11 * HOUR_MS + 5, window_hours=12)
    5.0
    >>> exposure_rate({9: 4, 10: 6}, first_t=9 * HOUR_MS, now_ms=11 * HOUR_MS, window_hours=1)
    6.0
    """
    end_h = now_ms // HOUR_MS
    start_h = end_h - int(window_hours)
    n = sum(c for h, c in hour_counts.items() if start_h <= h < end_h)
    exposed = end_h * HOUR_MS - max(start_h * HOUR_MS, first_t)
    return n * HOUR_MS / max(exposed, HOUR_MS // 2) if exposed > 0 else 0.0


def blend(rate: np.ndarray, content: np.ndarray, collaborative: np.ndarray, w_cf: float, w_cb: float) -> np.ndarray:
    """The hybrid's score: ``log(rate + POP_FLOOR) + w_cb * content + w_cf * collaborative``.

    All three are over the same candidates, each max-normalised to [0, 1] by the caller (the
    offline evaluation per user row, the worker per request), so the scale of the traffic does
    not matter.

    >>> blend(np.array([1.0, 0.5]), np.array([0.0, 1.0]), np.zeros(2), 0.0, 1.0).round(3).tolist()  # ln 0.51 + 1
    [0.01, 0.327]
    """
    return np.log(rate + POP_FLOOR) + w_cb * content + w_cf * collaborative


@dataclass(frozen=True)
class Candidate:
    """An article that may be recommended: its content and exposure rate (:func:`exposure_rate`)."""

    article_id: str
    brand: str | None
    category: str | None
    popularity: float


class Candidates:
    """Candidates as arrays, in article id order (ties rank by id), with their rows in ``model``."""

    def __init__(self, cands: Sequence[Candidate], model: RecommendModel | None) -> None:
        cands = sorted(cands, key=lambda c: c.article_id)
        self.ids = [c.article_id for c in cands]
        self.pos = {a: i for i, a in enumerate(self.ids)}
        self.popularity = np.array([c.popularity for c in cands], dtype=float)
        index = model.index if model is not None else {}
        self.rows = np.array([index.get(a, -1) for a in self.ids], dtype=np.intp)
        self.brands = [c.brand for c in cands]
        self.categories = [c.category for c in cands]
        self.brand_code, self.brand_names = _codes(self.brands)
        self.category_code, self.category_names = _codes(self.categories)

    def __len__(self) -> int:
        return len(self.ids)


def _codes(values: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """Integer codes of ``values`` (-1 = None) and the names they index."""
    names = sorted({v for v in values if v is not None})
    of = {v: i for i, v in enumerate(names)}
    return np.array([of[v] if v is not None else -1 for v in values], dtype=np.intp), names


def content_scores(read: Sequence[tuple[str | None, str | None]], cands: Candidates) -> np.ndarray:
    """Cosine of each candidate's brand/category one-hot with the profile of the reads.

    The profile sums each read's one-hot vector normalised to length 1.

    >>> c = Candidates([Candidate("x", "b", "c", 0.0), Candidate("y", "b", "d", 0.0)], None)
    >>> content_scores([("b", "c")], c).round(3).tolist()
    [1.0, 0.5]
    """
    weight_b: dict[str, float] = {}
    weight_c: dict[str, float] = {}
    for brand, category in read:
        n = (brand is not None) + (category is not None)
        if brand is not None:
            weight_b[brand] = weight_b.get(brand, 0.0) + n**-0.5
        if category is not None:
            weight_c[category] = weight_c.get(category, 0.0) + n**-0.5
    norm = float(np.sqrt(sum(v * v for v in weight_b.values()) + sum(v * v for v in weight_c.values())))
    if norm == 0 or len(cands) == 0:
        return np.zeros(len(cands))
    pb = np.array([weight_b.get(b, 0.0) for b in cands.brand_names] + [0.0])  # code -1 -> the last, 0
    pc = np.array([weight_c.get(c, 0.0) for c in cands.category_names] + [0.0])
    n_feats = (cands.brand_code >= 0).astype(float) + (cands.category_code >= 0)
    dot = pb[cands.brand_code] + pc[cands.category_code]
    return np.where(n_feats > 0, dot / (norm * np.sqrt(np.maximum(n_feats, 1.0))), 0.0)


def _norm(a: np.ndarray) -> np.ndarray:
    m = float(a.max(initial=0.0))
    return a / m if m > 0 else a


def rank(
    model: RecommendModel | None,
    reads: Sequence[str],
    read_content: Sequence[tuple[str | None, str | None]],
    cands: Candidates,
    k: int,
) -> list[dict[str, Any]]:
    """The ``k`` best candidates not in ``reads`` as ``{article_id, score, reason}``, best first (ties: id).

    Each part is max-normalised over the candidates left and mixed by :func:`blend`; the score
    is ``exp`` of the blend (the exposure rate relative to the best candidate's, times the user's
    affinities: > 0). The reason is the largest of the weighted collaborative part, the weighted
    content part and the normalised exposure rate. Without a model: exposure only.
    """
    keep = np.ones(len(cands), dtype=bool)
    for a in reads:
        i = cands.pos.get(a)
        if i is not None:
            keep[i] = False
    idx = np.flatnonzero(keep)
    if len(idx) == 0 or k <= 0:
        return []
    pop = _norm(cands.popularity[idx])
    if model is None:
        parts = np.vstack([np.zeros(len(idx)), np.zeros(len(idx)), pop])
        score = blend(pop, parts[0], parts[1], 0.0, 0.0)
    else:
        w_cf, w_cb, _ = model.weights
        known = [model.index[a] for a in reads if a in model.index]
        user = fold_in(model.factors, known, model.interaction)
        rows = cands.rows[idx]
        cf = np.zeros(len(idx))
        have = rows >= 0
        cf[have] = model.factors[rows[have]] @ user
        cb = content_scores(read_content, cands)[idx]
        parts = np.vstack([w_cf * _norm(cf), w_cb * _norm(cb), pop])
        score = blend(pop, _norm(cb), _norm(cf), w_cf, w_cb)
    top = np.argsort(-score, kind="stable")[:k]  # idx is in id order: ties go to the lower id
    reason = np.where(parts.max(axis=0) > 0, parts.argmax(axis=0), 2)  # nothing known: popular
    return [
        {"article_id": cands.ids[idx[i]], "score": round(float(np.exp(score[i])), 6), "reason": REASONS[int(reason[i])]}
        for i in top.tolist()
    ]

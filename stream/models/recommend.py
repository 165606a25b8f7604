"""Online recommendations from the registry's ``recommendation`` model (batch_training/recommendation.py).

The model (JSON, alias production) holds NMF item factors, the hybrid's weights, the content
vocabulary (brand/category) and the popularity half-life. Per request, pure functions here:

- :func:`fold_in`: the user's vector from their reads with the item factors fixed, the
  non-negative least squares ``min ||H^T w - r||, w >= 0`` of NMF's own objective;
- :func:`rank`: the max-normalised mix of collaborative (``w . h_a``), content (cosine of the
  brand/category profile of the reads) and popularity (time-decayed views), with the reason of
  each article: the part that contributed most.
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


@dataclass(frozen=True)
class RecommendModel:
    """The parameters the worker needs, with the Gram factor of the item factors precomputed."""

    version: str
    index: Mapping[str, int]
    #: (n_items, k) NMF item factors (H transposed)
    factors: np.ndarray
    weights: tuple[float, float, float]  # collaborative, content, popularity
    interaction: float
    half_life_hours: float
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
            half_life_hours=float(params.get("popularity", {}).get("half_life_hours", 12.0)),
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


@dataclass(frozen=True)
class Candidate:
    """An article that may be recommended: its content and time-decayed popularity."""

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

    Each part is max-normalised over the candidates left. Without a model: popularity only.
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
    else:
        w_cf, w_cb, w_pop = model.weights
        known = [model.index[a] for a in reads if a in model.index]
        user = fold_in(model.factors, known, model.interaction)
        rows = cands.rows[idx]
        cf = np.zeros(len(idx))
        have = rows >= 0
        cf[have] = model.factors[rows[have]] @ user
        cb = content_scores(read_content, cands)[idx]
        parts = np.vstack([w_cf * _norm(cf), w_cb * _norm(cb), w_pop * pop])
    score = parts.sum(axis=0)
    top = np.argsort(-score, kind="stable")[:k]  # idx is in id order: ties go to the lower id
    reason = parts.argmax(axis=0)
    return [
        {"article_id": cands.ids[idx[i]], "score": round(float(score[i]), 6), "reason": REASONS[int(reason[i])]}
        for i in top.tolist()
    ]

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
    from scipy.optimize import nnls

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


def _content(brand: str | None, category: str | None) -> set[str]:
    return {f"brand={brand}" if brand is not None else "", f"category={category}" if category else ""} - {""}


def content_scores(read: Sequence[tuple[str | None, str | None]], cands: Sequence[Candidate]) -> np.ndarray:
    """Cosine of each candidate's brand/category one-hot with the (normalised) profile of the reads."""
    profile: dict[str, float] = {}
    for brand, category in read:
        feats = _content(brand, category)
        for f in feats:
            profile[f] = profile.get(f, 0.0) + 1.0 / np.sqrt(len(feats))
    norm = float(np.sqrt(sum(v * v for v in profile.values())))
    out = np.zeros(len(cands))
    if norm == 0:
        return out
    for i, c in enumerate(cands):
        feats = _content(c.brand, c.category)
        if feats:
            out[i] = sum(profile.get(f, 0.0) for f in feats) / (norm * np.sqrt(len(feats)))
    return out


def _norm(a: np.ndarray) -> np.ndarray:
    m = float(a.max(initial=0.0))
    return a / m if m > 0 else a


def rank(
    model: RecommendModel | None,
    reads: Sequence[str],
    read_content: Sequence[tuple[str | None, str | None]],
    cands: Sequence[Candidate],
    k: int,
) -> list[dict[str, Any]]:
    """The ``k`` best candidates as ``{article_id, score, reason}``, best first (ties: article id).

    Without a model: popularity only. ``cands`` must already exclude what the user read.
    """
    if not cands or k <= 0:
        return []
    pop = _norm(np.array([c.popularity for c in cands], dtype=float))
    if model is None:
        parts = np.vstack([np.zeros(len(cands)), np.zeros(len(cands)), pop])
    else:
        w_cf, w_cb, w_pop = model.weights
        known = [model.index[a] for a in reads if a in model.index]
        user = fold_in(model.factors, known, model.interaction)
        rows = np.array([model.index.get(c.article_id, -1) for c in cands])
        cf = np.zeros(len(cands))
        have = rows >= 0
        cf[have] = model.factors[rows[have]] @ user
        parts = np.vstack([w_cf * _norm(cf), w_cb * _norm(content_scores(read_content, cands)), w_pop * pop])
    score = parts.sum(axis=0)
    order = sorted(range(len(cands)), key=lambda i: (-score[i], cands[i].article_id))[:k]
    return [
        {
            "article_id": cands[i].article_id,
            "score": round(float(score[i]), 6),
            "reason": REASONS[int(np.argmax(parts[:, i]))],
        }
        for i in order
    ]

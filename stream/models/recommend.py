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
- :func:`rank`: the ``k`` best, with the reason of each article: the part that weighs most;
  :func:`rank_many` the same for several users at once (one matrix product for the batch's
  users at ``session_start``; :func:`rank` is its one-user case, so both rank alike).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
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

    @cached_property
    def gram_factor(self) -> np.ndarray | None:
        """The Cholesky factor of ``factors^T factors`` (once per model), None when it has none."""
        return gram_factor(self.factors)


def gram_factor(factors: np.ndarray) -> np.ndarray | None:
    """``L`` with ``L L^T = factors^T factors``, or None when that matrix is not positive definite."""
    try:
        return np.linalg.cholesky(factors.T @ factors)
    except np.linalg.LinAlgError:
        return None


_UNSET: Any = object()


def fold_in(factors: np.ndarray, read: Sequence[int], interaction: float, low: Any = _UNSET) -> np.ndarray:
    """The user's NMF vector from the item rows ``read`` (their reads known to the model).

    Solves ``min_w ||factors @ w - r||, w >= 0`` with ``r`` = ``interaction`` on the read items and
    0 elsewhere, as NMF fitted the user rows. Through the k x k Gram matrix (the same minimiser,
    without the n_items-long system): with ``G = F^T F = L L^T`` it is
    ``min ||L^T w - L^-1 F^T r||``. ``low``: that ``L`` (:func:`gram_factor`) when known.
    """
    k = factors.shape[1]
    if len(read) == 0:
        return np.zeros(k)
    b = interaction * factors[np.asarray(read, dtype=np.intp)].sum(axis=0)
    if low is _UNSET:
        low = gram_factor(factors)
    if low is None:  # degenerate factors: the long system
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
    return np.asarray(content_matrix([read], cands)[0])


def content_matrix(reads: Sequence[Sequence[tuple[str | None, str | None]]], cands: Candidates) -> np.ndarray:
    """:func:`content_scores` of each user's reads, as the rows of one (users x candidates) array."""
    n_b, n_c = len(cands.brand_names), len(cands.category_names)
    # one column more each: code -1 (no brand / category) indexes the last, always 0
    pb = np.zeros((len(reads), n_b + 1))
    pc = np.zeros((len(reads), n_c + 1))
    b_of = {b: i for i, b in enumerate(cands.brand_names)}
    c_of = {c: i for i, c in enumerate(cands.category_names)}
    norm = np.zeros(len(reads))
    for u, read in enumerate(reads):
        weight_b: dict[str, float] = {}
        weight_c: dict[str, float] = {}
        for brand, category in read:
            n = (brand is not None) + (category is not None)
            if brand is not None:
                weight_b[brand] = weight_b.get(brand, 0.0) + n**-0.5
            if category is not None:
                weight_c[category] = weight_c.get(category, 0.0) + n**-0.5
        # the profile's length counts brands and categories no candidate has
        norm[u] = np.sqrt(sum(v * v for v in weight_b.values()) + sum(v * v for v in weight_c.values()))
        for b, v in weight_b.items():
            if b in b_of:
                pb[u, b_of[b]] = v
        for c, v in weight_c.items():
            if c in c_of:
                pc[u, c_of[c]] = v
    n_feats = (cands.brand_code >= 0).astype(float) + (cands.category_code >= 0)
    dot = pb[:, cands.brand_code]
    dot += pc[:, cands.category_code]
    # a user without a profile, or a candidate without brand and category, has a dot of 0: 0 / 1
    scale = np.where(norm > 0, norm, 1.0)[:, None] * np.where(n_feats > 0, np.sqrt(np.maximum(n_feats, 1.0)), 1.0)
    dot /= scale
    return dot


def _scale_rows(a: np.ndarray, excluded: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each row of ``a`` (>= 0) divided in place by its largest value outside ``excluded`` (if > 0).

    The excluded entries are set to 0 first: their scores are never used.
    """
    a[excluded] = 0.0
    m = a.max(axis=1, initial=0.0)
    a /= np.where(m > 0, m, 1.0)[:, None]
    return a


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
    return rank_many(model, [(reads, read_content)], cands, k)[0]


def rank_many(
    model: RecommendModel | None,
    users: Sequence[tuple[Sequence[str], Sequence[tuple[str | None, str | None]]]],
    cands: Candidates,
    k: int,
) -> list[list[dict[str, Any]]]:
    """:func:`rank` of each user's ``(reads, read_content)``, in one pass over a (users x candidates) array.

    Each user's fold-in is a k x k problem of its own; the rest (the collaborative scores, one
    matrix product; content, exposure, the blend) is computed for all users at once, in as few
    passes over that array as the blend allows (with the same operations as :func:`blend`).
    Raises ValueError when a user's scores are not finite (a model with NaN factors).
    """
    n_u, n = len(users), len(cands)
    if n == 0 or k <= 0:
        return [[] for _ in users]
    read_cols = [sorted({i for a in reads if (i := cands.pos.get(a)) is not None}) for reads, _ in users]
    excluded = (
        np.repeat(np.arange(n_u, dtype=np.intp), [len(c) for c in read_cols]),
        np.fromiter((i for c in read_cols for i in c), dtype=np.intp),
    )
    # exposure part: the rate over the best rate left to the user (the best overall unless they read it)
    pop = cands.popularity
    by_rate = np.argsort(-pop, kind="stable").tolist()
    best = np.zeros(n_u)
    for u, cols in enumerate(read_cols):
        gone = set(cols)
        best[u] = next((pop[i] for i in by_rate if i not in gone), 0.0)
    best_of = {m: np.log((pop / m if m > 0 else pop) + POP_FLOOR) for m in set(best.tolist())}
    score = np.vstack([best_of[m] for m in best.tolist()])
    if model is not None:
        w_cf, w_cb, _ = model.weights
        low = model.gram_factor
        index = model.index
        known = [[index[a] for a in reads if a in index] for reads, _ in users]
        vecs = np.vstack([fold_in(model.factors, rows, model.interaction, low) for rows in known])
        have = cands.rows >= 0
        rows = np.zeros((n, model.factors.shape[1]))
        rows[have] = model.factors[cands.rows[have]]
        cf = _scale_rows(vecs @ rows.T, excluded)
        cb = _scale_rows(content_matrix([rc for _, rc in users], cands), excluded)
        score += w_cb * cb  # blend's order of operations: log(rate) + w_cb * content + w_cf * collaborative
        score += w_cf * cf
    if np.isnan(score).any() or np.isinf(score).any():
        raise ValueError("recommendation scores are not finite (check the recommendation model's factors)")
    score[excluded] = -np.inf
    out: list[list[dict[str, Any]]] = []
    for u in range(n_u):
        m = min(k, n - len(read_cols[u]))
        if m <= 0:
            out.append([])
            continue
        row = score[u]
        # every candidate at least as good as the m-th best, then those in order: ties go to the
        # lower id (candidates are in id order, and the sort is stable)
        kth = np.partition(row, n - m)[n - m]
        top = np.flatnonzero(row >= kth)
        top = top[np.argsort(-row[top], kind="stable")][:m].tolist()
        rel = pop[top] / best[u] if best[u] > 0 else pop[top]
        if model is None:
            parts = np.vstack([np.zeros(m), np.zeros(m), rel])
        else:
            parts = np.vstack([w_cf * cf[u, top], w_cb * cb[u, top], rel])
        reason = np.where(parts.max(axis=0) > 0, parts.argmax(axis=0), 2)  # nothing known: popular
        out.append(
            [
                {"article_id": cands.ids[i], "score": round(float(np.exp(row[i])), 6), "reason": REASONS[int(why)]}
                for i, why in zip(top, reason.tolist(), strict=True)
            ]
        )
    return out

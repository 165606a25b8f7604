"""Champion against challenger on the same events: a paired bootstrap test with a stated margin.

Both models scored the same ``n`` events whose outcomes are known. Each of ``resamples`` bootstrap
resamples draws ``n`` events with replacement (seeded) and computes the metric of *both* models on
that same resample; the difference is the challenger's improvement on it:

* ``auc`` (binary): AUC(challenger) - AUC(champion); ties count one half. A resample with one
  class has no AUC and is left out (counted in ``invalid``);
* ``log_loss`` (binary): log loss(champion) - log loss(challenger), natural log, probabilities
  clipped to [1e-15, 1 - 1e-15];
* ``mse`` (regression): mean squared error(champion) - mean squared error(challenger).

Positive = the challenger is better. The decision is ``promote`` only if the one-sided lower
confidence bound of the improvement (its ``1 - confidence`` quantile over the resamples) is above
``margin``: the challenger is better by at least the margin with the stated confidence. Otherwise
``keep`` (the champion stays). ``p_value`` is the share of resamples whose improvement is at most
the margin (the bootstrap's one-sided p-value of "better by more than the margin").

**Repeated looks.** A challenger kept on its first pairs may be tested again once more labelled pairs
have come (``stream monitor``: :func:`next_look`). Each look is one more chance of a false promotion,
so the one-sided confidence is split over the looks planned before the first (Bonferroni,
:func:`look_confidence`): with family confidence ``1 - a`` and at most ``K`` looks, every look uses
``1 - a/K``, and the chance that a challenger *not* better by the margin is promoted at any of its
looks is at most ``a`` (the union bound; no assumption on how the looks' statistics correlate).
``K = 1`` is the single test above.

Resampling events, not users, assumes the events' outcomes are independent given the scores; with
many events per user the interval is somewhat too narrow, which the margin absorbs.

>>> y = np.array([0, 0, 1, 1] * 50)
>>> champion, challenger = np.tile([0.4, 0.6, 0.5, 0.5], 50), np.tile([0.1, 0.2, 0.8, 0.9], 50)
>>> c = paired_bootstrap(y, champion, challenger, metric="auc", margin=0.01, resamples=200, seed=1)
>>> (c.decision, round(c.champion, 3), round(c.challenger, 3), c.invalid)
('promote', 0.5, 1.0, 0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Metric = Literal["auc", "log_loss", "mse"]
METRICS: tuple[Metric, ...] = ("auc", "log_loss", "mse")
#: default margins in each metric's units (the CLI states the one it used)
DEFAULT_MARGIN: dict[str, float] = {"auc": 0.005, "log_loss": 0.005}
#: the regression margin, as a share of the outcomes' variance: an R² gain of 0.01
MSE_MARGIN_SHARE = 0.01
_CLIP = 1e-15


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`paired_bootstrap`; ``to_dict`` is the evidence recorded in the registry."""

    metric: str
    n: int
    champion: float  # the metric on all n events
    challenger: float
    improvement: float  # challenger better by this on all n events (metric units, positive = better)
    lower_bound: float  # one-sided lower confidence bound of the improvement
    upper_bound: float  # one-sided upper confidence bound (for the record)
    p_value: float
    margin: float
    confidence: float
    resamples: int
    invalid: int  # resamples without a defined metric (one class)
    seed: int
    decision: Literal["promote", "keep"]
    reason: str
    deltas: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("deltas")
        return d


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """The resamples, as row positions (resamples x n); the same seed gives the same resamples."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


def _auc_weighted(y: np.ndarray, order: np.ndarray, group: np.ndarray, n_groups: int, w: np.ndarray) -> float:
    """AUC of the multiset where row i appears w[i] times (Mann-Whitney, ties one half).

    ``order`` sorts the scores ascending, ``group`` numbers their distinct values in that order.
    """
    wy, wn = w[order] * y[order], w[order] * (1 - y[order])
    pos = np.bincount(group, weights=wy, minlength=n_groups)
    neg = np.bincount(group, weights=wn, minlength=n_groups)
    p_tot, n_tot = pos.sum(), neg.sum()
    if p_tot == 0 or n_tot == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (p_tot * n_tot))


def _ties(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    order = np.argsort(p, kind="mergesort")
    s = p[order]
    group = np.cumsum(np.r_[0, (s[1:] != s[:-1]).astype(np.int64)])
    return order, group, int(group[-1]) + 1 if len(group) else 0


def _row_loss(metric: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    if metric == "log_loss":
        q = np.clip(p, _CLIP, 1 - _CLIP)
        return -(y * np.log(q) + (1 - y) * np.log(1 - q))
    return (y - p) ** 2


def _percent(confidence: float) -> str:
    """0.95 -> '95%', 1 - 0.05/3 -> '98.33%'."""
    return f"{round(100 * confidence, 2):g}%"


def paired_bootstrap(
    y: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    metric: Metric,
    margin: float,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    min_events: int = 100,
) -> Comparison:
    """Compare two models' scores of the same events (see the module docstring)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    y = np.asarray(y, dtype=np.float64)
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    if not (len(y) == len(a) == len(b)):
        raise ValueError(f"outcomes and scores differ in length: {len(y)}, {len(a)}, {len(b)}")
    n = len(y)
    idx = bootstrap_indices(n, resamples, seed) if n else np.zeros((0, 0), dtype=np.int64)
    deltas = np.full(resamples, np.nan)
    if metric == "auc":
        ta, tb = _ties(a), _ties(b)
        ones = np.ones(n)
        full_a, full_b = _auc_weighted(y, *ta, ones), _auc_weighted(y, *tb, ones)
        for k in range(resamples if n else 0):
            w = np.bincount(idx[k], minlength=n).astype(np.float64)
            deltas[k] = _auc_weighted(y, *tb, w) - _auc_weighted(y, *ta, w)
    else:
        la, lb = _row_loss(metric, y, a), _row_loss(metric, y, b)
        full_a, full_b = (float(la.mean()), float(lb.mean())) if n else (float("nan"), float("nan"))
        diff = la - lb  # per-row improvement; a resample's mean of it is the paired difference
        for k in range(resamples if n else 0):
            deltas[k] = diff[idx[k]].mean()
    improvement = full_b - full_a if metric == "auc" else full_a - full_b
    ok = deltas[np.isfinite(deltas)]
    invalid = resamples - len(ok)
    alpha = 1 - confidence
    lo = float(np.quantile(ok, alpha)) if len(ok) else float("nan")
    hi = float(np.quantile(ok, confidence)) if len(ok) else float("nan")
    p_value = float((ok <= margin).mean()) if len(ok) else float("nan")
    classes = len(np.unique(y)) if n else 0
    decision: Literal["promote", "keep"]
    if n < min_events:
        decision, reason = "keep", f"only {n} events with outcomes (needs {min_events})"
    elif metric != "mse" and classes < 2:
        decision, reason = "keep", "the outcomes have a single class"
    elif len(ok) < resamples / 2:
        decision, reason = "keep", f"{invalid} of {resamples} resamples have no {metric}"
    elif lo > margin:
        decision = "promote"
        reason = (
            f"challenger better by {improvement:+.4f} {metric}; {_percent(confidence)} lower bound {lo:+.4f} "
            f"> margin {margin:g}"
        )
    else:
        decision = "keep"
        reason = (
            f"challenger better by {improvement:+.4f} {metric}; {_percent(confidence)} lower bound {lo:+.4f} "
            f"<= margin {margin:g}"
        )
    return Comparison(
        metric=metric,
        n=n,
        champion=float(full_a),
        challenger=float(full_b),
        improvement=float(improvement),
        lower_bound=lo,
        upper_bound=hi,
        p_value=p_value,
        margin=float(margin),
        confidence=float(confidence),
        resamples=resamples,
        invalid=invalid,
        seed=seed,
        decision=decision,
        reason=reason,
        deltas=deltas,
    )


def default_margin(metric: Metric, y: np.ndarray) -> float:
    """The margin used when none is given: 0.005 AUC or log loss; for MSE 1 % of the outcomes' variance."""
    if metric == "mse":
        return float(MSE_MARGIN_SHARE * np.var(np.asarray(y, dtype=np.float64))) if len(y) else 0.0
    return DEFAULT_MARGIN[metric]


#: how :func:`look_confidence` splits the false-promotion rate over the looks (stated in every record)
LOOKS_RULE = "Bonferroni: each of the K looks at one challenger uses one-sided confidence 1 - (1 - confidence)/K"


def look_confidence(confidence: float, looks: int) -> float:
    """The one-sided confidence of each of at most ``looks`` looks at one challenger, so that the chance of
    any false promotion over all of them is at most ``1 - confidence`` (Bonferroni).

    >>> round(look_confidence(0.95, 1), 4), round(look_confidence(0.95, 3), 4), round(look_confidence(0.9, 4), 4)
    (0.95, 0.9833, 0.975)
    """
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if looks < 1:
        raise ValueError(f"looks must be at least 1, got {looks}")
    return 1 - (1 - confidence) / looks


def look_evidence(look: int, looks: int, confidence: float) -> dict[str, Any]:
    """What a decision's registry record says about its look: which of how many, the family's and the
    look's confidence, and the rule."""
    if not 1 <= look <= looks:
        raise ValueError(f"look must be in [1, {looks}], got {look}")
    return {
        "look": look,
        "looks": looks,
        "family_confidence": confidence,
        "confidence": look_confidence(confidence, looks),
        "rule": LOOKS_RULE,
    }


def next_look(look: int, pairs: int, decision: str, *, looks: int, growth: float, min_new: int) -> int | None:
    """The labelled pairs at which a challenger gets its next look, or None (no further look).

    After look ``look`` (1-based) on ``pairs`` labelled pairs: only a ``keep`` is looked at again, at most
    ``looks`` looks in all, once the pairs have grown ``growth``-fold and by at least ``min_new``
    (a look on a few more pairs would repeat the last one's test and spend its share for nothing).

    >>> rule = {"looks": 3, "growth": 2.0, "min_new": 500}
    >>> next_look(1, 1000, "keep", **rule), next_look(2, 2100, "keep", looks=3, growth=1.2, min_new=1000)
    (2000, 3100)
    >>> next_look(3, 4000, "keep", **rule), next_look(1, 1000, "promote", **rule)
    (None, None)
    """
    if growth <= 1:
        raise ValueError(f"growth must be above 1, got {growth}")
    if decision != "keep" or look >= looks:
        return None
    return max(math.ceil(growth * pairs), pairs + max(min_new, 1))

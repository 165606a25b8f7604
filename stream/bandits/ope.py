"""Off-policy evaluation: the value of a policy estimated from another policy's logged decisions.

Pure functions over arrays, no Kafka. Each logged decision is (context, logged action, reward,
logging propensity); a *target* policy gives, per logged decision, the probability it would
have chosen the logged action (``target_probs``; 0 or 1 for a deterministic policy).

* :func:`replay` (Li et al. 2011): the mean reward over the decisions where the target policy
  agrees with the logged action. Unbiased for a deterministic target when logging is uniform.
* :func:`ips`: inverse propensity scoring, ``mean(r * pi(a|x) / mu(a|x))``. Unbiased whenever
  the logging propensities are exact and positive wherever the target acts.
* :func:`snips`: self-normalized IPS, ``sum(r w) / sum(w)``: slightly biased, lower variance.

Every estimate comes with a standard error (delta method for SNIPS) and the effective sample
size of its weights, so a caller can state how close it should be to the truth.

>>> import numpy as np
>>> logged = np.array([0, 1, 0, 1, 0, 1])
>>> reward = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
>>> mu = np.full(6, 0.5)                       # uniform logging over 2 arms
>>> always0 = deterministic_probs(logged, np.zeros(6, dtype=int))
>>> replay(logged, reward, np.zeros(6, dtype=int)).value
0.6666666666666666
>>> ips(reward, mu, always0).value
0.6666666666666666
>>> snips(reward, mu, always0).value
0.6666666666666666
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Estimate", "deterministic_probs", "ips", "replay", "snips"]


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate, its standard error and the effective number of samples."""

    method: str
    value: float
    stderr: float
    n: int
    n_effective: float

    def within(self, truth: float, sigmas: float = 3.0, rel: float = 0.0) -> bool:
        """True if ``truth`` lies within ``sigmas`` standard errors (or ``rel`` relative error).

        >>> Estimate("ips", 0.10, 0.01, 100, 100.0).within(0.125)
        True
        >>> Estimate("ips", 0.10, 0.01, 100, 100.0).within(0.14)
        False
        """
        return abs(self.value - truth) <= max(sigmas * self.stderr, rel * abs(truth))


def _arrays(*xs: ArrayLike) -> list[np.ndarray]:
    out = [np.asarray(x, dtype=float) for x in xs]
    n = len(out[0])
    if any(len(x) != n for x in out):
        raise ValueError(f"arrays of different lengths: {[len(x) for x in out]}")
    return out


def deterministic_probs(logged_actions: ArrayLike, target_actions: ArrayLike) -> np.ndarray:
    """``pi(a_logged | x)`` of a deterministic target policy: 1 where it agrees, else 0.

    >>> deterministic_probs([0, 1, 2], [0, 0, 2]).tolist()
    [1.0, 0.0, 1.0]
    """
    probs: np.ndarray = (np.asarray(logged_actions) == np.asarray(target_actions)).astype(float)
    return probs


def _ess(w: np.ndarray) -> float:
    s2 = float((w * w).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def replay(logged_actions: ArrayLike, rewards: ArrayLike, target_actions: ArrayLike) -> Estimate:
    """Rejection-sampling replay of a deterministic target policy.

    >>> replay([0, 1, 1], [1.0, 0.0, 1.0], [1, 1, 1]).value
    0.5
    """
    match = np.asarray(logged_actions) == np.asarray(target_actions)
    (r,) = _arrays(rewards)
    k = int(match.sum())
    if k == 0:
        return Estimate("replay", float("nan"), float("nan"), len(r), 0.0)
    kept = r[match]
    se = float(kept.std(ddof=1) / np.sqrt(k)) if k > 1 else float("nan")
    return Estimate("replay", float(kept.mean()), se, len(r), float(k))


def ips(rewards: ArrayLike, logging_propensities: ArrayLike, target_probs: ArrayLike) -> Estimate:
    """Inverse propensity scoring: ``mean(r * pi / mu)``.

    >>> ips([1.0, 0.0], [0.25, 0.25], [1.0, 0.0]).value
    2.0
    """
    r, mu, pi = _arrays(rewards, logging_propensities, target_probs)
    if (mu <= 0).any():
        raise ValueError("logging propensities must be > 0")
    w = pi / mu
    terms = r * w
    se = float(terms.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else float("nan")
    return Estimate("ips", float(terms.mean()), se, len(r), _ess(w))


def snips(rewards: ArrayLike, logging_propensities: ArrayLike, target_probs: ArrayLike) -> Estimate:
    """Self-normalized IPS: ``sum(r w) / sum(w)`` with ``w = pi / mu``; delta-method standard error.

    >>> snips([1.0, 0.0, 1.0], [0.5, 0.5, 0.5], [1.0, 1.0, 0.0]).value
    0.5
    """
    r, mu, pi = _arrays(rewards, logging_propensities, target_probs)
    if (mu <= 0).any():
        raise ValueError("logging propensities must be > 0")
    w = pi / mu
    total = float(w.sum())
    if total == 0:
        return Estimate("snips", float("nan"), float("nan"), len(r), 0.0)
    value = float((r * w).sum() / total)
    n = len(r)
    resid = w * (r - value) / (total / n)
    se = float(np.sqrt((resid**2).sum()) / n) if n > 1 else float("nan")
    return Estimate("snips", value, se, n, _ess(w))

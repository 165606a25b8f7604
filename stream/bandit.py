"""Thompson sampling for ad placement: Beta posteriors per (context, arm), exact propensities.

Pure logic, no Kafka. The worker keeps click/impression counts per input partition and merges
every partition's counts (see ``stream/agents/bandit.py``); this module turns counts into
decisions.

>>> import numpy as np
>>> policy = ThompsonSampling(("a", "b"), seed=7)
>>> alpha, beta = policy.posterior({"a": (100, 10), "b": (100, 30)})
>>> alpha.tolist(), beta.tolist()
([11.0, 31.0], [91.0, 71.0])
>>> p = propensities(alpha, beta)
>>> bool(p[1] > 0.99), round(float(p.sum()), 6)
(True, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

Counts = Mapping[str, tuple[int, int]]  # arm -> (impressions, clicks)

MIN_PROPENSITY = 1e-9


#: Gauss-Legendre nodes per segment of :func:`propensities` (on [-1, 1]).
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(48)


def propensities(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """P(arm i draws the largest sample) under independent Beta posteriors, by quadrature.

    P_i = ∫ f_i(x) Π_{j≠i} F_j(x) dx. Every posterior's mass lies within its mean ± 10 sd; the
    integral runs over the union of those intervals, cut at each interval's ends so that within a
    segment every factor is either smooth or constant, with 48-point Gauss-Legendre per segment
    (at most 48 * (2 * arms - 1) points; agrees with a 4096-point midpoint rule to < 1e-6 on
    typical posteriors).
    Results are clipped to at least :data:`MIN_PROPENSITY` and sum to 1.
    """
    alpha = np.asarray(alpha, dtype=float)
    beta = np.asarray(beta, dtype=float)
    mean = alpha / (alpha + beta)
    sd = np.sqrt(alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1)))
    lo_i = np.clip(mean - 10 * sd, 0.0, 1.0)
    hi_i = np.clip(mean + 10 * sd, 0.0, 1.0)
    cuts = np.unique(np.concatenate([lo_i, hi_i]))
    if len(cuts) < 2:  # every posterior is a point mass at the same place
        cuts = np.array([max(cuts[0] - 1e-12, 0.0), min(cuts[0] + 1e-12, 1.0)])
    half = (cuts[1:] - cuts[:-1])[:, None] / 2
    x = ((cuts[1:] + cuts[:-1])[:, None] / 2 + half * _GL_NODES[None, :]).ravel()
    w = (half * _GL_WEIGHTS[None, :]).ravel()
    a, b = alpha[:, None], beta[:, None]
    log_pdf = special.xlogy(a - 1, x) + special.xlog1py(b - 1, -x) - special.betaln(a, b)
    cdf = special.betainc(a, b, x)
    log_cdf = np.log(np.clip(cdf, 1e-300, None))
    p = np.exp(log_pdf + log_cdf.sum(axis=0) - log_cdf) @ w  # f_i(x) Π_{j≠i} F_j(x)
    p = np.clip(p, MIN_PROPENSITY, None)
    return p / p.sum()


@dataclass
class Decision:
    arm: str
    propensity: float
    arm_means: dict[str, float]


class ThompsonSampling:
    """Thompson sampling over named arms with a Beta(prior_alpha, prior_beta) prior."""

    name = "thompson"

    def __init__(self, arms: Sequence[str], prior: tuple[float, float] = (1.0, 1.0), seed: int | None = None):
        if not arms:
            raise ValueError("ThompsonSampling needs at least one arm")
        self.arms = tuple(arms)
        self.prior = prior
        self.rng = np.random.default_rng(seed)

    def posterior(self, counts: Counts) -> tuple[np.ndarray, np.ndarray]:
        """Beta parameters per arm from (impressions, clicks); clicks beyond impressions are capped."""
        imps = np.array([counts.get(a, (0, 0))[0] for a in self.arms], dtype=float)
        clicks = np.minimum(np.array([counts.get(a, (0, 0))[1] for a in self.arms], dtype=float), imps)
        return self.prior[0] + clicks, self.prior[1] + imps - clicks

    def choose(self, alpha: np.ndarray, beta: np.ndarray, props: np.ndarray | None = None,
               means: dict[str, float] | None = None) -> Decision:
        """Draw one sample per arm and pick the largest; report the arm's exact propensity.

        ``props`` and ``means`` (posterior mean per arm) may be passed in when many decisions
        share one posterior; the decision's ``arm_means`` is then that same dict.
        """
        draws = self.rng.beta(alpha, beta)
        i = int(np.argmax(draws))
        props = propensities(alpha, beta) if props is None else props
        return Decision(self.arms[i], float(props[i]), self.arm_means(alpha, beta) if means is None else means)

    def arm_means(self, alpha: np.ndarray, beta: np.ndarray) -> dict[str, float]:
        """Posterior mean per arm."""
        return {a: float(m) for a, m in zip(self.arms, alpha / (alpha + beta), strict=True)}

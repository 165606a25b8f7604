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
from scipy import stats

Counts = Mapping[str, tuple[int, int]]  # arm -> (impressions, clicks)

MIN_PROPENSITY = 1e-9


def propensities(alpha: np.ndarray, beta: np.ndarray, points: int = 4096) -> np.ndarray:
    """P(arm i draws the largest sample) under independent Beta posteriors, by quadrature.

    P_i = ∫ f_i(x) Π_{j≠i} F_j(x) dx over a grid that covers every posterior's mass (mean ± 10 sd),
    so sharply peaked posteriors late in a run are integrated as accurately as flat ones.
    """
    alpha = np.asarray(alpha, dtype=float)
    beta = np.asarray(beta, dtype=float)
    mean = alpha / (alpha + beta)
    sd = np.sqrt(alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1)))
    lo = float(np.clip((mean - 10 * sd).min(), 0.0, 1.0))
    hi = float(np.clip((mean + 10 * sd).max(), 0.0, 1.0))
    edges = np.linspace(lo, hi, points + 1)
    x = (edges[:-1] + edges[1:]) / 2
    dx = edges[1] - edges[0]
    pdf = stats.beta.pdf(x[None, :], alpha[:, None], beta[:, None])
    cdf = stats.beta.cdf(x[None, :], alpha[:, None], beta[:, None])
    log_cdf = np.log(np.clip(cdf, 1e-300, None))
    others = np.exp(log_cdf.sum(axis=0)[None, :] - log_cdf)  # Π_{j≠i} F_j(x)
    p = (pdf * others).sum(axis=1) * dx
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

    def choose(self, alpha: np.ndarray, beta: np.ndarray, props: np.ndarray | None = None) -> Decision:
        """Draw one sample per arm and pick the largest; report the arm's exact propensity."""
        draws = self.rng.beta(alpha, beta)
        i = int(np.argmax(draws))
        props = propensities(alpha, beta) if props is None else props
        means = alpha / (alpha + beta)
        return Decision(self.arms[i], float(props[i]), {a: float(m) for a, m in zip(self.arms, means, strict=True)})

"""Seeded synthetic feature streams with the shapes real features have: symmetric, skewed, a point
mass at zero, a few discrete values, a constant, and a column with missing values."""

from __future__ import annotations

import numpy as np

NAMES = ["normal", "skewed", "zero_mass", "discrete", "constant", "gappy"]


def rows(
    n: int, rng: np.random.Generator, *, shift: float = 0.0, missing: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """(features in NAMES order, a model's predictions); ``shift`` moves the mean of ``normal``
    by that many standard deviations; ``missing`` is the NaN share of ``gappy``."""
    x = np.empty((n, len(NAMES)))
    x[:, 0] = rng.normal(shift, 1, n)
    x[:, 1] = rng.lognormal(0, 1, n)
    x[:, 2] = np.where(rng.random(n) < 0.6, 0.0, rng.exponential(3, n))
    x[:, 3] = rng.choice([0, 1, 2], n, p=[0.7, 0.2, 0.1])
    x[:, 4] = 1.0
    g = rng.normal(10, 2, n)
    g[rng.random(n) < missing] = np.nan
    x[:, 5] = g
    # the prediction does not depend on "normal", so its shift moves that column only
    p = 1 / (1 + np.exp(-(0.8 * x[:, 1] - 1.5 + 0.3 * x[:, 3])))
    return x.astype(np.float32), p

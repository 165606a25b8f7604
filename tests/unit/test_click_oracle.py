"""scripts/click_oracle.py: its MAP fit and the demo profile's row share."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("click_oracle", ROOT / "scripts" / "click_oracle.py")
assert _spec is not None and _spec.loader is not None
click_oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(click_oracle)


def test_map_is_l2_logistic_regression() -> None:
    # a zero-mean Gaussian prior of precision lam is sklearn's L2 penalty with C = 1 / lam
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 3))
    y = (rng.random(400) < 1 / (1 + np.exp(-(x @ np.array([1.0, -0.5, 0.25]))))).astype(float)
    lam = 2.0
    got = click_oracle._map(x, np.zeros(400), y, np.zeros(3), np.full(3, lam), np.zeros(3))
    ref = LogisticRegression(fit_intercept=False, C=1 / lam, tol=1e-12, max_iter=10_000).fit(x, y).coef_[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_map_with_a_tight_prior_stays_at_its_mean() -> None:
    rng = np.random.default_rng(4)
    x = np.ones((50, 1))
    y = (rng.random(50) < 0.9).astype(float)
    got = click_oracle._map(x, np.zeros(50), y, np.array([-2.0]), np.array([1e9]), np.array([0.0]))
    assert abs(got[0] + 2.0) < 1e-5


def test_demo_sample_keeps_about_nine_percent() -> None:
    # 60 % of users times 15 % of impressions
    users = [f"u{i}" for i in range(2_000) for _ in range(20)]
    rows = pd.DataFrame({"user_id": users, "event_id": [f"e{i}" for i in range(len(users))]})
    share = click_oracle.demo_sample(rows).mean()
    assert 0.07 < share < 0.11

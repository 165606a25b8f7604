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


def test_eb_strength_recovers_the_prior() -> None:
    # rates drawn from Beta(k m, k (1 - m)) with k = 20: the beta-binomial maximum finds k
    rng = np.random.default_rng(5)
    m, k, n = 0.2, 20.0, np.full(4_000, 60)
    x = rng.binomial(n, rng.beta(k * m, k * (1 - m), size=len(n))).astype(float)
    got = click_oracle._eb_strength(x, n.astype(float), np.full(len(n), m))
    assert 14 < got < 28


def test_history_columns_count_only_earlier_events() -> None:
    import datetime as dt
    from types import SimpleNamespace

    import pyarrow as pa

    imp, clk = "article_impression", "article_click"
    day0 = int(dt.datetime(2025, 1, 6, tzinfo=dt.UTC).timestamp() * 1000)
    ev = pd.DataFrame(
        {
            "event_id": ["a1", "a2", "a3", "a4", "b1", "b2"],
            "event_type": [imp, clk, imp, imp, imp, clk],
            "user_id": ["a", "a", "a", "a", "b", "b"],
            "event_time": [day0 + t for t in (1_000, 2_000, 3_000, 4_000, 1_000, 2_000)],
            "brand": ["x", "x", "x", "y", "x", "x"],
            "category": ["c", "c", "c", "c", "c", "c"],
            "position": [1, None, 2, 1, 1, None],
        }
    )
    ds = SimpleNamespace(
        table=pa.Table.from_pandas(ev, preserve_index=False), config=SimpleNamespace(start=dt.date(2025, 1, 6))
    )
    imps = ev[ev["event_type"] == "article_impression"]
    rows = pd.DataFrame(
        {
            "event_id": imps["event_id"].to_numpy(),
            "day": 0.0,
            "position": imps["position"].to_numpy(),
            "clicked": [1, 0, 0, 1],
        }
    )
    got = click_oracle.history_columns(ds, rows, history_days=1)
    assert got["impressions_lifetime"].tolist() == [0, 1, 2, 0]
    assert got["clicks_lifetime"].tolist() == [0, 1, 1, 0]
    # the brand-y impression has no earlier brand-y event: its brand CTR is the reader's own
    assert got["brand_ctr_eb"].iloc[2] == got["ctr_eb"].iloc[2]

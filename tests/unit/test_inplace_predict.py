"""The worker's XGBoost prediction call gives XGBoost's own scores, bit for bit."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import xgboost as xgb

from stream.models.scoring import inplace_predict


@pytest.fixture(scope="module")
def booster() -> xgb.Booster:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.3, size=400) > 0).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take the trees' default branches
    b = xgb.train({"objective": "binary:logistic", "max_depth": 4, "nthread": 1}, xgb.DMatrix(x, y), 15)
    b.set_param({"nthread": 1})
    return b


def matrix(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


@pytest.mark.parametrize("rows", [1, 7, 500])
def test_same_scores_as_xgboost(booster: xgb.Booster, rows: int) -> None:
    for seed in range(3):
        x = matrix(rows, seed)
        got = inplace_predict(booster, x)
        want = booster.inplace_predict(x)
        assert got.dtype == want.dtype == np.float32
        assert got.shape == want.shape == (rows,)
        assert np.array_equal(got, want)


def test_results_stay_valid_after_the_next_call(booster: xgb.Booster) -> None:
    """The worker copies each result (to float64) before the next predict; a copy taken here stays right."""
    a, b = matrix(5, 10), matrix(9, 11)
    first = np.array(inplace_predict(booster, a), dtype=np.float64)
    inplace_predict(booster, b)
    assert np.array_equal(first, booster.inplace_predict(a).astype(np.float64))


def test_other_threads_get_the_same_scores(booster: xgb.Booster) -> None:
    x = matrix(50, 20)
    want = booster.inplace_predict(x)
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(np.array(inplace_predict(booster, x)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and all(np.array_equal(g, want) for g in got)


def test_wrong_width_raises_xgboosts_error(booster: xgb.Booster) -> None:
    with pytest.raises(ValueError, match="Feature shape mismatch"):
        inplace_predict(booster, matrix(3, 1)[:, :5])

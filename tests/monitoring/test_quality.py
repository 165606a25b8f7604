"""Online quality equals an independent offline computation (scikit-learn, numpy) on the same pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, mean_absolute_error, r2_score, roc_auc_score

from stream.monitoring.quality import RollingQuality, calibration_error, quality


def _binary_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, n)
    y = (rng.random(n) < np.clip(p * 1.3, 0, 1)).astype(int)  # somewhat miscalibrated on purpose
    return y, p


def _ece_offline(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """sklearn's per-bin means, weighted by numpy's histogram counts (same 10 equal-width bins)."""
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    counts, _ = np.histogram(p, bins=np.linspace(0, 1, bins + 1))
    counts = counts[counts > 0]  # calibration_curve drops empty bins
    return float(np.sum(counts * np.abs(prob_true - prob_pred)) / len(y))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_classifier_metrics_match_sklearn(seed: int) -> None:
    y, p = _binary_pairs(3000, seed)
    got = quality("binary", y, p)
    assert got["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert got["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-12)
    assert got["ece"] == pytest.approx(_ece_offline(y, p), abs=1e-12)


def test_auc_counts_tied_scores_one_half() -> None:
    y, p = _binary_pairs(2000, 4)
    p = np.round(p, 1)  # heavy ties, as from a coarse model
    assert quality("binary", y, p)["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    y = rng.gamma(2.0, 10.0, 2000)
    p = y * 0.8 + rng.normal(0, 5, 2000)
    got = quality("regression", y, p)
    assert got["r2"] == pytest.approx(r2_score(y, p), abs=1e-12)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, p), abs=1e-12)


def test_rolling_window_holds_the_last_pairs_only() -> None:
    y, p = _binary_pairs(2500, 6)
    q = RollingQuality("click", "7", "binary", size=1000)
    for i, (yi, pi) in enumerate(zip(y, p, strict=True)):
        q.update(float(yi), float(pi), 1_000 + i)
    s = q.snapshot()
    assert (s.n, s.window_start_ms, s.window_end_ms) == (1000, 1_000 + 1500, 1_000 + 2499)
    assert s.metrics["auc"] == pytest.approx(roc_auc_score(y[-1000:], p[-1000:]), abs=1e-12)
    assert s.metrics["log_loss"] == pytest.approx(log_loss(y[-1000:], p[-1000:]), abs=1e-12)
    assert s.metrics["ece"] == pytest.approx(_ece_offline(y[-1000:], p[-1000:]), abs=1e-12)


def test_partly_filled_regression_window() -> None:
    rng = np.random.default_rng(7)
    y, p = rng.normal(5, 2, 300), rng.normal(5, 2, 300)
    q = RollingQuality("engagement", "2", "regression", size=1000)
    for i in range(300):
        q.update(y[i], p[i], i)
    s = q.snapshot()
    assert s.n == 300
    assert s.metrics["r2"] == pytest.approx(r2_score(y, p), abs=1e-12)
    assert s.metrics["mae"] == pytest.approx(mean_absolute_error(y, p), abs=1e-12)


def test_undefined_metrics_are_nan_not_errors() -> None:
    one_class = quality("binary", np.ones(50), np.linspace(0.1, 0.9, 50))
    assert math.isnan(one_class["auc"]) and one_class["log_loss"] > 0
    assert math.isnan(quality("regression", np.full(20, 3.0), np.linspace(0, 5, 20))["r2"])
    assert math.isnan(RollingQuality("click", "1", "binary", 10).snapshot().metrics["auc"])


def test_ece_of_a_perfectly_calibrated_bin_is_zero_and_probability_one_lands_in_the_last_bin() -> None:
    # two bins by hand: p = 0.5 with half positives (gap 0), p = 1.0 with all positives (gap 0)
    assert calibration_error(np.array([0, 1, 1, 1]), np.array([0.5, 0.5, 1.0, 1.0])) == 0.0
    # p = 1.0 with a negative: gap 1 in a bin of weight 1/2
    assert calibration_error(np.array([1, 0]), np.array([1.0, 1.0])) == pytest.approx(0.5)


def test_bad_window_arguments_say_what_was_expected() -> None:
    with pytest.raises(ValueError, match="expected at least 2"):
        RollingQuality("click", "1", "binary", size=1)
    with pytest.raises(ValueError, match="expected 'binary' or 'regression'"):
        RollingQuality("click", "1", "multiclass", size=10)  # type: ignore[arg-type]

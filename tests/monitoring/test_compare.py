"""The paired champion/challenger test against independent computations, and its decisions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, mean_squared_error, roc_auc_score

from stream.monitoring.compare import (
    LOOKS_RULE,
    bootstrap_indices,
    default_margin,
    look_confidence,
    look_evidence,
    next_look,
    paired_bootstrap,
)


def _tiny(seed: int = 3, n: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    # rounded scores: ties within each model and between the classes
    a = np.clip(np.round(0.4 + 0.2 * (y - 0.4) + rng.normal(0, 0.25, n), 1), 0.05, 0.95)
    b = np.clip(np.round(0.4 + 0.4 * (y - 0.4) + rng.normal(0, 0.2, n), 1), 0.05, 0.95)
    return y, a, b


def test_auc_differences_equal_sklearn_on_every_resample() -> None:
    y, a, b = _tiny()
    c = paired_bootstrap(y, a, b, metric="auc", margin=0.0, resamples=60, seed=9, min_events=1)
    expected = []
    for idx in bootstrap_indices(len(y), 60, 9):
        yy = y[idx]
        if len(np.unique(yy)) < 2:
            expected.append(np.nan)
        else:
            expected.append(roc_auc_score(yy, b[idx]) - roc_auc_score(yy, a[idx]))
    np.testing.assert_allclose(c.deltas, np.array(expected), rtol=0, atol=1e-12)
    assert c.champion == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert c.challenger == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    ok = np.array([e for e in expected if np.isfinite(e)])
    assert c.invalid == 60 - len(ok)
    assert c.lower_bound == pytest.approx(np.quantile(ok, 0.05), abs=1e-12)
    assert c.p_value == pytest.approx(float((ok <= 0.0).mean()))


def test_log_loss_and_mse_differences_equal_sklearn_on_every_resample() -> None:
    y, a, b = _tiny(seed=5)
    c = paired_bootstrap(y, a, b, metric="log_loss", margin=0.0, resamples=40, seed=2, min_events=1)
    want = [
        log_loss(y[i], a[i], labels=[0, 1]) - log_loss(y[i], b[i], labels=[0, 1]) for i in bootstrap_indices(40, 40, 2)
    ]
    np.testing.assert_allclose(c.deltas, want, rtol=0, atol=1e-12)
    rng = np.random.default_rng(0)
    t = rng.normal(10, 3, 40)
    pa, pb = t + rng.normal(0, 2, 40), t + rng.normal(0, 1, 40)
    r = paired_bootstrap(t, pa, pb, metric="mse", margin=0.0, resamples=40, seed=4, min_events=1)
    want = [mean_squared_error(t[i], pa[i]) - mean_squared_error(t[i], pb[i]) for i in bootstrap_indices(40, 40, 4)]
    np.testing.assert_allclose(r.deltas, want, rtol=0, atol=1e-10)
    assert r.improvement == pytest.approx(mean_squared_error(t, pa) - mean_squared_error(t, pb))


def _world(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    p = 1 / (1 + np.exp(-(2 * z - 1)))
    return (rng.random(n) < p).astype(int), z


def test_a_clearly_better_challenger_is_promoted() -> None:
    y, z = _world(4000, 1)
    rng = np.random.default_rng(2)
    champion = 1 / (1 + np.exp(-(z + rng.normal(0, 1.5, len(z)))))  # a noisy view of the same signal
    challenger = 1 / (1 + np.exp(-(2 * z - 1)))  # the true probability
    for metric in ("auc", "log_loss"):
        c = paired_bootstrap(y, champion, challenger, metric=metric, margin=0.005, resamples=300, seed=7)
        assert c.decision == "promote", c.reason
        assert c.lower_bound > 0.005 and c.p_value < 0.05


def test_an_equal_challenger_is_kept() -> None:
    y, z = _world(4000, 3)
    p = 1 / (1 + np.exp(-(2 * z - 1)))
    same = paired_bootstrap(y, p, p.copy(), metric="auc", margin=0.0, resamples=200, seed=1)
    assert same.decision == "keep" and same.improvement == 0 and np.all(same.deltas == 0)
    # a monotone transform ranks the same: the AUC cannot tell them apart
    assert paired_bootstrap(y, p, p**2, metric="auc", margin=0.0, resamples=200, seed=1).decision == "keep"
    # two equally noisy views: no significant difference at a margin of 0.005
    rng = np.random.default_rng(4)
    a, b = z + rng.normal(0, 1, len(z)), z + rng.normal(0, 1, len(z))
    c = paired_bootstrap(y, a, b, metric="auc", margin=0.005, resamples=300, seed=5)
    assert c.decision == "keep", c.reason
    assert c.lower_bound < 0.005 < c.upper_bound + 0.005


def test_a_worse_challenger_and_too_few_events_are_kept() -> None:
    y, z = _world(2000, 6)
    good = 1 / (1 + np.exp(-(2 * z - 1)))
    c = paired_bootstrap(y, good, 1 - good, metric="auc", margin=0.0, resamples=100, seed=1)
    assert c.decision == "keep" and c.improvement < -0.5
    few = paired_bootstrap(y[:50], 1 - good[:50], good[:50], metric="auc", margin=0.0, resamples=100, seed=1)
    assert few.decision == "keep" and "only 50 events" in few.reason


def test_the_regression_margin_is_a_share_of_the_variance() -> None:
    t = np.array([1.0, 2.0, 3.0, 4.0])
    assert default_margin("mse", t) == pytest.approx(0.01 * 1.25)
    assert default_margin("auc", t) == 0.005


def test_seeded_and_paired() -> None:
    y, a, b = _tiny()
    one = paired_bootstrap(y, a, b, metric="auc", margin=0.0, resamples=50, seed=11, min_events=1)
    two = paired_bootstrap(y, a, b, metric="auc", margin=0.0, resamples=50, seed=11, min_events=1)
    np.testing.assert_array_equal(one.deltas, two.deltas)
    assert one.to_dict() == two.to_dict() and "deltas" not in one.to_dict()


# --- repeated looks at one challenger ------------------------------------------------------------


def test_each_look_tests_at_its_bonferroni_share_of_the_confidence() -> None:
    assert look_confidence(0.95, 1) == 0.95  # one look: the single test as before
    assert look_confidence(0.95, 3) == pytest.approx(1 - 0.05 / 3)
    assert look_confidence(0.9, 4) == pytest.approx(0.975)
    assert look_evidence(2, 3, 0.95) == {
        "look": 2,
        "looks": 3,
        "family_confidence": 0.95,
        "confidence": pytest.approx(0.98333333),
        "rule": LOOKS_RULE,
    }
    for bad in (lambda: look_confidence(1.0, 3), lambda: look_confidence(0.95, 0), lambda: look_evidence(4, 3, 0.95)):
        with pytest.raises(ValueError):
            bad()


def test_a_kept_challenger_is_looked_at_again_once_its_pairs_have_grown_a_bounded_number_of_times() -> None:
    rule = {"looks": 3, "growth": 2.0, "min_new": 500}
    assert next_look(1, 1000, "keep", **rule) == 2000
    assert next_look(2, 2001, "keep", **rule) == 4002
    assert next_look(3, 4002, "keep", **rule) is None  # the last look: the keep is final
    assert next_look(1, 1000, "promote", **rule) is None  # decided
    assert next_look(1, 1000, "keep", looks=3, growth=1.1, min_new=500) == 1500  # at least min_new new pairs
    assert next_look(1, 1000, "keep", looks=1, growth=2.0, min_new=500) is None  # one look planned
    with pytest.raises(ValueError, match="growth"):
        next_look(1, 1000, "keep", looks=3, growth=1.0, min_new=500)


def _promoted_at_some_look(t: np.ndarray, a: np.ndarray, b: np.ndarray, confidence: float, seed: int) -> bool:
    for n in (200, 400, 800):  # each look on twice the pairs of the last, as stream monitor looks
        c = paired_bootstrap(
            t[:n], a[:n], b[:n], metric="mse", margin=0.0, confidence=confidence, resamples=200, seed=seed, min_events=1
        )
        if c.decision == "promote":
            return True
    return False


def test_split_confidence_bounds_false_promotions_over_all_looks() -> None:
    """A challenger exactly as good as the champion (margin 0: the boundary of "not better by the margin"),
    looked at on 200, 400 and 800 pairs. With the confidence split over the 3 looks it is promoted at
    any of them at most alpha of the time; testing every look at the full confidence promotes it more
    often than alpha (which is why the looks share it)."""
    alpha, reps = 0.1, 400
    split = full = 0
    for r in range(reps):
        rng = np.random.default_rng(1000 + r)
        t = rng.normal(0, 1, 800)
        a, b = t + rng.normal(0, 1, 800), t + rng.normal(0, 1, 800)  # equally good, independent errors
        split += _promoted_at_some_look(t, a, b, look_confidence(1 - alpha, 3), seed=r)
        full += _promoted_at_some_look(t, a, b, 1 - alpha, seed=r)
    assert split / reps <= alpha, (split, full)
    assert full / reps > alpha, (split, full)

"""stream.bandits.thompson: exact propensities, reproducible Thompson draws, posteriors from counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream.bandits.thompson import (
    EpsilonGreedyPolicy,
    FixedPolicy,
    Policy,
    ThompsonPolicy,
    ThompsonSampling,
    UniformPolicy,
    propensities,
    simulate,
)

MC_DRAWS = 200_000


def monte_carlo_win_rates(alpha: list[float], beta: list[float], seed: int) -> np.ndarray:
    """Share of joint draws in which each arm's Beta sample is the largest."""
    rng = np.random.default_rng(seed)
    samples = rng.beta(np.asarray(alpha)[:, None], np.asarray(beta)[:, None], size=(len(alpha), MC_DRAWS))
    winners = samples.argmax(axis=0)
    return np.bincount(winners, minlength=len(alpha)) / MC_DRAWS


# Posteriors chosen so that every arm wins with a non-trivial probability (a check against
# a point mass near 0 or 1 would pass for a wrong integral too).
MC_CASES = {
    "2 arms": ([3.0, 5.0], [7.0, 9.0]),
    "3 arms": ([2.0, 4.0, 11.0], [5.0, 8.0, 30.0]),
    "4 arms": ([13.0, 4.0, 1.0, 31.0], [88.0, 21.0, 2.0, 170.0]),
    "4 arms, narrow": ([101.0, 111.0, 96.0, 105.0], [901.0, 991.0, 880.0, 940.0]),
}


@pytest.mark.parametrize("alpha,beta", MC_CASES.values(), ids=MC_CASES.keys())
def test_propensities_sum_to_one_and_match_monte_carlo(alpha: list[float], beta: list[float]) -> None:
    p = propensities(np.array(alpha), np.array(beta))
    assert p.shape == (len(alpha),)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    mc = monte_carlo_win_rates(alpha, beta, seed=1234)
    assert (mc > 0.02).all(), "test case is degenerate: some arm (almost) never wins"
    np.testing.assert_allclose(p, mc, atol=0.01)


def test_two_arm_propensity_matches_closed_form() -> None:
    # For integer parameters, P(X_B > X_A) = sum_{i=0}^{a_B-1} B(a_A+i, b_A+b_B) / ((b_B+i) B(1+i, b_B) B(a_A, b_A))
    # (Evan Miller's formula for Beta A/B tests), computed here independently with log-gammas.
    from math import exp, lgamma, log

    def lbeta(a: float, b: float) -> float:
        return lgamma(a) + lgamma(b) - lgamma(a + b)

    a_a, b_a, a_b, b_b = 3, 7, 5, 9
    p_b = sum(exp(lbeta(a_a + i, b_a + b_b) - log(b_b + i) - lbeta(1 + i, b_b) - lbeta(a_a, b_a)) for i in range(a_b))
    p = propensities(np.array([a_a, a_b], float), np.array([b_a, b_b], float))
    assert p[1] == pytest.approx(p_b, abs=1e-6)
    assert p[0] == pytest.approx(1 - p_b, abs=1e-6)


def test_dominant_arm_gets_almost_all_propensity() -> None:
    # Means 0.20 vs 0.01, each from a thousand impressions: arm 0 wins virtually always.
    p = propensities(np.array([201.0, 11.0]), np.array([801.0, 991.0]))
    assert p[0] > 0.99
    assert 0 < p[1] < 0.01
    # The dominant arm may sit anywhere in the list.
    p3 = propensities(np.array([2.0, 11.0, 401.0]), np.array([99.0, 991.0, 601.0]))
    assert p3[2] > 0.99


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("a,b", [(1.0, 1.0), (3.0, 17.0), (1001.0, 99_001.0)])
def test_equal_posteriors_get_equal_propensities(k: int, a: float, b: float) -> None:
    p = propensities(np.full(k, a), np.full(k, b))
    np.testing.assert_allclose(p, np.full(k, 1 / k), atol=1e-6)


def _choices(policy: ThompsonSampling, alpha: np.ndarray, beta: np.ndarray, n: int) -> list[str]:
    return [policy.choose(alpha, beta).arm for _ in range(n)]


def test_same_seed_gives_the_same_choices() -> None:
    alpha, beta = np.array([5.0, 6.0, 4.0]), np.array([20.0, 22.0, 18.0])  # overlapping posteriors
    first = _choices(ThompsonSampling(("a", "b", "c"), seed=42), alpha, beta, 300)
    again = _choices(ThompsonSampling(("a", "b", "c"), seed=42), alpha, beta, 300)
    assert first == again
    assert set(first) == {"a", "b", "c"}, "posteriors overlap, so every arm should be chosen sometimes"


def test_different_seed_gives_a_different_sequence() -> None:
    alpha, beta = np.array([5.0, 6.0, 4.0]), np.array([20.0, 22.0, 18.0])
    first = _choices(ThompsonSampling(("a", "b", "c"), seed=42), alpha, beta, 300)
    other = _choices(ThompsonSampling(("a", "b", "c"), seed=43), alpha, beta, 300)
    assert first != other


def test_choice_is_the_arm_with_the_largest_beta_draw() -> None:
    """Thompson sampling by definition: one Beta draw per arm from the policy's generator, take the max."""
    alpha, beta = np.array([2.0, 3.0, 2.5, 1.0]), np.array([8.0, 9.0, 7.0, 3.0])
    arms = ("w", "x", "y", "z")
    policy = ThompsonSampling(arms, seed=7)
    reference = np.random.default_rng(7)
    for _ in range(200):
        expected = arms[int(np.argmax(reference.beta(alpha, beta)))]
        assert policy.choose(alpha, beta).arm == expected


def test_decision_reports_propensity_and_means_of_the_posterior() -> None:
    alpha, beta = np.array([3.0, 1.0]), np.array([1.0, 3.0])  # means 0.75 and 0.25
    policy = ThompsonSampling(("hi", "lo"), seed=0)
    props = np.array([0.8, 0.2])  # passed in: the decision must report these, not recompute them
    seen = set()
    for _ in range(50):
        d = policy.choose(alpha, beta, props)
        seen.add(d.arm)
        assert d.propensity == (0.8 if d.arm == "hi" else 0.2)
        assert d.arm_means == {"hi": 0.75, "lo": 0.25}
    assert seen == {"hi", "lo"}


def test_posterior_from_counts() -> None:
    policy = ThompsonSampling(("a", "b", "c", "d"))
    # a: 100 impressions, 10 clicks -> Beta(1 + 10, 1 + 90); b: 50 impressions, no click -> Beta(1, 51);
    # c: no counts at all -> the prior Beta(1, 1); d: 7 impressions, 7 clicks -> Beta(8, 1).
    alpha, beta = policy.posterior({"a": (100, 10), "b": (50, 0), "d": (7, 7)})
    assert alpha.tolist() == [11.0, 1.0, 1.0, 8.0]
    assert beta.tolist() == [91.0, 51.0, 1.0, 1.0]


def test_posterior_caps_clicks_at_impressions_and_uses_the_prior() -> None:
    policy = ThompsonSampling(("a", "b"), prior=(2.0, 3.0))
    # a: 5 impressions, 9 clicks -> capped at 5 clicks: Beta(2 + 5, 3 + 0); b: (40, 4) -> Beta(6, 39)
    alpha, beta = policy.posterior({"a": (5, 9), "b": (40, 4)})
    assert alpha.tolist() == [7.0, 6.0]
    assert beta.tolist() == [3.0, 39.0]


def test_posterior_ignores_counts_of_unknown_arms() -> None:
    policy = ThompsonSampling(("a",))
    alpha, beta = policy.posterior({"a": (4, 1), "retired": (1000, 900)})
    assert alpha.tolist() == [2.0]
    assert beta.tolist() == [4.0]


def test_no_arms_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one arm"):
        ThompsonSampling(())


# --- offline simulation ---------------------------------------------------------------------------
CTR = np.array([0.02, 0.10, 0.05])


def _rounds(n: int) -> list[tuple[str, np.ndarray]]:
    return [("mobile" if i % 2 else "desktop", CTR) for i in range(n)]


def test_simulate_records_the_true_rate_of_the_arm_played_and_bernoulli_clicks() -> None:
    sim = simulate({"fixed": FixedPolicy(1)}, _rounds(20_000), np.random.default_rng(3))["fixed"]
    assert (sim.expected == 0.10).all()
    assert abs(sim.clicked.mean() - 0.10) < 0.01  # 20k Bernoulli(0.1): sd 0.002


def test_learning_policies_find_the_best_arm_and_uniform_does_not() -> None:
    rng = np.random.default_rng(5)
    policies: dict[str, Policy] = {
        "uniform": UniformPolicy(3, np.random.default_rng(1)),
        "epsilon_greedy": EpsilonGreedyPolicy(3, 0.1, np.random.default_rng(1)),
        "thompson": ThompsonPolicy(ThompsonSampling(("a", "b", "c"), seed=2)),
    }
    sims = simulate(policies, _rounds(6_000), rng)
    late = {name: float(s.expected[-2_000:].mean()) for name, s in sims.items()}
    assert abs(late["uniform"] - CTR.mean()) < 0.005
    assert late["thompson"] > 0.095
    assert late["epsilon_greedy"] > 0.09  # 10% exploration costs at most 0.1 * (0.10 - 0.02)


def test_epsilon_greedy_without_a_prior_tries_every_arm_in_every_context_first() -> None:
    policy = EpsilonGreedyPolicy(3, 0.0, np.random.default_rng(0), prior=None)
    simulate({"eg": policy}, _rounds(200), np.random.default_rng(0))
    for counts in policy.counts.values():
        assert counts[0].min() > 0


def test_no_module_draws_from_a_samplers_generator_but_the_bandit() -> None:
    """Thompson draws go through ThompsonSampling.sample; nothing else reaches into its ``rng``."""
    root = Path(__file__).resolve().parents[2]
    users = sorted(
        str(p.relative_to(root))
        for d in ("stream", "batch_training", "simulator")
        for p in (root / d).rglob("*.py")
        if ".rng.beta(" in p.read_text()
    )
    assert users == ["stream/bandits/thompson.py"]

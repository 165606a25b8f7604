"""stream.bandits.ope: hand-computed values on a tiny log, and calibration against known logging policies.

Also the worker's logged propensities (``stream.worker.ads``): the placements its seeded draws
choose follow the propensities it logs, so that they can be the ``mu`` of these estimators.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.bandits.ope import deterministic_probs, ips, replay, snips
from stream.worker.ads import Ads

# A log of 6 decisions over 3 arms, logged with known non-uniform propensities.
LOGGED = [0, 1, 2, 0, 1, 0]
MU = [0.5, 0.25, 0.25, 0.5, 0.25, 0.5]
REWARD = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def test_estimates_of_always_arm_0_on_a_tiny_log_match_hand_computed_values() -> None:
    pi = deterministic_probs(LOGGED, [0] * 6)  # [1, 0, 0, 1, 0, 1]
    # weights pi/mu = [2, 0, 0, 2, 0, 2]; r * w = [2, 0, 0, 0, 0, 2]
    e = ips(REWARD, MU, pi)
    assert e.value == pytest.approx(4 / 6)
    # deviations from 2/3: 4/3 twice, -2/3 four times: sum of squares 16/3, sample variance 16/15
    assert e.stderr == pytest.approx(math.sqrt(16 / 15) / math.sqrt(6))
    assert e.n == 6 and e.n_effective == pytest.approx(36 / 12)  # (sum w)^2 / sum w^2

    s = snips(REWARD, MU, pi)
    assert s.value == pytest.approx(4 / 6)  # sum(r w) / sum(w) = 4 / 6
    # delta method: w (r - v) / mean(w) = [2/3, 0, 0, -4/3, 0, 2/3]; sqrt(sum of squares) / n
    assert s.stderr == pytest.approx(math.sqrt(24 / 9) / 6)

    r = replay(LOGGED, REWARD, [0] * 6)  # the rows that logged arm 0: rewards 1, 0, 1
    assert r.value == pytest.approx(2 / 3)
    assert r.stderr == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    assert r.n_effective == 3


def test_a_target_equal_to_the_logging_policy_estimates_the_logged_mean_reward() -> None:
    target = np.array([0.5, 0.25, 0.25])  # the logging policy itself: every weight is 1
    pi = target[LOGGED]
    assert ips(REWARD, MU, pi).value == pytest.approx(4 / 6)
    assert snips(REWARD, MU, pi).value == pytest.approx(4 / 6)


def test_zero_propensity_is_refused() -> None:
    with pytest.raises(ValueError, match="propensities"):
        ips([1.0], [0.0], [1.0])


# True CTR per arm (rows) and device (columns): the scale of the simulator's ads.
CTR = np.array([[0.015, 0.02, 0.01], [0.006, 0.008, 0.007], [0.03, 0.025, 0.04], [0.008, 0.007, 0.009]])


@pytest.mark.parametrize(
    "logging",
    [np.full(4, 0.25), np.array([0.55, 0.15, 0.15, 0.15])],
    ids=["uniform logging", "skewed logging"],
)
def test_estimates_are_unbiased_and_their_standard_errors_calibrated(logging: np.ndarray) -> None:
    """300 seeded logs of 20,000 decisions with known propensities; z = (estimate - truth) / se.

    The truth is the target's expected reward over each log's contexts. Margins: mean z within
    ±0.2 (its standard error is 1/sqrt(300) = 0.058), sd of z within 1 ± 0.15 (its standard error
    is about 0.041), and at least 98 % of estimates within 3 standard errors (99.7 % expected).
    """
    rng = np.random.default_rng(2026)
    n, reps = 20_000, 300
    mix = np.array([0.6, 0.4 / 3, 0.4 / 3, 0.4 / 3])
    z: dict[str, list[float]] = {}
    for _ in range(reps):
        dev = rng.integers(0, 3, n)
        arm = rng.choice(4, size=n, p=logging)
        r = (rng.random(n) < CTR[arm, dev]).astype(float)
        mu = logging[arm]
        truth = {"always 2": CTR[2, dev].mean(), "always 1": CTR[1, dev].mean(), "mix": (mix @ CTR[:, dev]).mean()}
        for name, pi in (
            ("always 2", deterministic_probs(arm, np.full(n, 2))),
            ("always 1", deterministic_probs(arm, np.full(n, 1))),
            ("mix", mix[arm]),
        ):
            for e in (ips(r, mu, pi), snips(r, mu, pi)):
                z.setdefault(f"{e.method} {name}", []).append((e.value - truth[name]) / e.stderr)
        if (logging == logging[0]).all():  # replay is unbiased under uniform logging only
            e = replay(arm, r, np.full(n, 2))
            z.setdefault("replay always 2", []).append((e.value - truth["always 2"]) / e.stderr)
    for name, values in z.items():
        v = np.asarray(values)
        assert abs(v.mean()) < 0.2, (name, v.mean())
        assert 0.85 < v.std() < 1.15, (name, v.std())
        assert np.mean(np.abs(v) <= 3) >= 0.98, (name, np.mean(np.abs(v) <= 3))


def test_the_worker_s_draws_follow_the_propensities_it_logs() -> None:
    """5,000 streamed decisions against one posterior: each placement's share is its logged propensity.

    Margin: 4 binomial standard errors (at most 0.0071 here).
    """
    ads = Ads(("a", "b", "c"), seed=3)
    counts = {"mobile": {"a": (100, 10), "b": (100, 14), "c": (50, 6)}}
    n = 5_000
    requests = [
        ({"request_id": f"r{i}", "user_id": f"u{i % 97}", "event_id": f"e{i}", "event_time": i}, "mobile")
        for i in range(n)
    ]
    decisions = ads.decide(requests, counts, 0, {})
    logged = {d["placement"]: d["propensity"] for d in decisions}
    assert set(logged) == {"a", "b", "c"}
    assert sum(logged.values()) == pytest.approx(1.0, abs=1e-9)
    for arm, p in logged.items():
        share = sum(d["placement"] == arm for d in decisions) / n
        assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / n), (arm, share, p)


def test_decision_log_keeps_decisions_shown_as_decided_with_their_propensities_and_clicks() -> None:
    """stream.tools.ope: decisions joined with ad outcomes by (user_id, request_id, placement)."""
    import pandas as pd

    from stream.tools.ope import DECISION_COLUMNS, OUTCOME_COLUMNS, decision_log, decision_ope

    api = "thompson-api"
    decisions = pd.DataFrame(
        [
            ["d1", "r1", "u1", "mobile", "a", 0.5, api, 0],  # shown, clicked in the window
            ["d2", "r2", "u1", "mobile", "b", 0.25, api, 0],  # shown, not clicked
            ["d3", "r3", "u2", "desktop", "a", 0.5, api, 0],  # shown, clicked after the window: 0
            ["d4", "r4", "u2", "desktop", "b", 0.25, api, 0],  # shown in another placement
            ["d5", "r5", "u3", "mobile", "a", 0.5, api, 0],  # never shown
            ["d6", "r1", "u3", "mobile", "b", 0.25, api, 0],  # same request id, another user: shown, clicked
            ["d1", "r1", "u1", "mobile", "a", 0.5, api, 0],  # a duplicate row (ReplacingMergeTree before merge)
        ],
        columns=DECISION_COLUMNS,
    )
    outcomes = pd.DataFrame(
        [
            ["ad_impression", "u1", "r1", "a", 100],
            ["ad_impression", "u1", "r1", "a", 100],  # delivered twice
            ["ad_click", "u1", "r1", "a", 150],
            ["ad_impression", "u1", "r2", "b", 100],
            ["ad_click", "u1", "r2", "a", 150],  # a click on another placement is not this ad's
            ["ad_impression", "u2", "r3", "a", 100],
            ["ad_click", "u2", "r3", "a", 100 + 1001],
            ["ad_impression", "u2", "r4", "a", 100],
            ["ad_impression", "u3", "r1", "b", 100],
            ["ad_click", "u3", "r1", "b", 100],
        ],
        columns=OUTCOME_COLUMNS,
    )
    log = decision_log(decisions, outcomes, click_window_ms=1000)
    got = {d: (p, c) for d, p, c in log.rows[["decision_id", "propensity", "click"]].itertuples(index=False)}
    assert got == {"d1": (0.5, 1.0), "d2": (0.25, 0.0), "d3": (0.5, 0.0), "d6": (0.25, 1.0)}
    assert (log.decisions, log.not_shown, log.other_placement) == (6, 1, 1)

    est = {r.policy: r for r in decision_ope(log, ["a", "b"])}
    # always a: rewards 1, 0 on the two a-rows (mu 0.5) -> terms 2, 0, 0, 0 over 4 rows
    assert est["always a"].ips.value == pytest.approx(2 / 4)
    # always b: b-rows d2 (0, mu .25), d6 (1, mu .25) -> terms 0, 4 over 4 rows; SNIPS 4 / (4 + 4)
    assert est["always b"].ips.value == pytest.approx(4 / 4)
    assert est["always b"].snips.value == pytest.approx(0.5)
    assert est["always a"].replay is None  # logged propensities not uniform: no replay estimate

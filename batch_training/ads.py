"""Step 4 (ads): a revenue model per placement and an offline bandit simulation.

Revenue model: expected revenue per impression = P(click | placement, device) × revenue per click
(``REVENUE_PER_CLICK``, a constant: the events carry no ad revenue), with the click probability
from the logged ad impressions (uniform logging policy, so unbiased), Beta(1, 1)-smoothed.

Simulation: ``ROUNDS`` impressions replayed day by day with the context mix of the log; the
reward of an arm is Bernoulli(true CTR of (day, placement, device)) from ``truth_ad_arms`` when
the simulator wrote it, else the empirical CTR. Policies: fixed (the best arm of the first week's
log), uniform, epsilon-greedy (ε = 0.1) and Thompson sampling (``stream.bandits.thompson.ThompsonSampling``),
all seeded and run by ``stream.bandits.thompson.simulate``; regret is against the best arm per (day, device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from batch_training.context import Context, Skipped
from batch_training.modeling import write_json
from stream.bandits import thompson as bandit

REVENUE_PER_CLICK = 1.0
ROUNDS = 60_000
EPSILON = 0.1


def _log(ctx: Context) -> pd.DataFrame:
    return ctx.ch.query_df(
        "SELECT placement, device_type AS device, intDiv(toUnixTimestamp64Milli(event_time), 86400000) AS day, "
        "toUInt8(request_id IN (SELECT request_id FROM {db}.events WHERE event_type = 'ad_click')) AS clicked "
        "FROM {db}.events WHERE event_type = 'ad_impression' LIMIT 1 BY request_id"
    )


def ads(ctx: Context) -> dict[str, Any]:
    seed = ctx.profile.seed
    log = _log(ctx)
    if log.empty:
        raise Skipped("no ad events: the history has no ad_impression, so there is no placement to learn")
    log["device"] = log["device"].fillna("unknown").astype(str)
    log["placement"] = log["placement"].astype(str)
    arms = sorted(log["placement"].unique())
    rev = log.groupby(["placement", "device"])["clicked"].agg(["sum", "count"]).reset_index()
    rev["ctr"] = (rev["sum"] + 1) / (rev["count"] + 2)
    rev["revenue_per_1000"] = 1000 * rev["ctr"] * REVENUE_PER_CLICK
    days = sorted(log["day"].unique())
    d0 = int(days[0])
    truth_source = "empirical"
    ctr: dict[tuple[int, str, str], float] = {}
    if ctx.has_table_rows("truth_ad_arms"):
        t = ctx.ch.query_df(
            "SELECT intDiv(toUnixTimestamp64Milli(day_start), 86400000) AS day, placement, "
            "device_type AS device, ctr FROM {db}.truth_ad_arms"
        )
        ctr = {
            (int(d), str(p), str(v)): float(c)
            for d, p, v, c in zip(
                t["day"].tolist(), t["placement"].tolist(), t["device"].tolist(), t["ctr"].tolist(), strict=True
            )
        }
        truth_source = "truth_ad_arms"
    emp = log.groupby(["day", "placement", "device"])["clicked"].mean().to_dict()
    sample = log.sample(min(ROUNDS, len(log)), random_state=seed).sort_values("day")
    contexts = list(zip(sample["day"].astype(int), sample["device"], strict=True))

    def true_ctr(day: int, arm: str, dev: str) -> float:
        return ctr.get((day, arm, dev), emp.get((day, arm, dev), 0.0))

    first_week = log[log["day"] < d0 + 7].groupby("placement")["clicked"].mean()
    fixed_arm = str(first_week.idxmax())
    results, curves = simulate_policies(arms, contexts, true_ctr, fixed_arm, seed)
    _plot(curves, ctx)
    best_policy = min(results, key=lambda k: results[k]["cumulative_regret"])
    out = {
        "truth_source": truth_source,
        "rounds": len(contexts),
        "fixed_arm": fixed_arm,
        "policies": results,
        "best_policy": best_policy,
        "revenue_model": rev.to_dict(orient="records"),
        "summary": {
            "truth": truth_source,
            "best_policy": best_policy,
            **{k: round(v["cumulative_regret"], 2) for k, v in results.items()},
        },
    }
    write_json(ctx.reports_dir / "ads.json", out)
    return out


POLICIES = ("fixed", "uniform", "epsilon_greedy", "thompson")


def _policy(name: str, arms: list[str], fixed_arm: str, seed: int) -> bandit.Policy:
    """A fresh policy, seeded alike for every run."""
    if name == "fixed":
        return bandit.FixedPolicy(arms.index(fixed_arm))
    if name == "uniform":
        return bandit.UniformPolicy(len(arms), np.random.default_rng(seed + 1))
    if name == "epsilon_greedy":
        return bandit.EpsilonGreedyPolicy(len(arms), EPSILON, np.random.default_rng(seed + 1))
    return bandit.ThompsonPolicy(bandit.ThompsonSampling(arms, seed=seed + 2))


def simulate_policies(
    arms: list[str],
    contexts: list[tuple[int, str]],
    true_ctr: Callable[[int, str, str], float],
    fixed_arm: str,
    seed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Each policy over the same (day, device) impressions: clicks, CTR, regret and its cumulative curve.

    Every policy starts from the same seeds; the clicks come from one generator across the
    policies, in the order below.
    """
    rounds = [(dev, np.array([true_ctr(day, a, dev) for a in arms])) for day, dev in contexts]
    best = np.array([ctr.max() for _, ctr in rounds])
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    curves: dict[str, np.ndarray] = {}
    for name in POLICIES:
        sim = bandit.simulate({name: _policy(name, arms, fixed_arm, seed)}, rounds, rng)[name]
        reward = int(sim.clicked.sum())
        curves[name] = np.cumsum(best - sim.expected)
        results[name] = {
            "clicks": reward,
            "ctr": reward / len(contexts),
            "cumulative_regret": float(curves[name][-1]),
            "revenue": reward * REVENUE_PER_CLICK,
        }
    return results, curves


def _plot(curves: dict[str, np.ndarray], ctx: Context) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in curves.items():
        ax.plot(c, label=name)
    ax.set(xlabel="impressions", ylabel="cumulative regret (expected clicks)", title="ad placement policies")
    ax.legend()
    fig.tight_layout()
    out = ctx.reports_dir / "ads"
    out.mkdir(exist_ok=True)
    fig.savefig(out / "cumulative_regret.png", dpi=90)
    plt.close(fig)

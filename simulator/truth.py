"""Closed-form ground truth per user and cut-off day: churn, conversion, high-value conversion.

Conditioned on the user's full latent state at the cut-off (00:00 UTC of day d): traits,
whether they already churned, whether they are already a newsletter member / subscriber.

A user alive at the cut-off dies at the start of day d+k with probability (1-h)^k h and, while
alive, has Poisson(rate * weekly[d+i]) sessions on day d+i, each of which converts with
probability q. As long as nothing happens the state does not change, so

    P(nothing in days d..d+H-1) = sum_k (1-h)^k h exp(-q L_k) + (1-h)^H exp(-q L_H),
    L_k = sum_{i<k} rate * weekly[d+i]

with q = 1 for churn (no session at all in 30 days), q = P(session has a sign-up or a
subscription) for conversion and q = P(subscription) for high-value conversion (14 days).
Sessions never cross midnight UTC, so "days d..d+H-1" is exactly the label's (cut-off, +H days].
"""

from __future__ import annotations

import numpy as np

from simulator.config import SimConfig
from simulator.population import Users
from stream.state.labels import CHURN_HORIZON_MS, CONVERSION_HORIZON_MS, DAY_MS

CHURN_DAYS = CHURN_HORIZON_MS // DAY_MS
CONVERSION_DAYS = CONVERSION_HORIZON_MS // DAY_MS


def p_nothing(
    hazard: np.ndarray, rate: np.ndarray, weekday: np.ndarray, weekly: np.ndarray, horizon_days: int, q: np.ndarray
) -> np.ndarray:
    """P(no converting session over the horizon) for rows alive at the cut-off.

    ``weekday`` is the weekday (Monday = 0) of the cut-off day; the expected sessions of
    horizon day i are ``rate * weekly[(weekday + i) % 7]``.
    """
    surv = np.ones(len(hazard))  # (1-h)^k
    cum = np.zeros(len(hazard))  # L_k
    total = np.zeros(len(hazard))
    for k in range(horizon_days):
        total += surv * hazard * np.exp(-q * cum)
        surv = surv * (1.0 - hazard)
        cum = cum + rate * weekly[(weekday + k) % 7]
    return total + surv * np.exp(-q * cum)


def first_event_day(n_users: int, user: np.ndarray, day: np.ndarray, happened: np.ndarray) -> np.ndarray:
    """Per user, the first day with ``happened`` (a large number if never)."""
    out = np.full(n_users, np.iinfo(np.int32).max, dtype=np.int64)
    np.minimum.at(out, user[happened], day[happened])
    return out


def user_daily(
    cfg: SimConfig, users: Users, first_nl_day: np.ndarray, first_sub_day: np.ndarray
) -> dict[str, np.ndarray]:
    """Truth rows for every (user, cut-off day d) with join_day < d <= days."""
    days = cfg.days
    cut = np.arange(1, days + 1)
    uu, dd = np.nonzero(users.join_day[:, None] < cut[None, :])
    dd = cut[dd]
    alive = users.death_day[uu] >= dd
    weekly = np.asarray(cfg.weekly_rhythm)
    wd = (cfg.start.weekday() + dd) % 7
    rate = users.rate[uu]
    h = users.hazard[uu]
    nl_open = ~(users.newsletter_init[uu] | (first_nl_day[uu] < dd))
    sub_open = ~(users.subscriber_init[uu] | (first_sub_day[uu] < dd))
    p_nl = users.newsletter_prob[uu] * nl_open
    p_sub = users.subscription_prob[uu] * sub_open
    q_conv = 1.0 - (1.0 - p_nl) * (1.0 - p_sub)
    churn = np.where(alive, p_nothing(h, rate, wd, weekly, CHURN_DAYS, np.ones(len(uu))), 1.0)
    conv = np.where(alive, 1.0 - p_nothing(h, rate, wd, weekly, CONVERSION_DAYS, q_conv), 0.0)
    hv = np.where(alive, 1.0 - p_nothing(h, rate, wd, weekly, CONVERSION_DAYS, p_sub), 0.0)
    return {"user": uu, "day": dd, "alive": alive, "p_churn_30d": churn, "p_convert_14d": conv, "p_high_value_14d": hv}

"""Oracle metrics: how well the TRUE probabilities predict the labels realized in the events.

They bound what any model can reach on the dataset, so they must sit above the project's model
targets (else no model can meet them) and below 1 (else the task is trivial). Labels are
realized from the events with the shared definitions in ``stream.state.labels``; duplicates
are dropped by event_id first, malformed records never count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import r2_score, roc_auc_score

from simulator.dataset import Dataset, epoch_ms
from stream.state.labels import (
    CHURN_HORIZON_MS,
    CONVERSION_HORIZON_MS,
    DAY_MS,
    ENGAGEMENT_CAP,
    session_engagement_frame,
)

#: Oracle ranges the default config is tuned for (documented in docs/simulator.md).
TARGETS = {"churn_auc": (0.85, 0.98), "conversion_auc": (0.80, 0.98), "engagement_r2": (0.70, 0.97)}


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _day_matrix(user_idx: np.ndarray, times: np.ndarray, start_ms: int, n_users: int, days: int) -> np.ndarray:
    """act[u, k] = user u has an event with ceil((t - start) / day) == k, i.e. in (c_{k-1}, c_k]."""
    k = np.clip(-((start_ms - times) // DAY_MS), 0, days + 1)  # ceil division
    act = np.zeros((n_users, days + 2), dtype=bool)
    ok = user_idx >= 0
    act[user_idx[ok], k[ok]] = True
    return act


def _window_labels(act: np.ndarray, u: np.ndarray, d: np.ndarray, horizon_days: int) -> tuple[np.ndarray, np.ndarray]:
    """(active before or at cut-off d, any activity in (c_d, c_d + H days])."""
    cum = np.cumsum(act, axis=1)
    before = cum[u, d] > 0
    inside = (cum[u, np.minimum(d + horizon_days, act.shape[1] - 1)] - cum[u, d]) > 0
    return before, inside


def oracle_metrics(ds: Dataset) -> dict[str, Any]:
    """AUC of true click / churn / conversion probabilities and R² of expected engagement."""
    cfg = ds.config
    ev = ds.events.drop_duplicates("event_id")
    truth = ds.truth
    out: dict[str, Any] = {"events": len(ds), "users": cfg.n_users, "days": cfg.days}

    # Article clicks: an impression is clicked if its session has a click at that position.
    kinds = ev["event_type"].astype(str)
    imp = ev.loc[kinds == "article_impression", ["event_id", "session_id", "position"]]
    clicks = ev.loc[kinds == "article_click", ["session_id", "position"]].drop_duplicates()
    clicks["clicked"] = 1
    imp = imp.merge(truth["article_impressions"], on="event_id").merge(
        clicks, on=["session_id", "position"], how="left"
    )
    y = imp["clicked"].fillna(0).to_numpy(dtype=int)
    out["click_auc"] = _auc(y, imp["p_click"].to_numpy())
    out["click_rate"] = float(y.mean()) if len(y) else float("nan")

    ads = truth["ad_impressions"][["request_id", "p_click"]]
    ad_clicks = set(ev.loc[kinds == "ad_click", "request_id"].astype(str))
    y_ad = ads["request_id"].astype(str).isin(ad_clicks).to_numpy(dtype=int)
    out["ad_click_auc"] = _auc(y_ad, ads["p_click"].to_numpy())
    out["ad_ctr"] = float(y_ad.mean()) if len(y_ad) else float("nan")

    # Engagement: realized per session vs expected.
    realized = session_engagement_frame(ev)
    sess = truth["sessions"].set_index("session_id")["expected_engagement"]
    both = pd.concat([sess.rename("expected"), realized.rename("realized")], axis=1, join="inner")
    out["engagement_r2"] = float(r2_score(both["realized"], both["expected"])) if len(both) > 1 else float("nan")
    out["engagement_rmse"] = float(np.sqrt(np.mean((both["realized"] - both["expected"]) ** 2)))
    out["engagement_mean"] = float(both["realized"].mean())
    out["engagement_bias"] = float((both["realized"] - both["expected"]).mean())
    out["sessions_at_cap"] = float((both["realized"] >= ENGAGEMENT_CAP).mean())

    # Churn and conversion per (user, cut-off day).
    users = pd.Index(truth["users"]["user_id"].astype(str))
    uidx = users.get_indexer(pd.Index(ev["user_id"].astype(str)))
    times = ev["event_time"].astype("int64").to_numpy()
    start = epoch_ms(cfg.start)
    act = _day_matrix(uidx, times, start, len(users), cfg.days)
    conv_kind = kinds.isin(["newsletter_signup", "subscription"]).to_numpy()
    sub_kind = (kinds == "subscription").to_numpy()
    act_conv = _day_matrix(uidx[conv_kind], times[conv_kind], start, len(users), cfg.days)
    act_sub = _day_matrix(uidx[sub_kind], times[sub_kind], start, len(users), cfg.days)
    daily = truth["user_daily"]
    u = users.get_indexer(pd.Index(daily["user_id"].astype(str)))
    d = daily["day"].to_numpy(dtype=np.int64)
    for name, matrix, horizon_ms, column, positive_if_none in (
        ("churn", act, CHURN_HORIZON_MS, "p_churn_30d", True),
        ("conversion", act_conv, CONVERSION_HORIZON_MS, "p_convert_14d", False),
        ("high_value", act_sub, CONVERSION_HORIZON_MS, "p_high_value_14d", False),
    ):
        h = int(horizon_ms // DAY_MS)
        full = d + h <= cfg.days
        before, _ = _window_labels(act, u, d, h)
        _, inside = _window_labels(matrix, u, d, h)
        keep = full & before
        label = (~inside if positive_if_none else inside)[keep].astype(int)
        p = daily[column].to_numpy()[keep]
        out[f"{name}_auc"] = _auc(label, p)
        out[f"{name}_rate"] = float(label.mean()) if len(label) else float("nan")
        out[f"{name}_mean_p"] = float(p.mean()) if len(p) else float("nan")
        out[f"{name}_rows"] = int(keep.sum())
    return out


def format_metrics(m: dict[str, Any]) -> str:
    lines = [f"dataset: {m['users']} users, {m['days']} days, {m['events']} events"]
    for key, label in (("churn", "churn 30d"), ("conversion", "conversion 14d"), ("high_value", "high-value 14d")):
        lines.append(
            f"{label:<16} AUC {m[f'{key}_auc']:.4f}   label rate {m[f'{key}_rate']:.4f}   "
            f"mean p {m[f'{key}_mean_p']:.4f}   rows {m[f'{key}_rows']}"
        )
    lines.append(f"{'article click':<16} AUC {m['click_auc']:.4f}   click rate {m['click_rate']:.4f}")
    lines.append(f"{'ad click':<16} AUC {m['ad_click_auc']:.4f}   CTR {m['ad_ctr']:.4f}")
    lines.append(
        f"{'engagement':<16} R2  {m['engagement_r2']:.4f}   RMSE {m['engagement_rmse']:.3f}   "
        f"mean {m['engagement_mean']:.2f}   bias {m['engagement_bias']:+.3f}   "
        f"at cap {m['sessions_at_cap']:.5f}"
    )
    for key, (lo, hi) in TARGETS.items():
        v = m[key]
        verdict = "ok" if lo < v < hi else ("n/a (window too short)" if v != v else "OUT OF RANGE")
        lines.append(f"target {key}: {lo} < {v:.4f} < {hi}: {verdict}")
    return "\n".join(lines)

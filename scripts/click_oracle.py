"""Offline: the click model's AUC ÷ the oracle's on the drift demo's world, before and after drift.

The world of ``python -m stream demo --drift`` (1,000 users, seed 42, 22 days of history, drift on
day 25). Click rows are built by batch training's own per-user and per-article passes (the
functions the worker runs), without ClickHouse. The first model trains on the history (the
``demo`` profile's share of rows, or all of them) with the profile's seeded search and the
pipeline's 70/15/15 time split. The challenger trains on the two days before day 27.3 (when the
demo's monitor retrains; ``full`` profile), from scratch and warm-started from the first model,
like ``batch_training retrain``. All are scored on the rows from day 27.3 on; the oracle is the
simulator's ``p_click`` on the same rows and labels.

    python scripts/click_oracle.py [--profile demo|full] [--fixed] [--extra NAME ...] [--truth NAME ...]
    python scripts/click_oracle.py --ceiling
    python scripts/click_oracle.py --history-days 90 [--sessions-scale 2] [--seed 43] ...

``--extra`` adds candidate features derived from the row's own columns (:data:`EXTRA`), ``--truth``
the simulator's hidden terms (:func:`truth_columns`), ``--fixed`` fits one setting instead of the search.
``--ceiling`` prints the Bayes ceiling instead: the simulator's true click logit with the user's
intercept (and brand and category affinities) replaced by their MAP estimates from the user's
earlier sessions, with and without the true engagement known (docs/monitoring.md).
``--history-days N`` gives the same users a longer past (N days before the drift instead of 22,
see :func:`world`), ``--sessions-scale K`` K times as many sessions per reader and day;
``--seed`` the model search's seed (run-to-run spread). Every run first prints the history per
reader.
"""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from batch_training.context import get_profile
from batch_training.datasets import FULL, _article_pass, _clicks_frame, _Job, _user_pass
from batch_training.modeling import cap_rows, fit_xgb, time_split
from stream.state import CLICK_FEATURES, DEFAULT_CONFIG, StateConfig
from stream.state.labels import CLICK_WINDOW_MS, DAY_MS

HISTORY_DAYS, LIVE_DAYS, DRIFT_AFTER, RETRAIN_AFTER, WINDOW = 22, 9, 3, 5.3, 2.0
USERS = 1000


def _per_session(col: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda r: r[col] / r["n_session_start_30d"].clip(lower=1)


#: candidate features computed from a row's columns (each could be a user_row feature without a
#: state change)
EXTRA: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "impressions_per_session_30d": _per_session("n_article_impression_30d"),
    "clicks_per_session_30d": _per_session("n_article_click_30d"),
    "views_per_session_30d": _per_session("n_article_view_30d"),
    "ctr_30d_prior_0.2": lambda r: (r["n_article_click_30d"] + 2.0) / (r["n_article_impression_30d"] + 10.0),
    "brand_lift": lambda r: r["user_brand_ctr"] / r["ctr_lifetime"],
    "category_lift": lambda r: r["user_category_ctr"] / r["ctr_lifetime"],
}


def world(history_days: int = HISTORY_DAYS, sessions_scale: float = 1.0, users: int = USERS) -> Any:
    """The demo's world; with ``history_days`` > 22, the same users with a longer past.

    The users are drawn as for the 22-day world (same traits, same draws), then every join and
    churn day moves ``history_days - 22`` days later: the users present on day 0 have been there
    since day 0 of the longer world, the others join, and everyone churns, at the same time before
    the drift as in the 22-day world, so the drift meets the same readers. Articles and sessions
    are drawn anew (their streams depend on the length). ``sessions_scale`` multiplies every human
    reader's session rate (the median of the log-normal); ``users`` the number of users (other
    users, drawn anew: ``users=500, sessions_scale=2`` has about the events per day of the demo's).
    """
    import dataclasses

    import simulator.dataset as sd
    from simulator import SimConfig, generate
    from simulator.population import NEVER, Users

    shift = history_days - HISTORY_DAYS
    cfg = SimConfig(
        n_users=users,
        days=history_days + LIVE_DAYS,
        seed=42,
        drift_day=history_days + DRIFT_AFTER,
        activity_median_per_day=SimConfig().activity_median_per_day * sessions_scale,
    )
    if shift == 0:
        return generate(cfg)
    base_make_users = sd.make_users

    def make_users(cfg: SimConfig, rng: np.random.Generator) -> Users:
        u = base_make_users(dataclasses.replace(cfg, days=HISTORY_DAYS + LIVE_DAYS, drift_day=0), rng)
        join = np.where(u.join_day > 0, u.join_day + shift, 0).astype(np.int32)
        death = np.where(u.death_day < NEVER, u.death_day + shift, NEVER).astype(np.int32)
        return dataclasses.replace(u, join_day=join, death_day=death)

    sd.make_users = make_users
    try:
        return generate(cfg)
    finally:
        sd.make_users = base_make_users


def origin_ms(ds: Any) -> int:
    """Day 0 of the world (00:00 UTC of its start date)."""
    from simulator.dataset import epoch_ms

    return int(epoch_ms(ds.config.start))


def archive(ds: Any, history_days: int, archive_days: int) -> Any:
    """The world as seen by a product whose archive starts ``archive_days`` before the drift's
    history end (its events from day ``history_days - archive_days`` on; the truth tables whole)."""
    import dataclasses

    import pyarrow.compute as pc

    if archive_days >= history_days:
        return ds
    cut = origin_ms(ds) + (history_days - archive_days) * DAY_MS
    return dataclasses.replace(ds, table=ds.table.filter(pc.field("event_time") >= cut), malformed=[])


def world_rows(ds: Any, config: StateConfig = DEFAULT_CONFIG) -> pd.DataFrame:
    """Every impression's click row with its ``p_click`` and day of the world, in time order."""
    df = ds.table.to_pandas().rename(columns={"event_time": "t"})
    df = df.sort_values(["user_id", "t", "event_id"], kind="stable", ignore_index=True)
    start = origin_ms(ds)
    _, clicks, _ = _user_pass(_Job(df, [], int(df["t"].max()), 30 * DAY_MS, CLICK_WINDOW_MS, config, FULL))
    art = df[df["event_type"].isin(["article_impression", "article_click", "article_view"])]
    art = art.sort_values(["t", "event_id"], ignore_index=True)[["event_id", "article_id", "event_type", "t"]]
    rows = _clicks_frame(clicks, _article_pass((art, config, FULL)))
    truth = ds.truth["article_impressions"][["event_id", "p_click"]]
    rows = rows.merge(truth, on="event_id", how="left").sort_values("event_time_ms", kind="stable", ignore_index=True)
    rows["day"] = (rows["event_time_ms"] - start) / DAY_MS
    return rows


def demo_sample(rows: pd.DataFrame, seed: int = 7) -> np.ndarray:
    """About the ``demo`` profile's share of rows (60 % of users, 15 % of their impressions), seeded."""
    u = np.array([(zlib.crc32(f"{seed}:{x}".encode()) % 10_000) < 6_000 for x in rows["user_id"]])
    i = np.array([(zlib.crc32(f"{seed}:{x}".encode()) % 10_000) < 1_500 for x in rows["event_id"]])
    return u & i


def fit(rows: pd.DataFrame, names: list[str], profile: str, base: Any = None, seed: int | None = None) -> Any:
    """``train_model``'s XGBoost fit (search, warm start) without registering; no CV. ``seed``
    replaces the profile's (the search's candidates, the row cap's sample and XGBoost's own)."""
    prof = get_profile(profile) if seed is None else get_profile(profile, seed=seed)
    x, y = rows[names].to_numpy(np.float32), rows["clicked"].to_numpy()
    sp = time_split(rows["event_time_ms"].to_numpy())
    tr, va = cap_rows(sp.train, prof.max_train_rows, prof.seed), cap_rows(sp.val, prof.max_train_rows // 3, prof.seed)
    pos = max(float(y[tr].mean()), 1e-6)
    spw = (1.0, round(((1 - pos) / pos) ** 0.5, 3)) if base is None else (float(base.scale_pos_weight or 1.0),)
    return fit_xgb(
        x[tr],
        y[tr],
        x[va],
        y[va],
        objective="binary:logistic",
        n_iter=prof.search_iter if base is None else min(prof.search_iter, 3),
        cv_folds=0,
        n_estimators=prof.n_estimators if base is None else min(prof.n_estimators, 200),
        seed=prof.seed,
        space={"scale_pos_weight": spw},
        base=None if base is None else base.get_booster(),
    ).model


def ratio(model: Any, rows: pd.DataFrame, names: list[str]) -> float:
    y = rows["clicked"].to_numpy()
    p = model.get_booster().inplace_predict(rows[names].to_numpy(np.float32))
    return float(roc_auc_score(y, p) / roc_auc_score(y, rows["p_click"].to_numpy()))


#: ``--fixed``: one XGBoost setting instead of the profile's search (quicker, less spread between runs)
FIXED = {"max_depth": 4, "learning_rate": 0.08, "min_child_weight": 5, "subsample": 0.8, "colsample_bytree": 0.8}
FIXED_WARM = {**FIXED, "max_depth": 3, "learning_rate": 0.1}


def fit_fixed(rows: pd.DataFrame, names: list[str], profile: str, base: Any = None, seed: int | None = None) -> Any:
    """One fixed setting, early stopping on the validation part of the time split (``profile`` unused)."""
    import xgboost as xgb

    sp = time_split(rows["event_time_ms"].to_numpy())
    x, y = rows[names].to_numpy(np.float32), rows["clicked"].to_numpy()
    m = xgb.XGBClassifier(
        n_estimators=300 if base is None else 200,
        early_stopping_rounds=30,
        objective="binary:logistic",
        tree_method="hist",
        n_jobs=2,
        random_state=42 if seed is None else seed,
        eval_metric="auc",
        **(FIXED if base is None else FIXED_WARM),
    )
    m.fit(
        x[sp.train],
        y[sp.train],
        eval_set=[(x[sp.val], y[sp.val])],
        verbose=False,
        xgb_model=None if base is None else base.get_booster(),
    )
    return m


def truth_columns(ds: Any, rows: pd.DataFrame, history_days: int = HISTORY_DAYS) -> pd.DataFrame:
    """``--truth``: the simulator's hidden terms of each row's click logit, as candidate features."""
    cfg, truth = ds.config, ds.truth
    users = truth["users"].set_index("user_id")
    arts = truth["articles"].set_index("article_id")
    dev = np.argmax(rows[["ctx_device_desktop", "ctx_device_mobile", "ctx_device_tablet"]].to_numpy(), axis=1)
    drifted = rows["day"].to_numpy() >= history_days + DRIFT_AFTER
    decay = np.where(drifted, cfg.drift_position_decay, cfg.position_decay)
    shift = np.where(drifted, np.asarray(cfg.drift_device_click_shift)[dev], np.asarray(cfg.device_click_shift)[dev])
    out = pd.DataFrame(index=rows.index)
    out["true_position_device"] = -decay * np.log(rows["position"].to_numpy()) + shift
    out["true_quality"] = arts["quality_logit"].reindex(rows["article_id"]).to_numpy()
    out["true_engagement"] = users["engagement"].reindex(rows["user_id"]).to_numpy()
    out["true_click_intercept"] = users["click_logit"].reindex(rows["user_id"]).to_numpy()
    return out.astype(np.float32)


def evaluate(
    rows: pd.DataFrame,
    names: list[str],
    profile: str = "demo",
    fixed: bool = False,
    window_days: float = WINDOW,
    history_days: int = HISTORY_DAYS,
    seed: int | None = None,
) -> dict[str, float]:
    day = rows["day"]
    hist = rows[day < history_days]
    if profile == "demo":
        hist = hist[demo_sample(hist)]
    fit_ = fit_fixed if fixed else fit
    first = fit_(hist, names, profile, seed=seed)
    retrain_at = history_days + RETRAIN_AFTER
    before = rows[(day >= history_days) & (day < history_days + DRIFT_AFTER)]
    after = rows[day >= retrain_at]
    window = rows[(day >= retrain_at - window_days) & (day < retrain_at)]
    return {
        "before": ratio(first, before, names),
        "after_first": ratio(first, after, names),
        "challenger_scratch": ratio(fit_(window, names, "full", seed=seed), after, names),
        "challenger_warm": ratio(fit_(window, names, "full", base=first, seed=seed), after, names),
    }


# --- reader features over the whole history (``--extra``) ---------------------------------------

#: candidate features from the reader's whole past (:func:`history_columns`), not from a row's columns
HISTORY_EXTRA = (
    "impressions_lifetime",
    "clicks_lifetime",
    "ctr_eb",
    "brand_ctr_eb",
    "category_ctr_eb",
    "brand_lift_eb",
    "category_lift_eb",
    "reader_logit_eb",
    "ctr_oe_eb",
    "brand_oe_eb",
    "category_oe_eb",
    "reader_log_oe_eb",
)


def _eb_strength(x: np.ndarray, n: np.ndarray, base: np.ndarray) -> float:
    """Pseudo-impressions ``k`` of a beta prior of mean ``base`` (per row) that best explains the
    clicks ``x`` of ``n`` impressions: the beta-binomial likelihood's maximum on a log grid."""
    from scipy.special import betaln

    b = np.clip(base, 1e-4, 1 - 1e-4)
    grid = np.exp(np.linspace(0, np.log(1e4), 60))
    ll = [float(np.sum(betaln(x + k * b, n - x + k * (1 - b)) - betaln(k * b, k * (1 - b)))) for k in grid]
    return float(grid[int(np.argmax(ll))])


def _logit(p: pd.Series | np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def history_columns(ds: Any, rows: pd.DataFrame, history_days: int = HISTORY_DAYS) -> pd.DataFrame:
    """Per impression row, from the reader's events strictly before it (over the whole history):

    lifetime impressions and clicks; the CTR with an empirical-Bayes beta prior at the data's click
    rate (``ctr_eb``); per brand and category, the CTR shrunk towards ``ctr_eb`` with their own
    empirical-Bayes strength, their ratio to it (``*_lift_eb``) and the sum in logit of the three
    (``reader_logit_eb``). ``*_oe_eb``: the same as observed over expected clicks, the expected
    from the population's click rate at each impression's position (the feed position is the one
    known term that differs most between readers' histories), shrunk towards 1. The priors'
    strengths are fitted on the history (days before ``history_days``) and printed.
    """
    ev = ds.table.select(["event_id", "event_type", "user_id", "event_time", "brand", "category", "position"])
    e = ev.to_pandas()
    e = e[e["event_type"].isin(["article_impression", "article_click"])]
    e = e.sort_values(["user_id", "event_time", "event_id"], kind="stable", ignore_index=True)
    imp = (e["event_type"] == "article_impression").to_numpy(float)
    clk = 1.0 - imp
    start = origin_ms(ds)
    hist = ((e["event_time"].to_numpy() - start) / DAY_MS) < history_days
    # the population's click rate per position (clicks are matched to positions by the rows' labels)
    pos_rate = rows[rows["day"] < history_days].groupby("position")["clicked"].mean()
    exp_ = np.where(imp > 0, e["position"].map(pos_rate).fillna(float(pos_rate.mean())).to_numpy(float), 0.0)
    e["imp"], e["clk"], e["exp"] = imp, clk, exp_
    out = pd.DataFrame({"event_id": e["event_id"]})

    def before(keys: list[str], col: str) -> np.ndarray:
        return (e.groupby(keys, sort=False)[col].cumsum() - e[col]).to_numpy()

    for keys, suffix in (([], ""), (["brand"], "_b"), (["category"], "_c")):
        for col in ("imp", "clk", "exp"):
            out[col + suffix] = before(["user_id", *keys], col)
    # priors fitted on the readers' totals over the history
    h = e[hist]
    tot = h.groupby("user_id")[["imp", "clk", "exp"]].sum()
    m = float(tot["clk"].sum() / tot["imp"].sum())
    k_u = _eb_strength(tot["clk"].to_numpy(), tot["imp"].to_numpy(), np.full(len(tot), m))
    user_rate = (tot["clk"] + m * k_u) / (tot["imp"] + k_u)
    strengths = {"user": k_u}
    for key in ("brand", "category"):
        t = h.groupby(["user_id", key])[["imp", "clk"]].sum().reset_index()
        strengths[key] = _eb_strength(t["clk"].to_numpy(), t["imp"].to_numpy(), t["user_id"].map(user_rate).to_numpy())
    # observed / expected: a gamma prior of mean 1 on the reader's multiplier, in expected clicks
    # (method of moments: the spread of clicks / expected beyond Poisson noise)
    oe = tot["clk"] / tot["exp"].clip(lower=1e-9)
    ok = tot["exp"] >= 1
    var = float(np.var(oe[ok]) - np.mean(oe[ok] / tot["exp"][ok]))
    strengths["user_oe"] = float(np.clip(1 / max(var, 1e-6), 0.5, 1e4))
    print(
        "eb click rate",
        round(m, 4),
        "strengths (pseudo-impressions, pseudo-expected clicks)",
        {k: round(v, 1) for k, v in strengths.items()},
    )
    ctr = (out["clk"] + m * k_u) / (out["imp"] + k_u)
    res = pd.DataFrame({"event_id": out["event_id"], "impressions_lifetime": out["imp"], "clicks_lifetime": out["clk"]})
    res["ctr_eb"] = ctr
    k_oe = strengths["user_oe"]
    oe_u = (out["clk"] + k_oe) / (out["exp"] + k_oe)
    res["ctr_oe_eb"] = oe_u
    for key, sfx in (("brand", "_b"), ("category", "_c")):
        k = strengths[key]
        res[f"{key}_ctr_eb"] = (out["clk" + sfx] + ctr * k) / (out["imp" + sfx] + k)
        res[f"{key}_lift_eb"] = res[f"{key}_ctr_eb"] / ctr
        # the same strength in expected clicks: k impressions carry k * m expected clicks
        res[f"{key}_oe_eb"] = (out["clk" + sfx] + oe_u * k * m) / (out["exp" + sfx] + k * m)
    res["reader_logit_eb"] = _logit(res["brand_ctr_eb"]) + _logit(res["category_ctr_eb"]) - _logit(ctr)
    res["reader_log_oe_eb"] = np.log(res["brand_oe_eb"]) + np.log(res["category_oe_eb"]) - np.log(oe_u)
    got = rows[["event_id"]].merge(res, on="event_id", how="left")
    return got.drop(columns="event_id").astype(np.float32).set_axis(rows.index)


def history_stats(rows: pd.DataFrame, known_days: int, history_days: int = HISTORY_DAYS) -> str:
    """Readers with impressions in the history, their impressions and clicks; rows before/after."""
    day = rows["day"]
    h = rows[day < history_days].groupby("user_id")["clicked"].agg(["size", "sum"])
    before = int(((day >= history_days) & (day < history_days + DRIFT_AFTER)).sum())
    after = int((day >= history_days + RETRAIN_AFTER).sum())
    return (
        f"history {known_days} of {history_days} d known: {len(h)} readers, {h['size'].mean():.0f} impressions and"
        f" {h['sum'].mean():.1f} clicks per reader; scored rows before {before}, after {after}"
    )


# --- the Bayes ceiling ------------------------------------------------------------------------------


def _map(
    x: np.ndarray, off: np.ndarray, y: np.ndarray, mean: np.ndarray, prec: np.ndarray, th: np.ndarray
) -> np.ndarray:
    """MAP of a logistic regression with offset and independent Gaussian priors (damped Newton)."""
    for _ in range(30):
        q = 1.0 / (1.0 + np.exp(-np.clip(x @ th + off, -30, 30)))
        g = x.T @ (y - q) - prec * (th - mean)
        h = (x.T * (q * (1 - q))) @ x + np.diag(prec)
        step = np.clip(np.linalg.solve(h, g), -1.0, 1.0)
        th = th + step
        if np.abs(step).max() < 1e-6:
            break
    return th


def ceiling(ds: Any, rows: pd.DataFrame, history_days: int = HISTORY_DAYS) -> dict[str, dict[str, float]]:
    """AUC ÷ oracle of the true click logit with the user's part estimated from earlier sessions.

    The true logit is split into the user's intercept (``click_logit``), brand and category
    affinity and the rest (quality, position, device: known). The intercept's prior is what the
    true engagement says (``click_logit`` = -2.2 + 1.1·engagement + 0.6·N(0, 1)), the affinities'
    priors are fitted on the true population; per session, the MAP from the user's earlier sessions.
    ``both_from_clicks_only``: the same without the engagement (the intercept's prior is the
    population's): what the user's clicks alone tell.
    """
    cfg, truth = ds.config, ds.truth
    users = truth["users"].set_index("user_id")
    arts = truth["articles"].set_index("article_id")
    pref = truth["user_preferences"]
    r = rows[rows["article_id"].isin(arts.index)]
    ui = r["user_id"].map({u: i for i, u in enumerate(users.index)}).to_numpy()
    bi = arts.loc[r["article_id"], "brand_index"].to_numpy()
    ci = arts.loc[r["article_id"], "category_index"].to_numpy()
    nb, nc = int(bi.max()) + 1, int(ci.max()) + 1
    aff = {
        k: pref[pref["kind"] == k].pivot(index="user_id", columns="key", values="logit").reindex(users.index).to_numpy()
        for k in ("brand", "category")
    }
    p = r["p_click"].to_numpy().clip(1e-9, 1 - 1e-9)
    logit = np.log(p / (1 - p))
    u_true = users["click_logit"].to_numpy()[ui]
    a_true = aff["brand"][ui, bi] + aff["category"][ui, ci]
    rest = logit - u_true - a_true
    human = ~users["is_bot"].to_numpy()
    m_b, s_b = np.nanmean(aff["brand"][human]), np.nanstd(aff["brand"][human])
    m_c, s_c = np.nanmean(aff["category"][human]), np.nanstd(aff["category"][human])
    icpt, slope, noise = cfg.click_logit
    y = r["clicked"].to_numpy().astype(float)
    t, sess = r["event_time_ms"].to_numpy(), r["session_id"].to_numpy()
    cl = users["click_logit"].to_numpy()[human]
    est_u, est_ua, est_c = logit.copy(), logit.copy(), logit.copy()  # bots keep their true probability
    z = users["engagement"].to_numpy()
    bots = users["is_bot"].to_numpy()
    for u, grp in pd.Series(np.arange(len(r))).groupby(ui):
        if bots[u]:
            continue
        ix = grp.to_numpy()[np.argsort(t[grp.to_numpy()], kind="stable")]
        s = sess[ix]
        cuts = np.r_[0, np.nonzero(s[1:] != s[:-1])[0] + 1, len(ix)]
        m_u = icpt + slope * z[u]
        th1 = np.array([m_u])
        mean2 = np.r_[m_u, np.full(nb, m_b), np.full(nc, m_c)]
        prec2 = np.r_[1 / noise**2, np.full(nb, 1 / s_b**2), np.full(nc, 1 / s_c**2)]
        th2 = mean2.copy()
        mean3 = np.r_[cl.mean(), mean2[1:]]
        prec3 = np.r_[1 / cl.var(), prec2[1:]]
        th3 = mean3.copy()
        for j in range(len(cuts) - 1):
            cur, hist = ix[cuts[j] : cuts[j + 1]], ix[: cuts[j]]
            if len(hist):
                th1 = _map(
                    np.ones((len(hist), 1)),
                    rest[hist] + a_true[hist],
                    y[hist],
                    np.array([m_u]),
                    np.array([1 / noise**2]),
                    th1,
                )
                x2 = np.zeros((len(hist), 1 + nb + nc))
                x2[:, 0] = 1
                x2[np.arange(len(hist)), 1 + bi[hist]] = 1
                x2[np.arange(len(hist)), 1 + nb + ci[hist]] = 1
                th2 = _map(x2, rest[hist], y[hist], mean2, prec2, th2)
                th3 = _map(x2, rest[hist], y[hist], mean3, prec3, th3)
            est_u[cur] = th1[0] + a_true[cur] + rest[cur]
            est_ua[cur] = th2[0] + th2[1 + bi[cur]] + th2[1 + nb + ci[cur]] + rest[cur]
            est_c[cur] = th3[0] + th3[1 + bi[cur]] + th3[1 + nb + ci[cur]] + rest[cur]
    day = r["day"].to_numpy()
    out = {}
    for name, m in (
        ("before", (day >= history_days) & (day < history_days + DRIFT_AFTER)),
        ("after", day >= history_days + RETRAIN_AFTER),
    ):
        o = roc_auc_score(y[m], logit[m])
        out[name] = {
            "intercept_estimated": float(roc_auc_score(y[m], est_u[m]) / o),
            "intercept_and_affinities_estimated": float(roc_auc_score(y[m], est_ua[m]) / o),
            "both_from_clicks_only": float(roc_auc_score(y[m], est_c[m]) / o),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="demo", choices=["demo", "full"])
    ap.add_argument("--extra", nargs="*", default=[], choices=sorted([*EXTRA, *HISTORY_EXTRA]))
    ap.add_argument("--ceiling", action="store_true")
    ap.add_argument("--fixed", action="store_true", help="one fixed XGBoost setting instead of the search")
    ap.add_argument("--truth", nargs="*", default=[], help="true terms as extra features (truth_columns)")
    ap.add_argument("--ctr-prior", type=float, help="StateConfig.ctr_prior of the rows (rows rebuilt)")
    ap.add_argument("--ctr-strength", type=float, help="StateConfig.ctr_strength of the rows (rows rebuilt)")
    ap.add_argument("--window-days", type=float, default=WINDOW, help="the challenger's training window")
    ap.add_argument("--rows", type=Path, help="cache of the click rows (Parquet), built if missing")
    ap.add_argument("--history-days", type=int, default=HISTORY_DAYS, help="days of history before the drift")
    ap.add_argument("--sessions-scale", type=float, default=1.0, help="times the readers' session rate")
    ap.add_argument("--users", type=int, default=USERS, help="simulated users (default 1000, the demo's)")
    ap.add_argument(
        "--archive-days", type=int, help="only the last N days of the history are known (default: all of it)"
    )
    ap.add_argument("--seed", type=int, help="the model search's seed instead of the profile's (42)")
    a = ap.parse_args()
    if a.history_days < HISTORY_DAYS:
        ap.error(f"--history-days {a.history_days}: expected at least {HISTORY_DAYS}")
    hx = [n for n in a.extra if n in HISTORY_EXTRA]
    cached = a.rows is not None and a.rows.exists() and a.ctr_prior is None and a.ctr_strength is None
    # the world is rebuilt only when the rows are not cached or its truth is needed
    ds = None if cached and not (a.ceiling or a.truth or hx) else world(a.history_days, a.sessions_scale, a.users)
    if ds is not None and a.archive_days is not None:
        ds = archive(ds, a.history_days, a.archive_days)
    if a.ctr_prior is not None or a.ctr_strength is not None:
        base = StateConfig()
        cfg = StateConfig(
            ctr_prior=base.ctr_prior if a.ctr_prior is None else a.ctr_prior,
            ctr_strength=base.ctr_strength if a.ctr_strength is None else a.ctr_strength,
        )
        rows = world_rows(ds, cfg)
    elif cached:
        rows = pd.read_parquet(a.rows)
    else:
        rows = world_rows(ds)
        if a.rows is not None:
            rows.to_parquet(a.rows)
    print(
        history_stats(
            rows, a.history_days if a.archive_days is None else min(a.archive_days, a.history_days), a.history_days
        )
    )
    if a.ceiling:
        for k, v in ceiling(ds, rows, a.history_days).items():
            print(k, " ".join(f"{n}={x:.3f}" for n, x in v.items()))
        return
    for name in a.extra:
        if name in EXTRA:
            rows[name] = EXTRA[name](rows).astype(np.float32)
    if hx:
        rows = pd.concat([rows, history_columns(ds, rows, a.history_days)[hx]], axis=1)
    if a.truth:
        rows = pd.concat([rows, truth_columns(ds, rows, a.history_days)[a.truth]], axis=1)
    names = [*CLICK_FEATURES.names, *a.extra, *a.truth]
    r = evaluate(rows, names, a.profile, a.fixed, a.window_days, a.history_days, a.seed)
    print(" ".join(f"{k}={v:.3f}" for k, v in r.items()))


if __name__ == "__main__":
    main()

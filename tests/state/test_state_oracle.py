"""Every user/article feature against an independent pandas/numpy computation on the same events.

The expected values are computed here from the raw events, not by the code under test; only the
shared label definition (``labels.engagement_score``) is reused, on purpose.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from stream.state import (
    ARTICLE_FEATURES,
    USER_FEATURES,
    article_features,
    new_article_state,
    new_user_state,
    update_article,
    update_user,
    user_features,
)
from stream.state.codes import country_code, feature_code, str_hash
from stream.state.config import DEFAULT_CONFIG
from stream.state.labels import engagement_score
from stream.state.sketches import DistinctCounter

DAY, HOUR, MIN = 86_400_000, 3_600_000, 60_000
CFG = DEFAULT_CONFIG


def _checkpoints(df: pd.DataFrame, n: int, seed: int) -> list[tuple[str, int]]:
    """(user, as_of) pairs: half exactly at an event, half at a random later moment."""
    rng = np.random.default_rng(seed)
    rows = df.sample(n, random_state=seed)
    out = []
    for uid, t in zip(rows["user_id"], rows["event_time"], strict=True):
        out.append((uid, int(t) + (int(rng.integers(0, 3 * DAY)) if rng.random() < 0.5 else 0)))
    return out


def _state_at(events: list[dict], uid: str, as_of: int):
    st = new_user_state()
    for e in events:
        if e["user_id"] == uid and e["event_time"] <= as_of:
            update_user(st, e)
    return st


def _window_count(t: pd.Series, as_of: int, width: int, k: int) -> int:
    return int(((t <= as_of) & (t // width > as_of // width - k)).sum())


def _oracle(u: pd.DataFrame, as_of: int) -> dict[str, float]:
    """Independent computation of the user features from the user's events at or before as_of."""
    u = u[u["event_time"] <= as_of].sort_values(["event_time"], kind="stable")
    t = u["event_time"]
    exp: dict[str, float] = {}
    for typ in [
        "session_start",
        "page_view",
        "article_view",
        "article_impression",
        "article_click",
        "video_play",
        "newsletter_signup",
        "subscription",
        "ad_request",
        "ad_impression",
        "ad_click",
        "session_end",
    ]:
        tt = t[u["event_type"] == typ]
        exp[f"n_{typ}_1h"] = _window_count(tt, as_of, 5 * MIN, 12)
        exp[f"n_{typ}_24h"] = _window_count(tt, as_of, HOUR, 24)
        exp[f"n_{typ}_7d"] = _window_count(tt, as_of, DAY, 7)
        exp[f"n_{typ}_30d"] = _window_count(tt, as_of, DAY, 30)
    exp["total_events"] = len(u)
    exp["total_sessions"] = int((u["event_type"] == "session_start").sum())
    exp["tenure_days"] = (as_of - t.min()) / DAY
    exp["days_since_last_event"] = (as_of - t.max()) / DAY
    ss = t[u["event_type"] == "session_start"]
    exp["days_since_last_session"] = (as_of - ss.max()) / DAY if len(ss) else math.nan
    exp["recency_score"] = math.exp(-exp["days_since_last_event"] / CFG.recency_days)
    days = set((t // DAY).tolist())
    cur_day = as_of // DAY
    exp["active_days_7d"] = sum(d > cur_day - 7 for d in days)
    exp["active_days_30d"] = sum(d > cur_day - 30 for d in days)
    exp["activity_score"] = exp["active_days_30d"] / 30
    for w, mask in (("30d", (t // DAY) > cur_day - 30), ("lifetime", t >= 0)):
        clicks = ((u["event_type"] == "article_click") & mask).sum()
        imps = ((u["event_type"] == "article_impression") & mask).sum()
        exp[f"ctr_{w}"] = (clicks + CFG.ctr_prior * CFG.ctr_strength) / (imps + CFG.ctr_strength)
    consumed = u[u["event_type"].isin(["article_view", "article_click", "video_play"])]
    exp["distinct_brands"] = consumed["brand"].dropna().nunique()
    exp["distinct_categories"] = consumed["category"].dropna().nunique()
    bc = consumed["brand"].dropna().value_counts()
    exp["brand_loyalty"] = bc.iloc[0] / bc.sum() if len(bc) else math.nan
    # modes (ties never matter here: checked by value only when unique)
    for col, name, enc in (
        ("device_type", "device", None),
        ("country", "primary_country_code", country_code),
        ("city", "primary_city_code", lambda v: feature_code(str_hash(v))),
    ):
        vc = u[col].dropna().value_counts()
        if len(vc) and (len(vc) == 1 or vc.iloc[0] > vc.iloc[1]):
            if enc is None:
                for d in ("desktop", "mobile", "tablet"):
                    exp[f"device_{d}"] = float(vc.index[0] == d)
            else:
                exp[name] = enc(vc.index[0])
    exp["newsletter_flag"] = float((u["event_type"] == "newsletter_signup").any())
    exp["subscription_flag"] = float((u["event_type"] == "subscription").any())
    exp["revenue_total"] = float(u["revenue"].fillna(0).sum()) if "revenue" in u else 0.0
    # sessions: sequential in the synthetic data; closed = has session_end or a later session began
    g = u.groupby("session_id", sort=False)
    sess = pd.DataFrame({"start": g["event_time"].min(), "last": g["event_time"].max(), "n": g.size()})
    ends = u[u["event_type"] == "session_end"].set_index("session_id")["duration_ms"]
    sess["dur"] = [ends.get(s, np.nan) for s in sess.index]
    sess["dur"] = sess["dur"].fillna(sess["last"] - sess["start"])
    sess["eng"] = [
        engagement_score(u[u["session_id"] == s]["event_type"].value_counts().to_dict(), int(d))
        for s, d in zip(sess.index, sess["dur"], strict=True)
    ]
    sess = sess.sort_values("start")
    closed = sess[[(s in ends.index) or (i < len(sess) - 1) for i, s in enumerate(sess.index)]]
    exp["sessions_closed"] = len(closed)
    if len(closed):
        w = 2.0 ** (-(as_of - closed["start"].to_numpy()) / CFG.session_half_life_ms)
        exp["avg_session_minutes"] = float(np.average(closed["dur"] / MIN, weights=w))
        exp["avg_events_per_session"] = float(np.average(closed["n"], weights=w))
        exp["avg_session_engagement"] = float(np.average(closed["eng"], weights=w))
        exp["session_frequency"] = float(w.sum())
    last = sess.iloc[-1]
    is_open = last.name not in ends.index and as_of - last["last"] <= CFG.session_timeout_ms
    exp["session_open"] = float(is_open)
    exp["session_events"] = float(last["n"]) if is_open else 0.0
    exp["session_minutes"] = (last["last"] - last["start"]) / MIN if is_open else 0.0
    exp["session_engagement"] = float(last["eng"]) if is_open else 0.0
    return exp


def test_user_features_match_pandas_oracle(history: list[dict], history_df: pd.DataFrame) -> None:
    checked = 0
    for uid, as_of in _checkpoints(history_df, 25, seed=3):
        got = dict(zip(USER_FEATURES.names, user_features(_state_at(history, uid, as_of), as_of).tolist(), strict=True))
        exp = _oracle(history_df[history_df["user_id"] == uid], as_of)
        for name, v in exp.items():
            assert got[name] == pytest.approx(v, rel=1e-5, abs=1e-4, nan_ok=True), (uid, as_of, name)
            checked += 1
    assert checked > 25 * 70


def test_windows_are_bucket_aligned_not_sliding() -> None:
    """1 h = the current 5-minute bucket and the 11 before it: an event 61 min back may count."""
    base = 1_735_689_600_000  # a 5-minute boundary
    st = new_user_state()
    update_user(
        st, {"event_id": "a", "event_type": "page_view", "user_id": "u", "session_id": "s", "event_time": base + 1}
    )
    i = USER_FEATURES.index("n_page_view_1h")
    assert user_features(st, base + 59 * MIN)[i] == 1
    assert user_features(st, base + 60 * MIN - 1)[i] == 1
    assert user_features(st, base + 60 * MIN)[i] == 0


def _article_window(t: pd.Series, wm: int, width: int, k: int) -> int:
    """Events before ``wm`` in the bucket holding ``wm - 1`` and the ``k - 1`` before it."""
    return int(((t < wm) & (t // width > (wm - 1) // width - k)).sum())


def _last_bucket_end(last: int, wm: int) -> int:
    """End of the finest bucket (5 min within the hour, else hour, else day) holding ``last``."""
    for width, k in ((5 * MIN, 12), (HOUR, 24), (DAY, 7)):
        if last // width > (wm - 1) // width - k:
            return (last // width + 1) * width
    return ((wm - 1) // DAY - 6) * DAY


def test_article_features_match_oracle(history: list[dict], history_df: pd.DataFrame) -> None:
    """Features at ``as_of`` count the events before ``wm`` = as_of - 5 min floored to 5 min."""
    arts = history_df[history_df["event_type"].isin(["article_impression", "article_click", "article_view"])]
    top = arts["article_id"].value_counts().index[:3]
    rng = np.random.default_rng(5)
    for aid in top:
        a = arts[arts["article_id"] == aid]
        for as_of in rng.choice(a["event_time"].to_numpy(), 4):
            st = new_article_state()
            for e in history:  # also a day of events after as_of (a fast fold): they must not count
                if e.get("article_id") == aid and e["event_time"] <= as_of + DAY:
                    update_article(st, e)
            got = dict(zip(ARTICLE_FEATURES.names, article_features(st, int(as_of)).tolist(), strict=True))
            wm = (int(as_of) - 5 * MIN) // (5 * MIN) * (5 * MIN)
            x = a[a["event_time"] < wm]
            t = x["event_time"]
            p, s = CFG.article_ctr_prior, CFG.article_ctr_strength
            for w, width, k in (("1h", 5 * MIN, 12), ("24h", HOUR, 24), ("7d", DAY, 7)):
                imp = _article_window(t[x["event_type"] == "article_impression"], wm, width, k)
                clk = _article_window(t[x["event_type"] == "article_click"], wm, width, k)
                assert got[f"art_impressions_{w}"] == imp
                assert got[f"art_clicks_{w}"] == clk
                assert got[f"art_views_{w}"] == _article_window(t[x["event_type"] == "article_view"], wm, width, k)
                assert got[f"art_ctr_{w}"] == pytest.approx((clk + p * s) / (imp + s), rel=1e-6)
            assert got["art_impressions_total"] == (x["event_type"] == "article_impression").sum()
            if len(t):
                assert got["art_age_hours"] == pytest.approx((as_of - t.min()) / HOUR, rel=1e-6)
                assert got["art_hours_since_last"] == pytest.approx(
                    (as_of - _last_bucket_end(int(t.max()), wm)) / HOUR, abs=1e-4
                )
            else:
                assert math.isnan(got["art_age_hours"]) and math.isnan(got["art_hours_since_last"])


def test_distinct_counter_is_exact_then_close() -> None:
    rng = np.random.default_rng(11)
    for n in (5, 24, 25, 200, 5000):
        d = DistinctCounter()
        values = rng.choice(2**32 - 1, size=n, replace=False) + 1
        for v in np.concatenate([values, values[: n // 2]]):  # repeats do not count
            d.add(int(v), cap=24, p=6)
        if n <= 24:
            assert d.count() == n
        else:
            assert abs(d.count() - n) / n < 0.4, (n, d.count())  # 3 sigma of 1.04/sqrt(64)


def test_empty_user_has_nan_recency_and_zero_counts() -> None:
    v = dict(zip(USER_FEATURES.names, user_features(new_user_state(), 0).tolist(), strict=True))
    assert v["total_events"] == 0 and v["n_page_view_30d"] == 0 and v["recency_score"] == 0
    assert math.isnan(v["days_since_last_event"]) and math.isnan(v["avg_session_minutes"])

"""The user feature rows: ``user_row(state, as_of)`` and the feature lists built from it.

Read-only over a :class:`~stream.state.user.UserState`: the same rows in the worker and in
batch training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stream.state.codes import EVENT_TYPES, T_CLICK, T_IMPRESSION, T_SESSION_START, local_time
from stream.state.config import DAY_MS, DEFAULT_CONFIG, MINUTE_MS, StateConfig
from stream.state.featurelist import DEFINITION_VERSION, FeatureList
from stream.state.sketches import TopCounts
from stream.state.user import UserState, session_view

#: (name, resolution index, buckets): 1 h = 12 five-minute buckets, 24 h = 24 hourly, 7 d / 30 d daily.
WINDOWS: tuple[tuple[str, int, int], ...] = (("1h", 0, 12), ("24h", 1, 24), ("7d", 2, 7), ("30d", 2, 30))
_NAN = float("nan")
#: the windowed counts of one event type (1 h, 24 h, 7 d, 30 d): ``* len(EVENT_TYPES)`` is their row
_WINDOW_ROW = [0.0] * len(WINDOWS)


def _user_names() -> list[str]:
    names = [f"n_{typ}_{w}" for typ in EVENT_TYPES for w, _, _ in WINDOWS]
    names += [
        "total_events",
        "total_sessions",
        "tenure_days",
        "days_since_last_event",
        "days_since_last_session",
        "recency_score",
        "session_open",
        "session_events",
        "session_minutes",
        "session_engagement",
        "sessions_closed",
        "avg_session_minutes",
        "avg_events_per_session",
        "avg_session_engagement",
        "session_frequency",
        "engagement_per_minute",
        "active_days_7d",
        "active_days_30d",
        "activity_score",
        "ctr_30d",
        "ctr_lifetime",
        "distinct_brands",
        "distinct_categories",
        "brand_loyalty",
        "primary_brand_code",
        "primary_country_code",
        "primary_city_code",
        "primary_tz_code",
        "tz_offset_hours",
        "device_desktop",
        "device_mobile",
        "device_tablet",
        "device_types_seen",
        "primary_os_code",
        "primary_browser_code",
        "newsletter_flag",
        "subscription_flag",
        "days_since_newsletter",
        "days_since_subscription",
        "revenue_total",
    ]
    return names


USER_FEATURES = FeatureList.create(
    "user", _user_names(), definition_version=DEFINITION_VERSION, params=DEFAULT_CONFIG.fingerprint()
)
CHURN_FEATURES = FeatureList.create(
    "churn", USER_FEATURES.names, definition_version=DEFINITION_VERSION, params=DEFAULT_CONFIG.fingerprint()
)
CONVERSION_FEATURES = FeatureList.create(
    "conversion", USER_FEATURES.names, definition_version=DEFINITION_VERSION, params=DEFAULT_CONFIG.fingerprint()
)


def user_feature_list(config: StateConfig = DEFAULT_CONFIG) -> FeatureList:
    """The user feature list for a non-default config (its version differs when values would)."""
    if config.fingerprint() == DEFAULT_CONFIG.fingerprint():
        return USER_FEATURES
    return FeatureList.create(
        "user", USER_FEATURES.names, definition_version=DEFINITION_VERSION, params=config.fingerprint()
    )


def primary_tz(state: UserState) -> int:
    """Code of the user's most frequent time zone (0 if none seen)."""
    return _mode(state.p_tz)


def _mode(p: TopCounts) -> int:
    """``p.top()[0]``: the code of the user's most frequent value (0 if none)."""
    c = p.c
    if len(c) == 1:
        for code in c:
            return code
    return p.top()[0]


def user_row(state: UserState, as_of: int, config: StateConfig = DEFAULT_CONFIG) -> list[float]:
    """Feature values (python floats) in :data:`USER_FEATURES` order.

    ``as_of`` earlier than the latest applied event is raised to it: the state cannot un-see events.
    Missing values (e.g. recency of a user never seen) are NaN.

    The worker builds one per scored event: cached window sums (floats already) are read
    directly and interleaved by slice assignment, the session view is read as kept by
    :func:`~stream.state.user.apply_user`. tests/state/test_hot_path_reference.py holds these
    rows equal to a plain computation, bit for bit.
    """
    max_t = state.max_t
    a = as_of if as_of > max_t else max_t
    b5m, b1h, b1d = state.buckets
    w5m = b5m.win.get((a // b5m.width, 12))
    if w5m is None:
        w5m = b5m.window(a, 12)
    w1h = b1h.win.get((a // b1h.width, 24))
    if w1h is None:
        w1h = b1h.window(a, 24)
    day = a // b1d.width
    w7d = b1d.win.get((day, 7))
    w30 = b1d.win.get((day, 30))
    if w7d is None or w30 is None:
        w7d, w30 = b1d.windows(a, (7, 30))
    # per event type: its counts over 1 h, 24 h, 7 d, 30 d
    row = _WINDOW_ROW * len(w5m)
    row[0::4] = w5m
    row[1::4] = w1h
    row[2::4] = w7d
    row[3::4] = w30
    tot = state.tot
    if max_t >= 0:
        days_last = (a - max_t) / DAY_MS
        row += (
            float(sum(tot)),
            float(tot[T_SESSION_START]),
            (a - state.min_t) / DAY_MS,
            days_last,
            (a - state.last_ss) / DAY_MS if state.last_ss >= 0 else _NAN,
            math.exp(-days_last / config.recency_days),
        )
    else:
        row += (
            float(sum(tot)),
            float(tot[T_SESSION_START]),
            _NAN,
            _NAN,
            (a - state.last_ss) / DAY_MS if state.last_ss >= 0 else _NAN,
            0.0,
        )
    if not state.pending:
        sv = state.sess
    else:
        view = state.view
        sv = view[1] if view is not None and view[0] == config.session_half_life_ms else session_view(state, config)
    cur = sv.cur
    if cur is not None and a - cur.last <= config.session_timeout_ms:
        dur, eng = cur.stats()
        row += (1.0, float(cur.events), dur / MINUTE_MS, eng)
    else:
        row += (0.0, 0.0, 0.0, 0.0)
    if sv.n:
        dm = sv.dm
        m_min, m_ev, m_eng = dm.means
        row += (float(sv.n), m_min, m_ev, m_eng, dm.weight_at(a, config.session_half_life_ms), m_eng / max(m_min, 1.0))
    else:
        row += (0.0, _NAN, _NAN, _NAN, 0.0, _NAN)
    # active days: buckets among the last 7 and 30 (BucketCounts.active, one pass)
    lo30 = day - 30
    lo7 = day - 7
    d7 = d30 = 0
    for idx in b1d.c:
        if idx > lo30:
            d30 += 1
            if idx > lo7:
                d7 += 1
    prior, strength = config.ctr_prior, config.ctr_strength
    b_code, b_n, b_total = state.p_brand.top()
    tz = _mode(state.p_tz)
    p_device = state.p_device
    dev = _mode(p_device)
    nl_t, sub_t = state.nl_t, state.sub_t
    brands, cats = state.brands.s, state.cats.s
    row += (
        float(d7),
        float(d30),
        d30 / 30.0,
        (w30[T_CLICK] + prior * strength) / (w30[T_IMPRESSION] + strength),
        (tot[T_CLICK] + prior * strength) / (tot[T_IMPRESSION] + strength),
        float(len(brands)) if brands is not None else state.brands.count(),
        float(len(cats)) if cats is not None else state.cats.count(),
        b_n / b_total if b_total else _NAN,
        float(b_code & 0xFFFFFF),  # feature_code
        float(_mode(state.p_country)),
        float(_mode(state.p_city) & 0xFFFFFF),
        float(tz & 0xFFFFFF),
        local_time(a, tz)[2] if tz else _NAN,
        float(dev == 1),
        float(dev == 2),
        float(dev == 3),
        float(len(p_device.c) + (p_device.other > 0)),
        float(_mode(state.p_os)),
        float(_mode(state.p_browser)),
        float(nl_t >= 0),
        float(sub_t >= 0),
        (a - nl_t) / DAY_MS if nl_t >= 0 else _NAN,
        (a - sub_t) / DAY_MS if sub_t >= 0 else _NAN,
        state.cents / 100.0,
    )
    return row


def user_features(state: UserState, as_of: int, config: StateConfig = DEFAULT_CONFIG) -> np.ndarray:
    """The user vector (float32, :data:`USER_FEATURES` order) as of ``as_of`` (epoch ms)."""
    return np.asarray(user_row(state, as_of, config), dtype=np.float32)


def user_features_batch(
    states: Sequence[UserState], as_of: Sequence[int] | int, config: StateConfig = DEFAULT_CONFIG
) -> np.ndarray:
    """2-D float32 matrix, one row per state (one XGBoost ``inplace_predict`` per micro-batch)."""
    ts = [as_of] * len(states) if isinstance(as_of, int) else list(as_of)
    out = np.empty((len(states), len(USER_FEATURES)), dtype=np.float32)
    for i, (st, t) in enumerate(zip(states, ts, strict=True)):
        out[i] = user_row(st, t, config)
    return out

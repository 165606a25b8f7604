"""Model inputs assembled from states plus the event being scored.

* click: one row per ``article_impression``: user vector (state *before* the impression) +
  article vector (as of the impression) + position + context (device, local hour, weekday) +
  the user's click rate on the impression's brand and on its category (their affinity).
* engagement: one row per ``session_start``: user vector (before it) + session context.

Context local time uses the event's own time zone, else the user's most frequent one, else UTC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream.state.article import ARTICLE_FEATURES, ArticleState, article_row
from stream.state.codes import T_CLICK, T_IMPRESSION, Ev, encode_event, local_time
from stream.state.config import DEFAULT_CONFIG, StateConfig
from stream.state.featurelist import DEFINITION_VERSION, FeatureList
from stream.state.sketches import TopCounts
from stream.state.user import UserState
from stream.state.user_features import USER_FEATURES, primary_tz, user_row

_NAN = float("nan")
_CONTEXT = [
    "ctx_device_desktop",
    "ctx_device_mobile",
    "ctx_device_tablet",
    "ctx_os_code",
    "ctx_browser_code",
    "ctx_local_hour",
    "ctx_weekday",
]

#: features set by the clock of the event: a live window of a few hours holds one weekday and those
#: hours, whatever the data, so drift monitoring leaves them out (docs/monitoring.md)
CLOCK_FEATURES = frozenset({"ctx_local_hour", "ctx_weekday"})

#: the user's smoothed click rate on the brand and on the category of the impression being scored
_AFFINITY = ["user_brand_ctr", "user_category_ctr"]

CLICK_FEATURES = FeatureList.create(
    "click",
    [*USER_FEATURES.names, *ARTICLE_FEATURES.names, "position", *_CONTEXT, *_AFFINITY],
    definition_version=DEFINITION_VERSION,
    params=DEFAULT_CONFIG.fingerprint(),
)
ENGAGEMENT_FEATURES = FeatureList.create(
    "engagement",
    [*USER_FEATURES.names, *_CONTEXT],
    definition_version=DEFINITION_VERSION,
    params=DEFAULT_CONFIG.fingerprint(),
)


def _ev(event: Mapping[str, Any] | Ev) -> Ev:
    return event if isinstance(event, Ev) else encode_event(event)


def context_row(user: UserState, ev: Ev) -> list[float]:
    """Device one-hot, os/browser codes, local hour and weekday of the event being scored."""
    hour, weekday, _ = local_time(ev.t, ev.tz or primary_tz(user))
    d = ev.device
    return [float(d == 1), float(d == 2), float(d == 3), float(ev.os), float(ev.browser), float(hour), float(weekday)]


def _count(p: TopCounts, code: int, k: int) -> int | None:
    """How often ``code`` was counted in ``p`` (bottom-``k``), 0 if never, None if it cannot tell.

    A code below the largest tracked one, or any code while fewer than ``k`` are tracked, would be
    tracked had it been seen.

    >>> p = TopCounts().add(5, 2).add(9, 2).add(5, 2)
    >>> _count(p, 5, 2), _count(p, 7, 2), _count(p, 12, 2), _count(p, 12, 3)
    (2, 0, None, 0)
    """
    c = p.c
    n = c.get(code)
    if n is not None:
        return n
    return 0 if len(c) < k or code < max(c) else None


def _key_ctr(clicks: TopCounts, imps: TopCounts, code: int, base: float, strength: float, k: int) -> float:
    """(clicks + base·strength) / (impressions + strength) of one brand or category; NaN if unknown."""
    if not code:
        return _NAN
    n_imp = _count(imps, code, k)
    n_clk = _count(clicks, code, k)
    if n_imp is None or n_clk is None:
        return _NAN
    return (n_clk + base * strength) / (n_imp + strength)


def affinity_row(user: UserState, ev: Ev, config: StateConfig = DEFAULT_CONFIG) -> list[float]:
    """The user's click rate on the impression's brand and on its category, each shrunk towards the
    user's lifetime click rate (``ctr_lifetime``) with ``ctr_strength`` pseudo-impressions."""
    tot, strength, k = user.tot, config.ctr_strength, config.brand_k
    base = (tot[T_CLICK] + config.ctr_prior * strength) / (tot[T_IMPRESSION] + strength)
    return [
        _key_ctr(user.c_brand, user.i_brand, ev.brand, base, strength, k),
        _key_ctr(user.c_cat, user.i_cat, ev.category, base, strength, k),
    ]


def click_row(
    user: UserState, article: ArticleState, event: Mapping[str, Any] | Ev, config: StateConfig = DEFAULT_CONFIG
) -> list[float]:
    ev = _ev(event)
    row = user_row(user, ev.t, config)  # a new list: extended in place rather than copied
    row += article_row(article, ev.t, config)
    row.append(float(ev.pos) if ev.pos else _NAN)
    row += context_row(user, ev)
    row += affinity_row(user, ev, config)
    return row


def engagement_row(user: UserState, event: Mapping[str, Any] | Ev, config: StateConfig = DEFAULT_CONFIG) -> list[float]:
    ev = _ev(event)
    row = user_row(user, ev.t, config)
    row += context_row(user, ev)
    return row


def click_features(
    user: UserState, article: ArticleState, event: Mapping[str, Any] | Ev, config: StateConfig = DEFAULT_CONFIG
) -> np.ndarray:
    """One click-model row (float32, :data:`CLICK_FEATURES` order) for an article_impression.

    Call it *before* applying the impression to either state.
    """
    return np.asarray(click_row(user, article, event, config), dtype=np.float32)


def engagement_features(
    user: UserState, event: Mapping[str, Any] | Ev, config: StateConfig = DEFAULT_CONFIG
) -> np.ndarray:
    """One engagement-model row (float32, :data:`ENGAGEMENT_FEATURES` order) at a session_start.

    Call it *before* applying the session_start to the user state.
    """
    return np.asarray(engagement_row(user, event, config), dtype=np.float32)


def click_features_batch(
    users: Sequence[UserState],
    articles: Sequence[ArticleState],
    events: Sequence[Mapping[str, Any] | Ev],
    config: StateConfig = DEFAULT_CONFIG,
) -> np.ndarray:
    """2-D float32 matrix of click rows for a micro-batch."""
    out = np.empty((len(events), len(CLICK_FEATURES)), dtype=np.float32)
    for i, (u, a, e) in enumerate(zip(users, articles, events, strict=True)):
        out[i] = click_row(u, a, e, config)
    return out


def engagement_features_batch(
    users: Sequence[UserState], events: Sequence[Mapping[str, Any] | Ev], config: StateConfig = DEFAULT_CONFIG
) -> np.ndarray:
    """2-D float32 matrix of engagement rows for a micro-batch."""
    out = np.empty((len(events), len(ENGAGEMENT_FEATURES)), dtype=np.float32)
    for i, (u, e) in enumerate(zip(users, events, strict=True)):
        out[i] = engagement_row(u, e, config)
    return out

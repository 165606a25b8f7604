"""Model inputs assembled from states plus the event being scored.

* click: one row per ``article_impression``: user vector (state *before* the impression) +
  article vector (as of the impression) + position + context (device, local hour, weekday).
* engagement: one row per ``session_start``: user vector (before it) + session context.

Context local time uses the event's own time zone, else the user's most frequent one, else UTC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream.state.article import ARTICLE_FEATURES, ArticleState, article_row
from stream.state.codes import Ev, encode_event, local_time
from stream.state.config import DEFAULT_CONFIG, StateConfig
from stream.state.featurelist import DEFINITION_VERSION, FeatureList
from stream.state.user import UserState
from stream.state.user_features import USER_FEATURES, primary_tz, user_row

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

CLICK_FEATURES = FeatureList.create(
    "click",
    [*USER_FEATURES.names, *ARTICLE_FEATURES.names, "position", *_CONTEXT],
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


def click_row(
    user: UserState, article: ArticleState, event: Mapping[str, Any] | Ev, config: StateConfig = DEFAULT_CONFIG
) -> list[float]:
    ev = _ev(event)
    row = user_row(user, ev.t, config)  # a new list: extended in place rather than copied
    row += article_row(article, ev.t, config)
    row.append(float(ev.pos) if ev.pos else float("nan"))
    row += context_row(user, ev)
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

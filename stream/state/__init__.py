"""Rolling feature state: one definition run by the stream worker and by batch training.

``update_user(state, event)`` / ``user_features(state, as_of)`` are pure (no I/O); states
serialize to a few hundred bytes with ``to_bytes()`` for RocksDB. See ``docs/features.md``.

>>> st = new_user_state()
>>> ev = {"schema_version": 1, "event_id": "e1", "event_type": "session_start", "user_id": "u1",
...       "session_id": "s1", "event_time": 1_700_000_000_000, "device": {"type": "mobile"}}
>>> st = update_user(st, ev)
>>> UserState.from_bytes(st.to_bytes()) == st
True
>>> v = user_features(st, as_of=1_700_000_060_000)
>>> v.shape == (len(USER_FEATURES),), float(v[USER_FEATURES.index("device_mobile")])
(True, 1.0)
"""

from stream.state.article import (
    ARTICLE_FEATURES,
    ArticleState,
    article_features,
    article_features_batch,
    article_row,
    new_article_state,
    update_article,
)
from stream.state.article_fold import fold_article_events
from stream.state.codes import EVENT_TYPES, Ev, encode_event
from stream.state.config import DEFAULT_CONFIG, StateConfig
from stream.state.featurelist import FeatureList
from stream.state.features import (
    CLICK_FEATURES,
    ENGAGEMENT_FEATURES,
    click_features,
    click_features_batch,
    click_row,
    engagement_features,
    engagement_features_batch,
    engagement_row,
)
from stream.state.user import Outcome, UserState, apply_user, new_user_state, update_user
from stream.state.user_features import (
    CHURN_FEATURES,
    CONVERSION_FEATURES,
    USER_FEATURES,
    user_feature_list,
    user_features,
    user_features_batch,
    user_row,
)

__all__ = [
    "ARTICLE_FEATURES",
    "CHURN_FEATURES",
    "CLICK_FEATURES",
    "CONVERSION_FEATURES",
    "DEFAULT_CONFIG",
    "ENGAGEMENT_FEATURES",
    "EVENT_TYPES",
    "USER_FEATURES",
    "ArticleState",
    "Ev",
    "FeatureList",
    "Outcome",
    "StateConfig",
    "UserState",
    "apply_user",
    "article_features",
    "article_features_batch",
    "article_row",
    "click_features",
    "click_features_batch",
    "click_row",
    "encode_event",
    "engagement_features",
    "engagement_features_batch",
    "engagement_row",
    "fold_article_events",
    "new_article_state",
    "new_user_state",
    "update_article",
    "update_user",
    "user_feature_list",
    "user_features",
    "user_features_batch",
    "user_row",
]

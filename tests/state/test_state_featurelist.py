"""The feature-list contract: stable names and versions, refusal of other lists."""

from __future__ import annotations

import numpy as np
import pytest

from stream.errors import SchemaError
from stream.state import (
    ARTICLE_FEATURES,
    CHURN_FEATURES,
    CLICK_FEATURES,
    CONVERSION_FEATURES,
    ENGAGEMENT_FEATURES,
    USER_FEATURES,
    FeatureList,
    StateConfig,
    article_features_batch,
    click_features_batch,
    engagement_features_batch,
    new_article_state,
    new_user_state,
    user_feature_list,
    user_features_batch,
)
from stream.state.synthetic import generate_events


def test_lists_compose_and_are_float32() -> None:
    assert CLICK_FEATURES.names[: len(USER_FEATURES)] == USER_FEATURES.names
    assert (
        CLICK_FEATURES.names[len(USER_FEATURES) : len(USER_FEATURES) + len(ARTICLE_FEATURES)] == ARTICLE_FEATURES.names
    )
    assert ENGAGEMENT_FEATURES.names[: len(USER_FEATURES)] == USER_FEATURES.names
    assert CHURN_FEATURES.names == CONVERSION_FEATURES.names == USER_FEATURES.names
    assert set(USER_FEATURES.dtypes) == {"float32"}


def test_round_trip_and_refusal() -> None:
    for fl in (USER_FEATURES, CLICK_FEATURES, ENGAGEMENT_FEATURES, ARTICLE_FEATURES):
        assert FeatureList.from_json(fl.to_json()).matches(fl)
    assert not CLICK_FEATURES.matches(ENGAGEMENT_FEATURES)
    other = user_feature_list(StateConfig(session_half_life_ms=86_400_000))
    assert other.names == USER_FEATURES.names and not other.matches(USER_FEATURES)
    # lateness changes no feature value, so it does not change the version
    assert user_feature_list(StateConfig(lateness_ms=0)).matches(USER_FEATURES)
    tampered = USER_FEATURES.to_json().replace('"total_events"', '"total_eventz"')
    with pytest.raises(SchemaError, match="hashes to"):
        FeatureList.from_json(tampered)


def test_batched_builders_equal_single_rows() -> None:
    from stream.state import click_features, engagement_features, update_article, update_user, user_features

    evs = generate_events(n_users=5, days=3, seed=2)
    users = {e["user_id"]: new_user_state() for e in evs}
    arts = {e["article_id"]: new_article_state() for e in evs if "article_id" in e}
    for e in evs[:-50]:
        update_user(users[e["user_id"]], e)
        if "article_id" in e:
            update_article(arts[e["article_id"]], e)
    tail = [e for e in evs[-50:] if e["event_type"] == "article_impression"]
    u = [users[e["user_id"]] for e in tail]
    a = [arts[e["article_id"]] for e in tail]
    t = evs[-1]["event_time"]
    np.testing.assert_array_equal(user_features_batch(u, t), np.stack([user_features(s, t) for s in u]))
    np.testing.assert_array_equal(
        click_features_batch(u, a, tail),
        np.stack([click_features(x, y, e) for x, y, e in zip(u, a, tail, strict=True)]),
    )
    np.testing.assert_array_equal(
        engagement_features_batch(u, tail), np.stack([engagement_features(x, e) for x, e in zip(u, tail, strict=True)])
    )
    assert article_features_batch(a, t).shape == (len(a), len(ARTICLE_FEATURES))

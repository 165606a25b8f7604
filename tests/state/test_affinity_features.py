"""The click row's affinity features: the user's smoothed click rate on the impression's brand and category."""

from __future__ import annotations

import math

from stream.state import CLICK_FEATURES, new_article_state, new_user_state, update_user
from stream.state.codes import encode_event
from stream.state.config import StateConfig
from stream.state.features import affinity_row, click_features

T0 = 1_736_000_000_000


def _event(i: int, kind: str, brand: str | None, category: str | None, article: str = "a1") -> dict:
    e = {
        "event_id": f"e{i}",
        "event_type": kind,
        "user_id": "u1",
        "session_id": "s1",
        "event_time": T0 + 1_000 * i,
        "article_id": article,
        "schema_version": 1,
    }
    if brand:
        e["brand"] = brand
    if category:
        e["category"] = category
    return e


def _user(events: list[dict]):
    st = new_user_state()
    for e in events:
        update_user(st, e)
    return st


def test_click_rates_per_brand_and_category_shrink_to_the_users_own() -> None:
    # four impressions of brand "daily" (category "news"), one of them clicked; one impression of
    # "sport" ("news") not clicked
    events = [_event(i, "article_impression", "daily", "news") for i in range(4)]
    events += [_event(4, "article_click", "daily", "news"), _event(5, "article_impression", "sport", "news")]
    st = _user(events)
    # lifetime: 1 click in 5 impressions; base = (1 + 0.1·10) / (5 + 10) = 2/15
    base = 2 / 15
    daily = (1 + base * 10) / (4 + 10)
    sport = (0 + base * 10) / (1 + 10)
    news = (1 + base * 10) / (5 + 10)
    unseen = (0 + base * 10) / (0 + 10)
    got = affinity_row(st, encode_event(_event(9, "article_impression", "daily", "news")))
    assert got == [daily, news]
    assert affinity_row(st, encode_event(_event(9, "article_impression", "sport", "politics"))) == [sport, unseen]
    # no brand or category on the impression: unknown
    assert all(math.isnan(v) for v in affinity_row(st, encode_event(_event(9, "article_impression", None, None))))


def test_a_code_beyond_the_tracked_ones_is_unknown() -> None:
    # brand_k = 2: the two smallest codes are tracked exactly; a larger code seen later is not
    config = StateConfig(brand_k=2)
    brands = ["b1", "b2", "b3", "b4", "b5"]
    st = new_user_state()
    for i, b in enumerate(brands):
        update_user(st, _event(i, "article_impression", b, None), config)
    codes = sorted(encode_event(_event(0, "article_impression", b, None)).brand for b in brands)
    by_code = {encode_event(_event(0, "article_impression", b, None)).brand: b for b in brands}
    tracked, untracked = by_code[codes[0]], by_code[codes[-1]]
    ev = encode_event(_event(9, "article_impression", tracked, None))
    assert not math.isnan(affinity_row(st, ev, config)[0])
    ev = encode_event(_event(9, "article_impression", untracked, None))
    assert math.isnan(affinity_row(st, ev, config)[0])


def test_the_click_row_ends_with_them() -> None:
    events = [_event(0, "article_impression", "daily", "news"), _event(1, "article_click", "daily", "news")]
    st = _user(events)
    imp = _event(2, "article_impression", "daily", "news")
    row = click_features(st, new_article_state(), imp)
    assert list(CLICK_FEATURES.names[-2:]) == ["user_brand_ctr", "user_category_ctr"]
    base = (1 + 1) / (1 + 10)
    expected = (1 + base * 10) / (1 + 10)
    assert math.isclose(float(row[-2]), expected, rel_tol=1e-6) and math.isclose(float(row[-1]), expected, rel_tol=1e-6)

"""Article rows as of a watermark in event time: a function of the events, not of the fold's progress.

Expected values are counted here from the raw event times; the code under test only builds states.
"""

from __future__ import annotations

import math
import random

import pytest

from stream.state import ARTICLE_FEATURES, article_row, new_article_state, update_article
from stream.state.article import ArticleState, article_watermark

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_735_689_600_000  # 2025-01-01 00:00 UTC: a day, hour and 5-minute boundary
KINDS = ("article_impression", "article_click", "article_view")
IMP_1H = ARTICLE_FEATURES.index("art_impressions_1h")
IMP_24H = ARTICLE_FEATURES.index("art_impressions_24h")
IMP_TOTAL = ARTICLE_FEATURES.index("art_impressions_total")


def _ev(t: int, kind: str = "article_impression") -> dict[str, object]:
    return {"event_type": kind, "event_time": t, "article_id": "a"}


def _state(events: list[dict[str, object]]) -> ArticleState:
    st = new_article_state()
    for e in events:
        update_article(st, e)
    return st


def _same(a: list[float], b: list[float]) -> bool:
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def _history(seed: int, n: int = 600, span: int = 36 * HOUR) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [_ev(T0 + rng.randrange(span), rng.choice(KINDS)) for _ in range(n)]


def test_watermark_is_five_minutes_back_floored() -> None:
    assert article_watermark(T0 + 10 * MIN) == T0 + 5 * MIN
    assert article_watermark(T0 + 10 * MIN - 1) == T0  # 4:59.999 back floors to T0
    assert article_watermark(T0 + 5 * MIN) == T0


def test_events_at_or_after_the_watermark_do_not_count() -> None:
    t = T0 + 2 * HOUR + 7 * MIN  # watermark T0 + 2 h
    wm = article_watermark(t)
    before = [_ev(wm - 1), _ev(wm - 30 * MIN)]
    row = article_row(_state(before), t)
    assert row[IMP_1H] == 2 and row[IMP_TOTAL] == 2
    later = [_ev(wm), _ev(t - 1), _ev(t), _ev(t + HOUR), _ev(t + 20 * HOUR)]  # what a fast fold may hold
    assert _same(article_row(_state(before + later), t), row)


def test_windows_are_whole_buckets_before_the_watermark() -> None:
    wm = T0 + DAY  # on a day boundary: 1 h = the 12 buckets before, 24 h = the 24 hours before
    t = wm + 5 * MIN
    evs = [_ev(wm - HOUR), _ev(wm - HOUR - 1), _ev(wm - DAY), _ev(wm - DAY - 1)]
    row = article_row(_state(evs), t)
    assert row[IMP_1H] == 1  # [wm - 1 h, wm)
    assert row[IMP_24H] == 3  # [wm - 24 h, wm)
    assert row[IMP_TOTAL] == 4
    # off the hour: 24 h = this hour's 5-minute buckets so far + the 23 whole hours before
    wm2 = T0 + DAY + 20 * MIN
    evs2 = [_ev(T0 + DAY + 19 * MIN), _ev(T0 + HOUR), _ev(T0 + HOUR - 1)]
    assert article_row(_state(evs2), wm2 + 5 * MIN)[IMP_24H] == 2


def test_out_of_order_folds_and_interleaved_reads_give_the_same_rows() -> None:
    events = _history(seed=7)
    reads = sorted(T0 + random.Random(8).randrange(2 * DAY) for _ in range(40))
    expected = [article_row(_state(events), t) for t in reads]
    for seed in range(5):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        st = new_article_state()
        # reads interleaved with the fold (a cached read must not survive an earlier event)
        for i, e in enumerate(shuffled):
            update_article(st, e)
            if i % 50 == 0:
                article_row(st, reads[i % len(reads)])
        assert all(_same(article_row(st, t), exp) for t, exp in zip(reads, expected, strict=True))


def test_rows_equal_an_independent_count_for_every_read() -> None:
    events = _history(seed=3, n=300)
    times = [int(e["event_time"]) for e in events if e["event_type"] == "article_impression"]  # type: ignore[call-overload]
    st = _state(events)
    for t in sorted(T0 + random.Random(4).randrange(2 * DAY) for _ in range(60)):
        wm = (t - 5 * MIN) // (5 * MIN) * (5 * MIN)
        row = article_row(st, t)
        assert row[IMP_1H] == sum(wm - HOUR <= x < wm for x in times)
        assert row[IMP_TOTAL] == sum(x < wm for x in times)
        start24 = ((wm - 1) // HOUR - 23) * HOUR
        assert row[IMP_24H] == sum(start24 <= x < wm for x in times)


def test_a_reader_trailing_the_fold_by_a_day_is_still_exact() -> None:
    """Input partitions read at different speeds: the state may be far ahead of a click's time
    (exact while less than ARTICLE_RETENTION_MS - 1 h ahead)."""
    events = _history(seed=5, n=400, span=DAY)
    ahead = [*events, _ev(T0 + 40 * HOUR)]  # one partition 38 h ahead of the first read
    for t in (T0 + 2 * HOUR, T0 + 12 * HOUR, T0 + DAY):
        assert _same(article_row(_state(ahead), t), article_row(_state(events), t))


def test_empty_before_the_watermark_is_nan_age() -> None:
    row = article_row(_state([_ev(T0 + HOUR)]), T0 + HOUR + MIN)  # its only event is after the watermark
    assert row[IMP_TOTAL] == 0
    assert math.isnan(row[-1]) and math.isnan(row[-2])
    assert article_row(_state([_ev(T0)]), T0 + HOUR)[-2] == pytest.approx(1.0)

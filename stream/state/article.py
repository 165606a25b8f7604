"""Per-article popularity state: impressions, clicks and views in time buckets, first/last seen.

Only commutative updates (integer adds into absolute buckets, min/max), so the same events give
the same state in any order and no buffer is needed. Articles are updated from every user's
events: de-duplication happens upstream (the worker applies an event to the article only when
:func:`~stream.state.user.apply_user` reports it as applied; batch training reads de-duplicated
history).

Reads are *as of a watermark* in event time (:func:`article_watermark`): a click row at ``t``
counts only the article events before ``t - article_lag_ms`` floored to 5 minutes, never the
ones after it. Events the state holds beyond the watermark (a fast reader, a backlog, a later
partition) do not change the row: it is a function of the input, not of how far the article
state has got (docs/worker.md, "Staleness contract").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream.errors import SchemaError
from stream.state.codes import T_ARTICLE_VIEW, T_CLICK, T_IMPRESSION, TYPE_CODE, Ev
from stream.state.config import DAY_MS, DEFAULT_CONFIG, HOUR_MS, MINUTE_MS, StateConfig
from stream.state.featurelist import DEFINITION_VERSION, FeatureList
from stream.state.sketches import BucketCounts, Writer, decode

#: First byte of :meth:`ArticleState.to_bytes` (1 was the deflated format, never persisted).
_FORMAT = 2
#: Article kinds: 0 impression, 1 click, 2 view.
_KIND = {T_IMPRESSION: 0, T_CLICK: 1, T_ARTICLE_VIEW: 2}
ARTICLE_RESOLUTIONS: tuple[tuple[int, int], ...] = ((5 * MINUTE_MS, 12), (HOUR_MS, 24), (DAY_MS, 7))
ARTICLE_WINDOWS: tuple[tuple[str, int, int], ...] = (("1h", 0, 12), ("24h", 1, 24), ("7d", 2, 7))
_FINE = 5 * MINUTE_MS
#: Events this far behind an article's newest are no longer counted, and buckets are kept this long
#: (plus their window): as-of reads are exact while readers trail the article state by less.
ARTICLE_RETENTION_MS = 2 * DAY_MS
#: An input partition forwards an article event only if it is at most this far behind the
#: partition's newest event time, and so promises that every later one is at or after its newest
#: minus this (the per-partition watermark of docs/worker.md, "Staleness contract").
ARTICLE_LATENESS_MS = 2 * MINUTE_MS
_NAN = float("nan")


class ArticleState:
    """Popularity counters of one article."""

    __slots__ = ("asof", "buckets", "first_t", "late", "max_t", "tot")

    def __init__(self) -> None:
        self.max_t = -1
        self.first_t = -1
        self.late = 0
        self.tot = [0, 0, 0]
        self.buckets = [BucketCounts(width, n, 3) for width, n in ARTICLE_RESOLUTIONS]
        #: the last as-of read: (watermark, counts per window + totals, end of the last bucket seen)
        self.asof: tuple[int, tuple[list[int], ...], int] | None = None

    def to_bytes(self) -> bytes:
        w = Writer()
        max_t = self.max_t
        w.wide.append(max_t)
        if max_t >= 0:
            w.wide.append(self.first_t)
            w.counters += (self.late, *self.tot)
            for b in self.buckets:
                b.write(w, max_t)
        return w.finish(_FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes) -> ArticleState:
        """Inverse of :meth:`to_bytes`; raises SchemaError on another format or corrupt bytes."""
        g = decode(data, _FORMAT, "article")
        wide, small, bucket_counts = g.wide, g.small, g.bucket_counts
        st = cls()
        max_t = st.max_t = wide[0]
        if max_t >= 0:
            try:
                _, st.first_t = wide
                st.late, *st.tot = g.counters
                at_small = at_count = 0  # read positions in small and bucket_counts
                for b in st.buckets:
                    k = small[at_small]
                    end = at_count + 3 * k
                    b.load(max_t, small[at_small + 1 : at_small + 1 + k], bucket_counts[at_count:end])
                    at_small += 1 + k
                    at_count = end
            except (IndexError, ValueError) as exc:
                raise SchemaError(f"article state: inconsistent contents ({exc})") from None
            if at_small != len(small) or at_count != len(bucket_counts) or len(st.tot) != 3:
                raise SchemaError("article state has trailing data")
        elif len(wide) != 1 or small or g.counters or bucket_counts:
            raise SchemaError("article state has trailing data")
        if g.times or g.hashes or g.floats or g.raw:
            raise SchemaError("article state has trailing data")
        return st

    def copy(self) -> ArticleState:
        return ArticleState.from_bytes(self.to_bytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArticleState) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ArticleState(max_t={self.max_t}, impressions={self.tot[0]}, clicks={self.tot[1]})"


def new_article_state() -> ArticleState:
    return ArticleState()


def update_article(state: ArticleState, event: Mapping[str, Any] | Ev) -> ArticleState:
    """Count an article_impression / article_click / article_view (other types are ignored).

    Events more than :data:`ARTICLE_RETENTION_MS` behind the article's newest are counted as late
    only, whatever the state config: readers merge partitions that may be skewed.
    """
    if isinstance(event, Ev):
        t, typ = event.t, event.typ
    else:
        t, typ = int(event["event_time"]), TYPE_CODE[event["event_type"]]
    kind = _KIND.get(typ)
    if kind is None:
        return state
    max_t = state.max_t
    lateness = ARTICLE_RETENTION_MS
    if max_t >= 0 and t < max_t - lateness:
        state.late += 1
        return state
    asof = state.asof
    if asof is not None and t < asof[0]:
        state.asof = None  # a read before the watermark passed this event (a late or skewed reader)
    state.tot[kind] += 1
    for b in state.buckets:
        b.add(t, kind)
    if state.first_t < 0 or t < state.first_t:
        state.first_t = t
    if t > max_t:
        state.max_t = t
        if max_t >= 0:
            wm, old = t - lateness, max_t - lateness
            for b in state.buckets:
                if wm // b.width != old // b.width:
                    b.evict(wm)
    return state


def _article_names() -> list[str]:
    names = []
    for w, _, _ in ARTICLE_WINDOWS:
        names += [f"art_impressions_{w}", f"art_clicks_{w}", f"art_views_{w}", f"art_ctr_{w}"]
    names += [
        "art_impressions_total",
        "art_clicks_total",
        "art_views_total",
        "art_ctr_total",
        "art_age_hours",
        "art_hours_since_last",
    ]
    return names


ARTICLE_FEATURES = FeatureList.create(
    "article", _article_names(), definition_version=DEFINITION_VERSION, params=DEFAULT_CONFIG.fingerprint()
)


def article_watermark(t: int, config: StateConfig = DEFAULT_CONFIG) -> int:
    """The as-of time of a click row at ``t``: ``t - article_lag_ms`` floored to 5 minutes.

    A read counts the article events strictly before it. Flooring puts it on a bucket boundary,
    so every window is made of whole buckets (no event is split by time within a bucket).

    >>> article_watermark(1_000_000_000_000)  # 5 min back, floored to a 5-minute boundary
    999999600000
    """
    w = t - config.article_lag_ms
    return w - w % _FINE


def _add(acc: list[int], row: list[int]) -> None:
    acc[0] += row[0]
    acc[1] += row[1]
    acc[2] += row[2]


def _as_of(state: ArticleState, wm: int) -> tuple[tuple[list[int], ...], int]:
    """Counts of the events before ``wm`` (a 5-minute boundary): 1 h, 24 h, 7 d windows and totals.

    A window of ``k`` buckets is the bucket holding ``wm - 1`` and the ``k - 1`` before it, cut at
    ``wm``: the cut bucket is made of finer ones (hours of the current day, 5-minute buckets of
    the current hour). So "1h" is exactly the hour before ``wm``, "24h" the hours since the
    start of the 23rd whole hour before it. Also returns the end of the newest non-empty bucket in the
    7 d window (-1: none). One pass over the buckets; the result is cached per watermark.
    """
    asof = state.asof
    if asof is not None and asof[0] == wm:
        return asof[1], asof[2]
    fine, hour, day = state.buckets
    cf, ch, cd = wm // _FINE, wm // HOUR_MS, wm // DAY_MS
    h_lo, d_lo = (wm - 1) // HOUR_MS - 23, (wm - 1) // DAY_MS - 6
    f12, f_hour, after = [0, 0, 0], [0, 0, 0], [0, 0, 0]
    last = -1
    for idx, row in fine.c.items():
        if idx >= cf:
            _add(after, row)
        elif idx >= cf - 12:
            _add(f12, row)
            if idx >= ch * 12:
                _add(f_hour, row)
            last = max(last, (idx + 1) * _FINE)
    h23, h_day = [0, 0, 0], [0, 0, 0]
    last_h = -1
    for idx, row in hour.c.items():
        if h_lo <= idx < ch:
            _add(h23, row)
            if idx >= cd * 24:
                _add(h_day, row)
            last_h = max(last_h, (idx + 1) * HOUR_MS)
    d6 = [0, 0, 0]
    last_d = -1
    for idx, row in day.c.items():
        if d_lo <= idx < cd:
            _add(d6, row)
            last_d = max(last_d, (idx + 1) * DAY_MS)
    w24 = [a + b for a, b in zip(h23, f_hour, strict=True)]
    w7 = [a + b + c for a, b, c in zip(d6, h_day, f_hour, strict=True)]
    tot = [a - b for a, b in zip(state.tot, after, strict=True)]
    counts = (f12, w24, w7, tot)
    last = last if last >= 0 else last_h if last_h >= 0 else last_d
    state.asof = (wm, counts, last)
    return counts, last


def article_row(state: ArticleState, t: int, config: StateConfig = DEFAULT_CONFIG) -> list[float]:
    """Feature values in :data:`ARTICLE_FEATURES` order for a click row at ``t`` (CTR smoothed
    towards a Beta prior), from the events before :func:`article_watermark` ``(t)`` only.

    ``art_age_hours``: hours from the article's first event to ``t`` (NaN: none before the
    watermark). ``art_hours_since_last``: hours from the end of the newest non-empty bucket in the
    7 d window to ``t``; with none, a lower bound (from the window's start).
    """
    wm = article_watermark(t, config)
    counts, last = _as_of(state, wm)
    prior, strength = config.article_ctr_prior, config.article_ctr_strength
    row: list[float] = []
    for imp, clk, views in counts:
        row += [float(imp), float(clk), float(views), (clk + prior * strength) / (imp + strength)]
    first = state.first_t
    if 0 <= first < wm:
        if last < 0:
            last = ((wm - 1) // DAY_MS - 6) * DAY_MS
        row += [(t - first) / HOUR_MS, (t - last) / HOUR_MS]
    else:
        row += [_NAN, _NAN]
    return row


def article_features(state: ArticleState, as_of: int, config: StateConfig = DEFAULT_CONFIG) -> np.ndarray:
    """The article vector (float32, :data:`ARTICLE_FEATURES` order) of a click row at ``as_of``."""
    return np.asarray(article_row(state, as_of, config), dtype=np.float32)


def article_features_batch(
    states: Sequence[ArticleState], as_of: Sequence[int] | int, config: StateConfig = DEFAULT_CONFIG
) -> np.ndarray:
    ts = [as_of] * len(states) if isinstance(as_of, int) else list(as_of)
    out = np.empty((len(states), len(ARTICLE_FEATURES)), dtype=np.float32)
    for i, (st, t) in enumerate(zip(states, ts, strict=True)):
        out[i] = article_row(st, t, config)
    return out

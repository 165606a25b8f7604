"""Per-article popularity state: impressions, clicks and views in time buckets, first/last seen.

Only commutative updates (integer adds into absolute buckets, min/max), so events within the
lateness bound give the same state in any order and no buffer is needed. Articles are updated
from every user's events: de-duplication happens upstream (the worker applies an event to the
article only when :func:`~stream.state.user.apply_user` reports it as applied; batch training
reads de-duplicated history).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from stream.errors import SchemaError
from stream.state.codes import T_ARTICLE_VIEW, T_CLICK, T_IMPRESSION, TYPE_CODE, Ev
from stream.state.config import DAY_MS, DEFAULT_CONFIG, HOUR_MS, MINUTE_MS, StateConfig
from stream.state.featurelist import FeatureList
from stream.state.sketches import BucketCounts, Writer, decode
from stream.state.user import DEFINITION_VERSION

#: First byte of :meth:`ArticleState.to_bytes` (1 was the deflated format, never persisted).
_FORMAT = 2
#: Article kinds: 0 impression, 1 click, 2 view.
_KIND = {T_IMPRESSION: 0, T_CLICK: 1, T_ARTICLE_VIEW: 2}
ARTICLE_RESOLUTIONS: tuple[tuple[int, int], ...] = ((5 * MINUTE_MS, 12), (HOUR_MS, 24), (DAY_MS, 7))
ARTICLE_WINDOWS: tuple[tuple[str, int, int], ...] = (("1h", 0, 12), ("24h", 1, 24), ("7d", 2, 7))
_NAN = float("nan")


class ArticleState:
    """Popularity counters of one article."""

    __slots__ = ("buckets", "first_t", "late", "max_t", "tot")

    def __init__(self) -> None:
        self.max_t = -1
        self.first_t = -1
        self.late = 0
        self.tot = [0, 0, 0]
        self.buckets = [BucketCounts(width, n, 3) for width, n in ARTICLE_RESOLUTIONS]

    def to_bytes(self) -> bytes:
        w = Writer()
        max_t = self.max_t
        w.w.append(max_t)
        if max_t >= 0:
            w.w.append(self.first_t)
            w.n += (self.late, *self.tot)
            for b in self.buckets:
                b.write(w, max_t)
        return w.finish(_FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes) -> ArticleState:
        """Inverse of :meth:`to_bytes`; raises SchemaError on another format or corrupt bytes."""
        (gw, gt, gs, gn, gx, gc), floats, raw = decode(data, _FORMAT, "article")
        st = cls()
        max_t = st.max_t = gw[0]
        if max_t >= 0:
            try:
                _, st.first_t = gw
                st.late, *st.tot = gn
                si = ci = 0
                for b in st.buckets:
                    k = gs[si]
                    ce = ci + 3 * k
                    b.load(max_t, gs[si + 1:si + 1 + k], gc[ci:ce])
                    si += 1 + k
                    ci = ce
            except (IndexError, ValueError) as exc:
                raise SchemaError(f"article state: inconsistent contents ({exc})") from None
            if si != len(gs) or ci != len(gc) or len(st.tot) != 3:
                raise SchemaError("article state has trailing data")
        elif len(gw) != 1 or gs or gn or gc:
            raise SchemaError("article state has trailing data")
        if gt or gx or floats or raw:
            raise SchemaError("article state has trailing data")
        return st

    def copy(self) -> ArticleState:
        return ArticleState.from_bytes(self.to_bytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArticleState) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ArticleState(max_t={self.max_t}, impressions={self.tot[0]}, clicks={self.tot[1]})"


#: For consumers that merge article events from many input partitions (the worker's article
#: agent): events arrive out of event-time order by as much as partitions are skewed, so accept
#: events up to 24 h behind the article's newest. Only retention differs; feature values do not
#: depend on lateness.
ARTICLE_MERGE_CONFIG = replace(DEFAULT_CONFIG, lateness_ms=DAY_MS)


def new_article_state() -> ArticleState:
    return ArticleState()


def update_article(state: ArticleState, event: Mapping[str, Any] | Ev,
                   config: StateConfig = DEFAULT_CONFIG) -> ArticleState:
    """Count an article_impression / article_click / article_view (other types are ignored)."""
    if isinstance(event, Ev):
        t, typ = event.t, event.typ
    else:
        t, typ = int(event["event_time"]), TYPE_CODE[event["event_type"]]
    kind = _KIND.get(typ)
    if kind is None:
        return state
    max_t = state.max_t
    lateness = config.lateness_ms
    if max_t >= 0 and t < max_t - lateness:
        state.late += 1
        return state
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
    names += ["art_impressions_total", "art_clicks_total", "art_views_total", "art_ctr_total",
              "art_age_hours", "art_hours_since_last"]
    return names


ARTICLE_FEATURES = FeatureList.create("article", _article_names(), definition_version=DEFINITION_VERSION,
                                      params=DEFAULT_CONFIG.fingerprint())


def article_row(state: ArticleState, as_of: int, config: StateConfig = DEFAULT_CONFIG) -> list[float]:
    """Feature values in :data:`ARTICLE_FEATURES` order (CTR smoothed towards a Beta prior)."""
    a = max(as_of, state.max_t)
    prior, strength = config.article_ctr_prior, config.article_ctr_strength
    row: list[float] = []
    for _, res, k in ARTICLE_WINDOWS:
        imp, clk, views = state.buckets[res].window(a, k)
        row += [float(imp), float(clk), float(views), (clk + prior * strength) / (imp + strength)]
    imp, clk, views = state.tot
    row += [float(imp), float(clk), float(views), (clk + prior * strength) / (imp + strength)]
    if state.max_t >= 0:
        row += [(a - state.first_t) / HOUR_MS, (a - state.max_t) / HOUR_MS]
    else:
        row += [_NAN, _NAN]
    return row


def article_features(state: ArticleState, as_of: int, config: StateConfig = DEFAULT_CONFIG) -> np.ndarray:
    """The article vector (float32, :data:`ARTICLE_FEATURES` order) as of ``as_of``."""
    return np.asarray(article_row(state, as_of, config), dtype=np.float32)


def article_features_batch(states: Sequence[ArticleState], as_of: Sequence[int] | int,
                           config: StateConfig = DEFAULT_CONFIG) -> np.ndarray:
    ts = [as_of] * len(states) if isinstance(as_of, int) else list(as_of)
    out = np.empty((len(states), len(ARTICLE_FEATURES)), dtype=np.float32)
    for i, (st, t) in enumerate(zip(states, ts, strict=True)):
        out[i] = article_row(st, t, config)
    return out

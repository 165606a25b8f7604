"""Per-user rolling state: ``update_user(state, event)`` and ``user_features(state, as_of)``.

The same functions run in the faust worker (one event at a time, state kept as bytes in RocksDB)
and in batch training (over history), so training and serving features cannot drift apart.

How out-of-order events give the same state as in-order ones
------------------------------------------------------------
* Everything that commutes is applied at once: counts keyed by *absolute* time bucket, lifetime
  counts, min/max times, flags, exact-then-HyperLogLog distinct sets, bottom-k preference counts.
* What depends on order (sessions and the decayed per-session averages) is fed from a small
  buffer sorted by (event time, type rank, id hash). An event leaves the buffer once it is more than
  ``lateness_ms`` behind the user's latest event; no later event can precede it, because such an
  event would be late. Features apply the buffer to a throw-away copy of the session part.
* An event more than ``lateness_ms`` behind the latest one is ignored and counted in ``late``.
* A duplicate ``event_id`` (same id as a buffered event or one of the last ``dedup_ring`` applied
  ones) is ignored and not counted, so that a duplicate leaves the state byte-identical.

``update_user`` mutates and returns its argument (river style); ``state.copy()`` first if the
old state is still needed.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Mapping, Sequence
from enum import IntEnum
from itertools import chain
from typing import Any

import numpy as np

from stream.errors import SchemaError
from stream.state.codes import (
    CONSUMPTION_TYPES,
    EVENT_TYPES,
    T_CLICK,
    T_IMPRESSION,
    T_NEWSLETTER,
    T_SESSION_END,
    T_SESSION_START,
    T_SUBSCRIPTION,
    TYPE_CODE,
    TYPE_RANK,
    Ev,
    encode_event,
    feature_code,
    local_time,
)
from stream.state.config import DAY_MS, DEFAULT_CONFIG, HOUR_MS, MINUTE_MS, StateConfig
from stream.state.featurelist import FeatureList
from stream.state.labels import engagement_score
from stream.state.sketches import BucketCounts, DecayedMeans, DistinctCounter, TopCounts, Writer, decode

#: Bumped whenever a feature's meaning changes; part of every feature list's version.
DEFINITION_VERSION = 1
#: First byte of :meth:`UserState.to_bytes` (1 was the deflated format, never persisted).
_FORMAT = 2

#: (bucket width, buckets kept) per resolution.
RESOLUTIONS: tuple[tuple[int, int], ...] = ((5 * MINUTE_MS, 12), (HOUR_MS, 24), (DAY_MS, 30))
#: (name, resolution index, buckets): 1 h = 12 five-minute buckets, 24 h = 24 hourly, 7 d / 30 d daily.
WINDOWS: tuple[tuple[str, int, int], ...] = (("1h", 0, 12), ("24h", 1, 24), ("7d", 2, 7), ("30d", 2, 30))
#: Event types whose per-session counts enter the engagement score (labels.ENGAGEMENT_WEIGHTS).
_ENG_TYPES = ("article_view", "article_click", "video_play", "newsletter_signup", "subscription")
_ENG_SLOT = {TYPE_CODE[name]: 4 + i for i, name in enumerate(_ENG_TYPES)}
_CLOSED_RING = 4
_NAN = float("nan")


class Outcome(IntEnum):
    """What :func:`apply_user` did with an event (the worker turns these into metrics)."""

    APPLIED = 0
    DUPLICATE = 1
    LATE = 2


# --- the order-dependent part ------------------------------------------------------------------


class Sessions:
    """The open session and the decayed averages over closed ones, fed in event-time order.

    ``cur`` = [session hash, start, last, events, views, clicks, videos, signups, subscriptions,
    session_end duration or -1]. A session closes at its ``session_end`` or when an event of another
    session arrives; events of one of the last few closed sessions (stragglers) are then ignored here.
    """

    __slots__ = ("closed", "cur", "dm", "n")

    def __init__(self) -> None:
        self.cur: list[int] | None = None
        self.closed: list[int] = []
        self.n = 0
        #: decayed means of (minutes, events, engagement) per closed session
        self.dm = DecayedMeans(3)

    def apply(self, p: tuple[int, int, int, int, int, int], half_life: int) -> None:
        t, _, _, typ, sidh, dur = p
        cur = self.cur
        if cur is None or cur[0] != sidh:
            if sidh in self.closed:
                return
            if cur is not None:
                self._close(half_life)
            cur = self.cur = [sidh, t, t, 0, 0, 0, 0, 0, 0, -1]
        if t > cur[2]:
            cur[2] = t
        cur[3] += 1
        slot = _ENG_SLOT.get(typ)
        if slot is not None:
            cur[slot] += 1
        if typ == T_SESSION_END:
            cur[9] = dur
            self._close(half_life)

    @staticmethod
    def stats(cur: list[int]) -> tuple[int, float]:
        """(duration ms, engagement score) of a session record, as labels.session_engagement has it."""
        dur = cur[9] if cur[9] >= 0 else cur[2] - cur[1]
        return dur, engagement_score(dict(zip(_ENG_TYPES, cur[4:9], strict=True)), dur)

    def _close(self, half_life: int) -> None:
        cur = self.cur
        assert cur is not None
        dur, eng = self.stats(cur)
        self.dm.add(cur[1], [dur / MINUTE_MS, float(cur[3]), eng], half_life)
        self.n += 1
        self.closed.append(cur[0])
        if len(self.closed) > _CLOSED_RING:
            del self.closed[0]
        self.cur = None

    def copy(self) -> Sessions:
        s = Sessions()
        s.cur = None if self.cur is None else list(self.cur)
        s.closed = list(self.closed)
        s.n = self.n
        s.dm = self.dm.copy()
        return s


# --- the state -------------------------------------------------------------------------------------


class UserState:
    """Everything the user features need, a few hundred bytes serialized (see :meth:`to_bytes`)."""

    __slots__ = ("brands", "buckets", "cats", "cents", "last_ss", "late", "max_t", "min_t", "nl_t",
                 "p_brand", "p_browser", "p_city", "p_country", "p_device", "p_os", "p_tz", "pending",
                 "ring", "sess", "sub_t", "tot", "view")

    def __init__(self) -> None:
        self.max_t = -1
        self.min_t = -1
        self.late = 0
        self.tot = [0] * len(EVENT_TYPES)
        self.buckets = [BucketCounts(width, n, len(EVENT_TYPES)) for width, n in RESOLUTIONS]
        self.last_ss = -1
        self.nl_t = -1
        self.sub_t = -1
        self.cents = 0
        self.brands = DistinctCounter()
        self.cats = DistinctCounter()
        self.p_brand = TopCounts()
        self.p_device = TopCounts()
        self.p_os = TopCounts()
        self.p_browser = TopCounts()
        self.p_country = TopCounts()
        self.p_city = TopCounts()
        self.p_tz = TopCounts()
        #: sorted (t, type rank, id hash, type, session hash, duration) not yet fed to ``sess``
        self.pending: list[tuple[int, int, int, int, int, int]] = []
        self.ring: list[int] = []
        self.sess = Sessions()
        #: derived, not serialized: (half-life, ``sess`` with ``pending`` applied), kept up to date
        #: by in-order events (see :func:`session_view`); None until a feature row asks for it
        self.view: tuple[int, Sessions] | None = None

    # -- serialization --

    def to_bytes(self) -> bytes:
        """Compact canonical bytes: narrow typed arrays (see :class:`~stream.state.sketches.Writer`).

        Sets and dicts are written sorted, so equal states give equal bytes whatever the order
        their events came in.
        """
        w = Writer()
        ref = self.max_t
        if ref < 0:
            w.w.append(ref)
            return w.finish(_FORMAT)
        s = self.sess
        cur = s.cur
        pending = self.pending
        ring = self.ring
        closed = s.closed
        dm = s.dm
        w.w += (ref, self.min_t, self.last_ss, self.nl_t, self.sub_t, self.cents, dm.t)
        ws, wn, wt, wx = w.s, w.n, w.t, w.x
        ws += (len(pending), len(ring), len(closed), cur is not None)
        wn += (self.late, s.n)
        wn += self.tot
        for bc in self.buckets:
            bc.write(w, ref)
        self.brands.write(w)
        self.cats.write(w)
        for p in (self.p_brand, self.p_device, self.p_os, self.p_browser, self.p_country, self.p_city,
                  self.p_tz):
            p.write(w)
        if pending:
            ts, _, idhs, typs, sidhs, durs = zip(*pending, strict=True)
            ws += typs
            wt += [ref - t for t in ts]
            wt += durs
            wx += idhs
            wx += sidhs
        wx += ring
        wx += closed
        if cur is not None:
            wx.append(cur[0])
            wt += (ref - cur[1], ref - cur[2], cur[9])
            wn += cur[3:9]
        f = w.f
        f.append(dm.w)
        f += dm.means
        return w.finish(_FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes) -> UserState:
        """Inverse of :meth:`to_bytes`; raises SchemaError on another format or corrupt bytes."""
        (gw, gt, gs, gn, gx, gc), floats, raw = decode(data, _FORMAT, "user")
        try:
            st = _blank_user()
            ref = st.max_t = gw[0]
            if ref < 0:
                if len(gw) != 1 or gt or gs or gn or gx or gc or floats or raw:
                    raise SchemaError("user state: an empty state has trailing data")
                return st
            s = st.sess
            _, st.min_t, st.last_ss, st.nl_t, st.sub_t, st.cents, s.dm.t = gw
            n_pend, n_ring, n_closed, has_cur = gs[:4]
            st.late, s.n = gn[:2]
            nt = len(EVENT_TYPES)
            st.tot = gn[2:2 + nt]
            si, ni, xi, ci, ri = 4, 2 + nt, 0, 0, 0
            for bc in st.buckets:
                k = gs[si]
                ages = gs[si + 1:si + 1 + k]
                si += 1 + k
                ce = ci + k * bc.ntypes
                bc.load(ref, ages, gc[ci:ce])
                ci = ce
            for d in (st.brands, st.cats):
                tag = gs[si]
                si += 1
                k = tag >> 1
                if tag & 1:
                    d.s, d.regs = None, bytearray(raw[ri:ri + k])
                    ri += k
                else:
                    d.s, d.regs = set(gx[xi:xi + k]), None
                    xi += k
            for p in (st.p_brand, st.p_device, st.p_os, st.p_browser, st.p_country, st.p_city, st.p_tz):
                k = gs[si]
                si += 1
                p.other = gn[ni]
                p.c = dict(zip(gx[xi:xi + k], gn[ni + 1:ni + 1 + k], strict=True))
                xi += k
                ni += 1 + k
            if n_pend:
                typs = gs[si:si + n_pend]
                si += n_pend
                st.pending = list(zip([ref - d for d in gt[:n_pend]], [TYPE_RANK[c] for c in typs],
                                      gx[xi:xi + n_pend], typs, gx[xi + n_pend:xi + 2 * n_pend],
                                      gt[n_pend:2 * n_pend], strict=True))
                xi += 2 * n_pend
            ti = 2 * n_pend
            st.ring = gx[xi:xi + n_ring]
            xi += n_ring
            s.closed = gx[xi:xi + n_closed]
            xi += n_closed
            if has_cur:
                s.cur = [gx[xi], ref - gt[ti], ref - gt[ti + 1], *gn[ni:ni + 6], gt[ti + 2]]
                xi += 1
                ti += 3
                ni += 6
            s.dm.w, *s.dm.means = floats
            consumed = (si, ni, xi, ci, ri, ti, len(s.dm.means))
        except (IndexError, ValueError, TypeError) as exc:
            raise SchemaError(f"user state: inconsistent contents ({exc})") from None
        if consumed != (len(gs), len(gn), len(gx), len(gc), len(raw), len(gt), 3) or len(gw) != 7:
            raise SchemaError("user state: contents do not match their counts (trailing data)")
        return st

    def copy(self) -> UserState:
        return UserState.from_bytes(self.to_bytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserState) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"UserState(max_t={self.max_t}, events={sum(self.tot)}, pending={len(self.pending)}, "
                f"late={self.late})")


_N_TYPES = len(EVENT_TYPES)
_new = object.__new__


def _blank_user() -> UserState:
    """An empty state built without running every ``__init__`` (what :meth:`UserState.from_bytes` fills)."""
    st: UserState = _new(UserState)
    st.max_t = st.min_t = st.last_ss = st.nl_t = st.sub_t = -1
    st.late = st.cents = 0
    st.tot = [0] * _N_TYPES
    buckets = []
    for width, n in RESOLUTIONS:
        b: BucketCounts = _new(BucketCounts)
        b.width, b.n, b.ntypes, b.c, b.win = width, n, _N_TYPES, {}, {}
        buckets.append(b)
    st.buckets = buckets
    for name in ("brands", "cats"):
        d: DistinctCounter = _new(DistinctCounter)
        d.s, d.regs = set(), None
        setattr(st, name, d)
    for name in ("p_brand", "p_device", "p_os", "p_browser", "p_country", "p_city", "p_tz"):
        p: TopCounts = _new(TopCounts)
        p.c, p.other = {}, 0
        setattr(st, name, p)
    st.pending = []
    st.ring = []
    st.sess = Sessions()
    st.view = None
    return st


def new_user_state() -> UserState:
    """An empty user state (a user never seen)."""
    return UserState()


def _as_ev(event: Mapping[str, Any] | Ev) -> Ev:
    return event if isinstance(event, Ev) else encode_event(event)


def apply_user(state: UserState, event: Mapping[str, Any] | Ev,
               config: StateConfig = DEFAULT_CONFIG) -> Outcome:
    """Apply one event in place; returns whether it was applied, a duplicate, or too late."""
    ev = _as_ev(event)
    idh = ev.idh
    pending = state.pending
    for p in pending:
        if p[2] == idh:
            return Outcome.DUPLICATE
    if idh in state.ring:
        return Outcome.DUPLICATE
    t = ev.t
    max_t = state.max_t
    lateness = config.lateness_ms
    if max_t >= 0 and t < max_t - lateness:
        state.late += 1
        return Outcome.LATE
    typ = ev.typ
    # Step 1: everything that commutes.
    state.tot[typ] += 1
    for b in state.buckets:
        b.add(t, typ)
    if state.min_t < 0 or t < state.min_t:
        state.min_t = t
    if typ == T_SESSION_START:
        if t > state.last_ss:
            state.last_ss = t
    elif typ == T_NEWSLETTER:
        if state.nl_t < 0 or t < state.nl_t:
            state.nl_t = t
    elif typ == T_SUBSCRIPTION and (state.sub_t < 0 or t < state.sub_t):
        state.sub_t = t
    state.cents += ev.cents
    if typ in CONSUMPTION_TYPES:
        if ev.brand:
            state.brands.add(ev.brand, config.distinct_cap, config.hll_p)
            state.p_brand.add(ev.brand, config.brand_k)
        if ev.category:
            state.cats.add(ev.category, config.distinct_cap, config.hll_p)
    k = config.pref_k
    if ev.device:
        state.p_device.add(ev.device, k)
    if ev.os:
        state.p_os.add(ev.os, k)
    if ev.browser:
        state.p_browser.add(ev.browser, k)
    if ev.country:
        state.p_country.add(ev.country, k)
    if ev.city:
        state.p_city.add(ev.city, k)
    if ev.tz:
        state.p_tz.add(ev.tz, k)
    # Step 2: the order-dependent part goes through the sorted buffer.
    rec = (t, TYPE_RANK[typ], idh, typ, ev.sidh, ev.dur)
    if pending and rec < pending[-1]:
        insort(pending, rec)
        state.view = None  # an event inside the buffer: the view is rebuilt when next needed
    else:
        pending.append(rec)
        view = state.view
        if view is not None:
            view[1].apply(rec, view[0])
    if t > max_t:
        state.max_t = t
        wm = t - lateness
        if max_t >= 0:
            old = max_t - lateness
            for b in state.buckets:
                if wm // b.width != old // b.width:
                    b.evict(wm)
        _flush(state, wm, config)
    if len(pending) > config.max_pending:
        _flush(state, pending[len(pending) - config.max_pending][0], config)
    return Outcome.APPLIED


def update_user(state: UserState, event: Mapping[str, Any] | Ev,
                config: StateConfig = DEFAULT_CONFIG) -> UserState:
    """Apply one event (dict following session_event v1, or an encoded :class:`Ev`); returns ``state``."""
    apply_user(state, event, config)
    return state


def _flush(state: UserState, watermark: int, config: StateConfig) -> None:
    pending = state.pending
    n = 0
    while n < len(pending) and pending[n][0] < watermark:
        n += 1
    if not n:
        return
    sess, ring, hl = state.sess, state.ring, config.session_half_life_ms
    for p in pending[:n]:
        sess.apply(p, hl)
        ring.append(p[2])
    del pending[:n]
    if len(ring) > config.dedup_ring:
        del ring[: len(ring) - config.dedup_ring]


# --- features ----------------------------------------------------------------------------------------


def _user_names() -> list[str]:
    names = [f"n_{typ}_{w}" for typ in EVENT_TYPES for w, _, _ in WINDOWS]
    names += [
        "total_events", "total_sessions", "tenure_days",
        "days_since_last_event", "days_since_last_session", "recency_score",
        "session_open", "session_events", "session_minutes", "session_engagement",
        "sessions_closed", "avg_session_minutes", "avg_events_per_session", "avg_session_engagement",
        "session_frequency", "engagement_per_minute",
        "active_days_7d", "active_days_30d", "activity_score",
        "ctr_30d", "ctr_lifetime",
        "distinct_brands", "distinct_categories", "brand_loyalty", "primary_brand_code",
        "primary_country_code", "primary_city_code", "primary_tz_code", "tz_offset_hours",
        "device_desktop", "device_mobile", "device_tablet", "device_types_seen",
        "primary_os_code", "primary_browser_code",
        "newsletter_flag", "subscription_flag", "days_since_newsletter", "days_since_subscription",
        "revenue_total",
    ]
    return names


USER_FEATURES = FeatureList.create("user", _user_names(), definition_version=DEFINITION_VERSION,
                                   params=DEFAULT_CONFIG.fingerprint())
CHURN_FEATURES = FeatureList.create("churn", USER_FEATURES.names, definition_version=DEFINITION_VERSION,
                                    params=DEFAULT_CONFIG.fingerprint())
CONVERSION_FEATURES = FeatureList.create("conversion", USER_FEATURES.names,
                                         definition_version=DEFINITION_VERSION,
                                         params=DEFAULT_CONFIG.fingerprint())


def user_feature_list(config: StateConfig = DEFAULT_CONFIG) -> FeatureList:
    """The user feature list for a non-default config (its version differs when values would)."""
    if config.fingerprint() == DEFAULT_CONFIG.fingerprint():
        return USER_FEATURES
    return FeatureList.create("user", USER_FEATURES.names, definition_version=DEFINITION_VERSION,
                              params=config.fingerprint())


def session_view(state: UserState, config: StateConfig = DEFAULT_CONFIG) -> Sessions:
    """The session part with the buffered events applied (read-only).

    Built once per user and then advanced by :func:`apply_user` as in-order events arrive:
    flushing buffered events into ``sess`` leaves it unchanged, since ``sess`` then holds what
    the view had applied first. Rebuilding it for every feature row cost about a third of
    :func:`user_row`.
    """
    if not state.pending:
        return state.sess
    hl = config.session_half_life_ms
    view = state.view
    if view is None or view[0] != hl:
        s = state.sess.copy()
        for p in state.pending:
            s.apply(p, hl)
        view = state.view = (hl, s)
    return view[1]


def primary_tz(state: UserState) -> int:
    """Code of the user's most frequent time zone (0 if none seen)."""
    return state.p_tz.top()[0]


def user_row(state: UserState, as_of: int, config: StateConfig = DEFAULT_CONFIG) -> list[float]:
    """Feature values (python floats) in :data:`USER_FEATURES` order.

    ``as_of`` earlier than the latest applied event is raised to it: the state cannot un-see events.
    Missing values (e.g. recency of a user never seen) are NaN.
    """
    max_t = state.max_t
    a = as_of if as_of > max_t else max_t
    b5m, b1h, b1d = state.buckets
    w7d, w30 = b1d.windows(a, (7, 30))
    row: list[float] = list(map(float, chain.from_iterable(zip(b5m.window(a, 12), b1h.window(a, 24), w7d, w30,
                                                                strict=True))))
    tot = state.tot
    if max_t >= 0:
        days_last = (a - max_t) / DAY_MS
        row += (float(sum(tot)), float(tot[T_SESSION_START]), (a - state.min_t) / DAY_MS, days_last,
                (a - state.last_ss) / DAY_MS if state.last_ss >= 0 else _NAN,
                math.exp(-days_last / config.recency_days))
    else:
        row += (float(sum(tot)), float(tot[T_SESSION_START]), _NAN, _NAN,
                (a - state.last_ss) / DAY_MS if state.last_ss >= 0 else _NAN, 0.0)
    sv = session_view(state, config)
    cur = sv.cur
    if cur is not None and a - cur[2] <= config.session_timeout_ms:
        dur, eng = Sessions.stats(cur)
        row += (1.0, float(cur[3]), dur / MINUTE_MS, eng)
    else:
        row += (0.0, 0.0, 0.0, 0.0)
    if sv.n:
        dm = sv.dm
        m_min, m_ev, m_eng = dm.means
        row += (float(sv.n), m_min, m_ev, m_eng, dm.weight_at(a, config.session_half_life_ms),
                m_eng / max(m_min, 1.0))
    else:
        row += (0.0, _NAN, _NAN, _NAN, 0.0, _NAN)
    d30 = b1d.active(a, 30)
    prior, strength = config.ctr_prior, config.ctr_strength
    b_code, b_n, b_total = state.p_brand.top()
    tz = state.p_tz.top()[0]
    p_device = state.p_device
    dev = p_device.top()[0]
    nl_t, sub_t = state.nl_t, state.sub_t
    row += (float(b1d.active(a, 7)), float(d30), d30 / 30.0,
            (w30[T_CLICK] + prior * strength) / (w30[T_IMPRESSION] + strength),
            (tot[T_CLICK] + prior * strength) / (tot[T_IMPRESSION] + strength),
            state.brands.count(), state.cats.count(), b_n / b_total if b_total else _NAN, feature_code(b_code),
            float(state.p_country.top()[0]), feature_code(state.p_city.top()[0]), feature_code(tz),
            local_time(a, tz)[2] if tz else _NAN,
            float(dev == 1), float(dev == 2), float(dev == 3), float(len(p_device.c) + (p_device.other > 0)),
            float(state.p_os.top()[0]), float(state.p_browser.top()[0]),
            float(nl_t >= 0), float(sub_t >= 0),
            (a - nl_t) / DAY_MS if nl_t >= 0 else _NAN,
            (a - sub_t) / DAY_MS if sub_t >= 0 else _NAN,
            state.cents / 100.0)
    return row


def user_features(state: UserState, as_of: int, config: StateConfig = DEFAULT_CONFIG) -> np.ndarray:
    """The user vector (float32, :data:`USER_FEATURES` order) as of ``as_of`` (epoch ms)."""
    return np.asarray(user_row(state, as_of, config), dtype=np.float32)


def user_features_batch(states: Sequence[UserState], as_of: Sequence[int] | int,
                        config: StateConfig = DEFAULT_CONFIG) -> np.ndarray:
    """2-D float32 matrix, one row per state (one XGBoost ``inplace_predict`` per micro-batch)."""
    ts = [as_of] * len(states) if isinstance(as_of, int) else list(as_of)
    out = np.empty((len(states), len(USER_FEATURES)), dtype=np.float32)
    for i, (st, t) in enumerate(zip(states, ts, strict=True)):
        out[i] = user_row(st, t, config)
    return out

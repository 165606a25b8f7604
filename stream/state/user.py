"""Per-user rolling state: :class:`UserState`, ``update_user(state, event)``.

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

The state's fields are in :mod:`stream.state.user_state`, its bytes in :mod:`stream.state.user_codec`,
its feature rows in :mod:`stream.state.user_features`.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping
from enum import IntEnum
from operator import itemgetter
from typing import Any

from stream.state.codes import (
    CONSUMPTION_TYPES,
    T_CLICK,
    T_IMPRESSION,
    T_NEWSLETTER,
    T_SESSION_START,
    T_SUBSCRIPTION,
    TYPE_RANK,
    Ev,
    encode_event,
)
from stream.state.config import DEFAULT_CONFIG, StateConfig
from stream.state.user_codec import decode_user, encode_user
from stream.state.user_state import PENDING_ID_HASH, Sessions, UserFields

_ID_HASH = itemgetter(PENDING_ID_HASH)


class Outcome(IntEnum):
    """What :func:`apply_user` did with an event (the worker turns these into metrics)."""

    APPLIED = 0
    DUPLICATE = 1
    LATE = 2


class UserState(UserFields):
    """Everything the user features need, a few hundred bytes serialized (see :meth:`to_bytes`)."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        """Compact canonical bytes (:mod:`stream.state.user_codec`): equal states give equal bytes."""
        return encode_user(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> UserState:
        """Inverse of :meth:`to_bytes`; raises SchemaError on another format or corrupt bytes."""
        return decode_user(data, cls)

    def copy(self) -> UserState:
        return UserState.from_bytes(self.to_bytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserState) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"UserState(max_t={self.max_t}, events={sum(self.tot)}, pending={len(self.pending)}, late={self.late})"


def new_user_state() -> UserState:
    """An empty user state (a user never seen)."""
    return UserState()


def _as_ev(event: Mapping[str, Any] | Ev) -> Ev:
    return event if isinstance(event, Ev) else encode_event(event)


def apply_user(state: UserState, event: Mapping[str, Any] | Ev, config: StateConfig = DEFAULT_CONFIG) -> Outcome:
    """Apply one event in place; returns whether it was applied, a duplicate, or too late.

    The hot path of the worker: the sketches' ``add`` methods are inlined for their common case
    (a known value, a window sum to advance), which does exactly what the methods do.
    """
    ev = event if event.__class__ is Ev else _as_ev(event)
    t, typ, idh, sidh, brand, category, device, os, browser, country, city, tz, dur, cents, _ = ev
    pending = state.pending
    if idh in map(_ID_HASH, pending) or idh in state.ring:
        return Outcome.DUPLICATE
    max_t = state.max_t
    lateness = config.lateness_ms
    if max_t >= 0 and t < max_t - lateness:
        state.late += 1
        return Outcome.LATE
    # Step 1: everything that commutes.
    state.tot[typ] += 1
    for b in state.buckets:  # BucketCounts.add
        idx = t // b.width
        row = b.c.get(idx)
        if row is None:
            row = b.c[idx] = [0] * b.ntypes
        if row[typ] < 0xFFFF:
            row[typ] += 1
            for (cur, k), sums in b.win.items():
                if cur - idx < k:
                    sums[typ] += 1
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
    if cents:
        state.cents += cents
    if typ in CONSUMPTION_TYPES:
        if brand:
            d = state.brands
            if d.s is None or brand not in d.s:
                d.add(brand, config.distinct_cap, config.hll_p)
            c = state.p_brand.c
            if brand in c:
                c[brand] += 1
            else:
                state.p_brand.add(brand, config.brand_k)
        if category:
            d = state.cats
            if d.s is None or category not in d.s:
                d.add(category, config.distinct_cap, config.hll_p)
    if typ in (T_IMPRESSION, T_CLICK):  # per-brand and per-category click rates
        kb = config.brand_k
        pb, pc = (state.i_brand, state.i_cat) if typ == T_IMPRESSION else (state.c_brand, state.c_cat)
        if brand:
            c = pb.c
            if brand in c:
                c[brand] += 1
            else:
                pb.add(brand, kb)
        if category:
            c = pc.c
            if category in c:
                c[category] += 1
            else:
                pc.add(category, kb)
    # TopCounts.add, inlined for a value already counted (almost every event: a user's device
    # and place rarely change)
    k = config.pref_k
    if device:
        c = state.p_device.c
        if device in c:
            c[device] += 1
        else:
            state.p_device.add(device, k)
    if os:
        c = state.p_os.c
        if os in c:
            c[os] += 1
        else:
            state.p_os.add(os, k)
    if browser:
        c = state.p_browser.c
        if browser in c:
            c[browser] += 1
        else:
            state.p_browser.add(browser, k)
    if country:
        c = state.p_country.c
        if country in c:
            c[country] += 1
        else:
            state.p_country.add(country, k)
    if city:
        c = state.p_city.c
        if city in c:
            c[city] += 1
        else:
            state.p_city.add(city, k)
    if tz:
        c = state.p_tz.c
        if tz in c:
            c[tz] += 1
        else:
            state.p_tz.add(tz, k)
    # Step 2: the order-dependent part goes through the sorted buffer.
    rec = (t, TYPE_RANK[typ], idh, typ, sidh, dur)
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
        if pending[0][0] < wm:  # else nothing to flush
            _flush(state, wm, config)
    if len(pending) > config.max_pending:
        _flush(state, pending[len(pending) - config.max_pending][0], config)
    return Outcome.APPLIED


def update_user(state: UserState, event: Mapping[str, Any] | Ev, config: StateConfig = DEFAULT_CONFIG) -> UserState:
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
    sess, ring, hl, id_at = state.sess, state.ring, config.session_half_life_ms, PENDING_ID_HASH
    for p in pending[:n]:
        sess.apply(p, hl)
        ring.append(p[id_at])
    del pending[:n]
    if len(ring) > config.dedup_ring:
        del ring[: len(ring) - config.dedup_ring]


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

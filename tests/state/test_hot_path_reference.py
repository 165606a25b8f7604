"""The worker's per-event state code against a straightforward reference, bit for bit.

``encode_event``, ``apply_user`` and ``user_row`` are tuned for speed (inlined sketch updates,
cached window sums kept as floats, the session view advanced in place). The reference below is
the plain definition: every field computed from the state's counts on each call, with no cache,
and the state updated through the sketches' own methods. Seeded random histories (several users
interleaved, events shuffled within and beyond the lateness bound, duplicates, rows asked before
and after each event and at later moments) must give the same states (bytes) and the same rows
(every float identical, NaN where NaN).
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from bisect import insort
from typing import Any

import pytest

from stream.state import (
    USER_FEATURES,
    Outcome,
    UserState,
    apply_user,
    encode_event,
    new_article_state,
    new_user_state,
    user_row,
)
from stream.state.codes import (
    CONSUMPTION_TYPES,
    T_CLICK,
    T_IMPRESSION,
    T_NEWSLETTER,
    T_SESSION_START,
    T_SUBSCRIPTION,
    TYPE_CODE,
    TYPE_RANK,
    Ev,
    browser_code,
    country_code,
    device_code,
    local_time,
    os_code,
)
from stream.state.config import DAY_MS, DEFAULT_CONFIG, MINUTE_MS, StateConfig
from stream.state.features import click_row, engagement_row
from stream.state.labels import engagement_score
from stream.state.synthetic import generate_events
from stream.state.user_state import ENGAGEMENT_TYPES, Sessions

# --- the reference -------------------------------------------------------------------------------


def ref_hash(value: str | None) -> int:
    return (zlib.crc32(value.encode()) or 1) if value else 0


def ref_encode(event: dict[str, Any]) -> Ev:
    dev = event.get("device") or {}
    geo = event.get("geo") or {}
    dur = event.get("duration_ms")
    rev = event.get("revenue")
    return Ev(
        int(event["event_time"]),
        TYPE_CODE[event["event_type"]],
        ref_hash(event["event_id"]),
        ref_hash(event["session_id"]),
        ref_hash(event.get("brand")),
        ref_hash(event.get("category")),
        device_code(dev.get("type")),
        os_code(dev.get("os")),
        browser_code(dev.get("browser")),
        country_code(geo.get("country")),
        ref_hash(geo.get("city")),
        ref_hash(geo.get("timezone")),
        -1 if dur is None else int(dur),
        0 if rev is None else round(float(rev) * 100),
        int(event.get("position") or 0),
    )


def ref_apply(state: UserState, ev: Ev, config: StateConfig) -> Outcome:
    """apply_user as first written: every update through the sketches' methods."""
    if any(p[2] == ev.idh for p in state.pending) or ev.idh in state.ring:
        return Outcome.DUPLICATE
    t, typ, max_t, lateness = ev.t, ev.typ, state.max_t, config.lateness_ms
    if max_t >= 0 and t < max_t - lateness:
        state.late += 1
        return Outcome.LATE
    state.tot[typ] += 1
    for b in state.buckets:
        b.add(t, typ)
    if state.min_t < 0 or t < state.min_t:
        state.min_t = t
    if typ == T_SESSION_START:
        state.last_ss = max(state.last_ss, t)
    elif typ == T_NEWSLETTER:
        state.nl_t = t if state.nl_t < 0 else min(state.nl_t, t)
    elif typ == T_SUBSCRIPTION:
        state.sub_t = t if state.sub_t < 0 else min(state.sub_t, t)
    state.cents += ev.cents
    if typ in CONSUMPTION_TYPES:
        if ev.brand:
            state.brands.add(ev.brand, config.distinct_cap, config.hll_p)
            state.p_brand.add(ev.brand, config.brand_k)
        if ev.category:
            state.cats.add(ev.category, config.distinct_cap, config.hll_p)
    if typ == T_IMPRESSION:
        for p, code in ((state.i_brand, ev.brand), (state.i_cat, ev.category)):
            if code:
                p.add(code, config.brand_k)
    elif typ == T_CLICK:
        for p, code in ((state.c_brand, ev.brand), (state.c_cat, ev.category)):
            if code:
                p.add(code, config.brand_k)
    for p, code in (
        (state.p_device, ev.device),
        (state.p_os, ev.os),
        (state.p_browser, ev.browser),
        (state.p_country, ev.country),
        (state.p_city, ev.city),
        (state.p_tz, ev.tz),
    ):
        if code:
            p.add(code, config.pref_k)
    insort(state.pending, (t, TYPE_RANK[typ], ev.idh, typ, ev.sidh, ev.dur))
    state.view = None
    if t > max_t:
        state.max_t = t
        for b in state.buckets:
            b.evict(t - lateness)
        ref_flush(state, t - lateness, config)
    if len(state.pending) > config.max_pending:
        ref_flush(state, state.pending[len(state.pending) - config.max_pending][0], config)
    return Outcome.APPLIED


def ref_flush(state: UserState, watermark: int, config: StateConfig) -> None:
    while state.pending and state.pending[0][0] < watermark:
        p = state.pending.pop(0)
        state.sess.apply(p, config.session_half_life_ms)
        state.ring.append(p[2])
    del state.ring[: max(0, len(state.ring) - config.dedup_ring)]


def ref_window(b: Any, as_of: int, k: int) -> list[int]:
    cur = as_of // b.width
    out = [0] * b.ntypes
    for idx, row in b.c.items():
        if cur - idx < k:
            out = [x + y for x, y in zip(out, row, strict=True)]
    return out


def ref_mode(p: Any) -> tuple[int, int, int]:
    if not p.c:
        return 0, 0, p.other
    m = max(p.c.values())
    return min(c for c, n in p.c.items() if n == m), m, sum(p.c.values()) + p.other


def ref_sessions(state: UserState, config: StateConfig) -> Sessions:
    s = state.sess.copy()
    for p in state.pending:
        s.apply(p, config.session_half_life_ms)
    return s


def ref_row(state: UserState, as_of: int, config: StateConfig) -> list[float]:
    nan = math.nan
    a = max(as_of, state.max_t)
    b5m, b1h, b1d = state.buckets
    wins = [ref_window(b5m, a, 12), ref_window(b1h, a, 24), ref_window(b1d, a, 7), ref_window(b1d, a, 30)]
    row = [float(w[typ]) for typ in range(len(state.tot)) for w in wins]
    days_last = (a - state.max_t) / DAY_MS if state.max_t >= 0 else nan
    row += [
        float(sum(state.tot)),
        float(state.tot[T_SESSION_START]),
        (a - state.min_t) / DAY_MS if state.max_t >= 0 else nan,
        days_last,
        (a - state.last_ss) / DAY_MS if state.last_ss >= 0 else nan,
        math.exp(-days_last / config.recency_days) if state.max_t >= 0 else 0.0,
    ]
    sv = ref_sessions(state, config)
    cur = sv.cur
    if cur is not None and a - cur.last <= config.session_timeout_ms:
        dur = cur.end_duration if cur.end_duration >= 0 else cur.last - cur.start
        eng = engagement_score(dict(zip(ENGAGEMENT_TYPES, cur.engagement_counts, strict=True)), dur)
        row += [1.0, float(cur.events), dur / MINUTE_MS, eng]
    else:
        row += [0.0, 0.0, 0.0, 0.0]
    if sv.n:
        m_min, m_ev, m_eng = sv.dm.means
        w = sv.dm.weight_at(a, config.session_half_life_ms)
        row += [float(sv.n), m_min, m_ev, m_eng, w, m_eng / max(m_min, 1.0)]
    else:
        row += [0.0, nan, nan, nan, 0.0, nan]
    days = [idx for idx in b1d.c if idx > a // DAY_MS - 30]
    w30 = wins[3]
    prior, strength = config.ctr_prior, config.ctr_strength
    b_code, b_n, b_total = ref_mode(state.p_brand)
    tz = ref_mode(state.p_tz)[0]
    dev = ref_mode(state.p_device)[0]
    row += [
        float(sum(1 for idx in b1d.c if idx > a // DAY_MS - 7)),
        float(len(days)),
        len(days) / 30.0,
        (w30[T_CLICK] + prior * strength) / (w30[T_IMPRESSION] + strength),
        (state.tot[T_CLICK] + prior * strength) / (state.tot[T_IMPRESSION] + strength),
        state.brands.count(),
        state.cats.count(),
        b_n / b_total if b_total else nan,
        float(b_code & 0xFFFFFF),
        float(ref_mode(state.p_country)[0]),
        float(ref_mode(state.p_city)[0] & 0xFFFFFF),
        float(tz & 0xFFFFFF),
        local_time(a, tz)[2] if tz else nan,
        float(dev == 1),
        float(dev == 2),
        float(dev == 3),
        float(len(state.p_device.c) + (state.p_device.other > 0)),
        float(ref_mode(state.p_os)[0]),
        float(ref_mode(state.p_browser)[0]),
        float(state.nl_t >= 0),
        float(state.sub_t >= 0),
        (a - state.nl_t) / DAY_MS if state.nl_t >= 0 else nan,
        (a - state.sub_t) / DAY_MS if state.sub_t >= 0 else nan,
        state.cents / 100.0,
    ]
    return row


# --- the comparison ------------------------------------------------------------------------------


def _bits(row: list[float]) -> bytes:
    """The exact float64 bits of a row (NaN compares equal to NaN here, and only to NaN)."""
    return struct.pack(f"<{len(row)}d", *row)


def _history(seed: int) -> list[dict[str, Any]]:
    """Seeded events of several users, each user's shuffled (some beyond lateness) and with duplicates."""
    rng = random.Random(seed)
    events = generate_events(n_users=12, days=30, seed=seed)
    out = []
    for e in events:
        out.append(e)
        if rng.random() < 0.03:
            out.append(dict(e))  # a duplicate delivery
    # local shuffles: swap neighbours (mostly within the lateness bound, sometimes far beyond)
    for _ in range(len(out) // 4):
        i = rng.randrange(len(out) - 1)
        j = min(len(out) - 1, i + (1 if rng.random() < 0.8 else rng.randrange(2, 60)))
        out[i], out[j] = out[j], out[i]
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("config", [DEFAULT_CONFIG, StateConfig(lateness_ms=0, max_pending=4, distinct_cap=3)])
def test_states_and_rows_equal_the_reference(seed: int, config: StateConfig) -> None:
    rng = random.Random(seed)
    fast: dict[str, UserState] = {}
    ref: dict[str, UserState] = {}
    rows = 0
    for event in _history(seed):
        uid = event["user_id"]
        ev = encode_event(event)
        assert ev == ref_encode(event) and type(ev) is Ev
        st, rs = fast.setdefault(uid, new_user_state()), ref.setdefault(uid, new_user_state())
        if rng.random() < 0.3:  # a row before the event (click and engagement rows are built so)
            assert _bits(user_row(st, ev.t, config)) == _bits(ref_row(rs, ev.t, config))
            rows += 1
        assert apply_user(st, ev, config) == ref_apply(rs, ev, config)
        assert st.to_bytes() == rs.to_bytes()
        later = ev.t + rng.choice((0, 0, 1, 59_000, 301_000, 3_600_000, 2 * DAY_MS, 31 * DAY_MS))
        assert _bits(user_row(st, later, config)) == _bits(ref_row(rs, later, config))
        rows += 1
        if rng.random() < 0.05:  # a state reloaded from its bytes (a cache miss in the worker)
            fast[uid] = UserState.from_bytes(st.to_bytes())
    assert rows > 2000 and any(s.late for s in ref.values())


def test_click_and_engagement_rows_start_with_the_reference_user_row() -> None:
    st, article = new_user_state(), new_article_state()
    n = 0
    for event in generate_events(n_users=4, days=20, seed=4):
        ev = encode_event(event)
        expected = _bits(ref_row(st, ev.t, DEFAULT_CONFIG))
        if event["event_type"] == "session_start":
            assert _bits(engagement_row(st, ev)[: len(USER_FEATURES)]) == expected
            n += 1
        elif event["event_type"] == "article_impression":
            assert _bits(click_row(st, article, ev)[: len(USER_FEATURES)]) == expected
            n += 1
        apply_user(st, ev)
    assert n > 200

"""The bytes of a user state: a few hundred, canonical, in the integer groups of :class:`~stream.state.sketches.Writer`.

Sets and dicts are written sorted, so equal states give equal bytes whatever the order their
events came in. Group by group, in order (each component's ``write`` documents its part):

* ``wide``: latest and first event time, latest session_start, first newsletter and subscription
  times, revenue in cents, the time of the decayed session means (an empty state: only -1); then,
  once the worker assigned the user a segment, its id, model version and time (bytes written
  before segments existed lack them, and decode to a state without a segment);
* ``small``: the lengths of the pending buffer, the dedup ring and the closed-session ring, whether
  a session is open; then the buckets, the distinct counters, the preference counts (``_PREFS``:
  brand, device, os, browser, country, city, time zone, then article impressions and clicks per
  brand and per category), and the
  pending events' type codes;
* ``counters``: events ignored as late, sessions closed, lifetime events per type; the preference
  counts; the open session's events and engagement counts;
* ``times`` (relative to the latest event): the pending events' times and durations, the open
  session's start, last event and end duration;
* ``hashes``: the distinct sets, the preference codes, the pending events' id and session hashes,
  the dedup ring, the closed sessions, the open session;
* ``bucket_counts``: the time buckets' rows; ``floats``: the decayed means' weight and means;
  ``raw``: HyperLogLog registers.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TypeVar

from stream.errors import SchemaError
from stream.state.codes import EVENT_TYPES, TYPE_RANK
from stream.state.sketches import BucketCounts, DistinctCounter, TopCounts, Writer, decode
from stream.state.user_state import ENGAGEMENT_TYPES, RESOLUTIONS, OpenSession, Sessions, UserFields

#: First byte of a user state's bytes (1 was the deflated format, never persisted; 2 lacked the
#: per-brand and per-category impression and click counts, and still decodes, with them empty).
USER_FORMAT = 3
#: the preference counts (TopCounts) in the order they are written; format 2 had the first seven
_PREFS = (
    *("p_brand", "p_device", "p_os", "p_browser", "p_country", "p_city", "p_tz"),
    *("i_brand", "c_brand", "i_cat", "c_cat"),
)
_PREFS_BY_FORMAT = {2: _PREFS[:7], USER_FORMAT: _PREFS}
_GET_PREFS = {fmt: attrgetter(*names) for fmt, names in _PREFS_BY_FORMAT.items()}
#: wide values of a non-empty state (:func:`encode_user`), without and with a segment
_N_WIDE = 7
_N_WIDE_SEGMENT = _N_WIDE + 3
_N_TYPES = len(EVENT_TYPES)
_N_ENGAGEMENT = len(ENGAGEMENT_TYPES)
_new = object.__new__

U = TypeVar("U", bound=UserFields)


def encode_user(st: UserFields, fmt: int = USER_FORMAT) -> bytes:
    """The state's canonical bytes (see the module docstring for the layout).

    ``fmt`` 2 writes the previous format (without the per-brand and per-category counts): for tests
    of its decoding.
    """
    w = Writer()
    ref = st.max_t
    if ref < 0:
        w.wide.append(ref)
        return w.finish(fmt)
    s = st.sess
    cur = s.cur
    pending = st.pending
    ring = st.ring
    closed = s.closed
    w.wide += (ref, st.min_t, st.last_ss, st.nl_t, st.sub_t, st.cents)
    s.dm.write(w)  # the last wide value, and the floats
    if st.segment is not None:
        w.wide += st.segment
    small, counters, times, hashes = w.small, w.counters, w.times, w.hashes
    small += (len(pending), len(ring), len(closed), cur is not None)
    counters += (st.late, s.n)
    counters += st.tot
    for bc in st.buckets:
        bc.write(w, ref)
    st.brands.write(w)
    st.cats.write(w)
    for p in _GET_PREFS[fmt](st):
        p.write(w)
    if pending:
        ts, _, id_hashes, types, session_hashes, durations = zip(*pending, strict=True)
        small += types
        times += [ref - t for t in ts]
        times += durations
        hashes += id_hashes
        hashes += session_hashes
    hashes += ring
    hashes += closed
    if cur is not None:
        hashes.append(cur.session_hash)
        times += (ref - cur.start, ref - cur.last, cur.end_duration)
        counters.append(cur.events)
        counters += cur.engagement_counts
    return w.finish(fmt)


def _blank(cls: type[U]) -> U:
    """An empty state built without running every ``__init__`` (what :func:`decode_user` fills)."""
    st = _new(cls)
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
    for name in _PREFS:
        p: TopCounts = _new(TopCounts)
        p.c, p.other = {}, 0
        setattr(st, name, p)
    st.pending = []
    st.ring = []
    st.sess = Sessions()
    st.segment = None
    st.view = None
    return st


def decode_user(data: bytes, cls: type[U]) -> U:
    """Inverse of :func:`encode_user`, as a ``cls``; raises SchemaError on another format or corrupt bytes."""
    g = decode(data, 2 if data[:1] == b"\x02" else USER_FORMAT, "user")
    get_prefs = _GET_PREFS[data[0]]
    wide, times, small, counters, hashes, bucket_counts, floats, raw = g
    try:
        st = _blank(cls)
        ref = st.max_t = wide[0]
        if ref < 0:
            if len(wide) != 1 or times or small or counters or hashes or bucket_counts or floats or raw:
                raise SchemaError("user state: an empty state has trailing data")
            return st
        s = st.sess
        _, st.min_t, st.last_ss, st.nl_t, st.sub_t, st.cents, s.dm.t = wide[:_N_WIDE]
        if len(wide) == _N_WIDE_SEGMENT:
            st.segment = (wide[7], wide[8], wide[9])
        n_pending, n_ring, n_closed, has_cur = small[:4]
        st.late, s.n = counters[:2]
        st.tot = counters[2 : 2 + _N_TYPES]
        # read positions in each group
        at_small, at_counter, at_hash, at_bucket, at_raw = 4, 2 + _N_TYPES, 0, 0, 0
        for bc in st.buckets:
            k = small[at_small]
            ages = small[at_small + 1 : at_small + 1 + k]
            at_small += 1 + k
            end = at_bucket + k * bc.ntypes
            bc.load(ref, ages, bucket_counts[at_bucket:end])
            at_bucket = end
        for d in (st.brands, st.cats):
            tag = small[at_small]
            at_small += 1
            k = tag >> 1
            if tag & 1:
                d.s, d.regs = None, bytearray(raw[at_raw : at_raw + k])
                at_raw += k
            else:
                d.s, d.regs = set(hashes[at_hash : at_hash + k]), None
                at_hash += k
        for p in get_prefs(st):
            k = small[at_small]
            at_small += 1
            p.other = counters[at_counter]
            p.c = dict(zip(hashes[at_hash : at_hash + k], counters[at_counter + 1 : at_counter + 1 + k], strict=True))
            at_hash += k
            at_counter += 1 + k
        if n_pending:
            types = small[at_small : at_small + n_pending]
            at_small += n_pending
            st.pending = list(
                zip(
                    [ref - d for d in times[:n_pending]],
                    [TYPE_RANK[c] for c in types],
                    hashes[at_hash : at_hash + n_pending],
                    types,
                    hashes[at_hash + n_pending : at_hash + 2 * n_pending],
                    times[n_pending : 2 * n_pending],
                    strict=True,
                )
            )
            at_hash += 2 * n_pending
        at_time = 2 * n_pending
        st.ring = hashes[at_hash : at_hash + n_ring]
        at_hash += n_ring
        s.closed = hashes[at_hash : at_hash + n_closed]
        at_hash += n_closed
        if has_cur:
            s.cur = OpenSession(
                hashes[at_hash],
                ref - times[at_time],
                ref - times[at_time + 1],
                counters[at_counter],
                counters[at_counter + 1 : at_counter + 1 + _N_ENGAGEMENT],
                times[at_time + 2],
            )
            at_hash += 1
            at_time += 3
            at_counter += 1 + _N_ENGAGEMENT
        s.dm.w, *s.dm.means = floats
        consumed = (at_small, at_counter, at_hash, at_bucket, at_raw, at_time, len(s.dm.means))
    except (IndexError, ValueError, TypeError) as exc:
        raise SchemaError(f"user state: inconsistent contents ({exc})") from None
    counts = (len(small), len(counters), len(hashes), len(bucket_counts), len(raw), len(times), 3)
    if consumed != counts or len(wide) not in (_N_WIDE, _N_WIDE_SEGMENT):
        raise SchemaError("user state: contents do not match their counts (trailing data)")
    return st

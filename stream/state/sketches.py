"""Tiny rolling statistics (river style: ``add`` mutates and returns self, getters read).

Each one is order-independent where the state needs it to be (integer adds into absolute
buckets, max-registers, bottom-k by hash), and each writes itself into a compact binary
:class:`Writer`; the states' ``from_bytes`` read it back through :func:`decode`, so no pickle is involved.

Why not a library: river's ``stats.EWMean`` decays per update rather than per unit of event time
and ``utils.TimeRolling`` keeps every value of the window; no installed package has a HyperLogLog
whose state is a few dozen bytes without pickle. These objects are ~20 lines each and tested
against numpy/pandas oracles in ``tests/state``.

>>> d = DistinctCounter()
>>> for h in range(1, 6):
...     _ = d.add(h, cap=24, p=6)
>>> d.count()
5.0
>>> TopCounts().add(7, 4).add(7, 4).add(3, 4).top()
(7, 2, 3)
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from array import array
from itertools import chain
from typing import NamedTuple

from stream.errors import SchemaError

# --- binary codec -----------------------------------------------------------------------------
#
# A state is a few groups of integers, each stored as one typed array whose item width is the
# smallest that holds the group's values (so small counts take one byte and 32-bit hashes four),
# plus float64s and raw bytes. No compression: packing is a handful of C calls per state, and a
# CRC-32 over the whole record turns corrupt or foreign bytes into a clear SchemaError.
#
# Layout: format byte, then per int group (count uint32, typecode byte), float count, raw length,
# then the arrays in group order (little-endian), the floats, the raw bytes, and the CRC-32.

#: Integer groups a :class:`Writer` has, in their order in the record; components put values where
#: they keep the group narrow. ``wide``: epoch times, money; ``times``: times relative to the latest
#: event, and durations; ``small``: structural values (lengths, type codes, bucket ages);
#: ``counters``; ``hashes``: 32-bit hashes; ``bucket_counts`` (saturating at 65535).
GROUPS = ("wide", "times", "small", "counters", "hashes", "bucket_counts")
_NG = len(GROUPS)
_HEAD = struct.Struct("<B" + "IB" * _NG + "II")
_CRC = struct.Struct("<I")
_UNSIGNED = ((0x100, "B"), (0x10000, "H"), (0x100000000, "I"), (1 << 64, "Q"))
_SIGNED = ((0x80, "b"), (0x8000, "h"), (0x80000000, "i"), (1 << 63, "q"))
_ITEMSIZE = {code: array(code).itemsize for code in "BHIQbhiq"}
_CODES = {ord(code): code for code in _ITEMSIZE}
if _ITEMSIZE != {"B": 1, "H": 2, "I": 4, "Q": 8, "b": 1, "h": 2, "i": 4, "q": 8}:  # pragma: no cover
    raise ImportError("stream.state needs 1/2/4/8-byte array typecodes B/H/I/Q")
_BIG = sys.byteorder == "big"


def _typecode(values: list[int]) -> str:
    """Narrowest array typecode that holds every value (``B`` for an empty group)."""
    if not values:
        return "B"
    lo, hi = min(values), max(values)
    if lo >= 0:
        for limit, code in _UNSIGNED:
            if hi < limit:
                return code
    else:
        for limit, code in _SIGNED:
            if -limit <= lo and hi < limit:
                return code
    raise SchemaError(f"state value out of the 64-bit range ({lo}..{hi})")


def _packed(values: list[int], code: str) -> tuple[int, bytes]:
    """(typecode byte, little-endian bytes) of ``values`` as ``code``, or the narrowest code that fits."""
    try:
        a = array(code, values)
    except OverflowError:
        code = _typecode(values)
        a = array(code, values)
    if _BIG:  # pragma: no cover
        a.byteswap()
    return ord(code), a.tobytes()


def _unsigned_code(values: list[int]) -> str:
    """A guess for values that are normally non-negative (:func:`_packed` corrects a wrong one)."""
    if not values:
        return "B"
    hi = max(values)
    return "B" if hi < 0x100 else "H" if hi < 0x10000 else "I" if hi < 0x100000000 else "Q"


class Writer:
    """Collects a state as integer groups (plain lists, see :data:`GROUPS`), floats and raw bytes.

    Components ``extend`` whole lists at a time; :meth:`finish` converts each group once.
    """

    __slots__ = ("bucket_counts", "counters", "floats", "hashes", "raw", "small", "times", "wide")

    def __init__(self) -> None:
        self.wide: list[int] = []
        self.times: list[int] = []
        self.small: list[int] = []
        self.counters: list[int] = []
        self.hashes: list[int] = []
        self.bucket_counts: list[int] = []
        self.floats: list[float] = []
        self.raw = bytearray()

    def finish(self, fmt: int) -> bytes:
        w, t, s, n, x, c = self.wide, self.times, self.small, self.counters, self.hashes, self.bucket_counts
        f = self.floats
        cw, bw = _packed(w, "q")
        ct, bt = _packed(t, _typecode(t))
        cs, bs = _packed(s, _unsigned_code(s))
        cn, bn = _packed(n, _unsigned_code(n))
        cx, bx = _packed(x, "I")
        cc, bc = _packed(c, _unsigned_code(c))
        fa = array("d", f)
        if _BIG:  # pragma: no cover
            fa.byteswap()
        raw = self.raw
        body = b"".join(
            (
                _HEAD.pack(
                    fmt, len(w), cw, len(t), ct, len(s), cs, len(n), cn, len(x), cx, len(c), cc, len(f), len(raw)
                ),
                bw,
                bt,
                bs,
                bn,
                bx,
                bc,
                fa.tobytes(),
                raw,
            )
        )
        return body + _CRC.pack(zlib.crc32(body))


class Groups(NamedTuple):
    """What :func:`decode` read: the integer groups of :data:`GROUPS`, the floats and the raw bytes."""

    wide: list[int]
    times: list[int]
    small: list[int]
    counters: list[int]
    hashes: list[int]
    bucket_counts: list[int]
    floats: list[float]
    raw: bytes


def decode(data: bytes, fmt: int, what: str) -> Groups:
    """The integer groups, floats and raw bytes of a record (see :class:`Writer`).

    Raises SchemaError for another format byte, a bad checksum or inconsistent lengths.
    """
    if len(data) < _HEAD.size + _CRC.size or data[0] != fmt:
        raise SchemaError(f"{what} state: format byte {data[:1]!r} is not the supported format {fmt}")
    end = len(data) - _CRC.size
    if zlib.crc32(memoryview(data)[:end]) != _CRC.unpack_from(data, end)[0]:
        raise SchemaError(f"{what} state: checksum mismatch (corrupt or foreign bytes)")
    _, n0, c0, n1, c1, n2, c2, n3, c3, n4, c4, n5, c5, nf, nraw = _HEAD.unpack_from(data)
    try:
        codes = _CODES[c0], _CODES[c1], _CODES[c2], _CODES[c3], _CODES[c4], _CODES[c5]
    except KeyError as exc:
        raise SchemaError(f"{what} state: corrupt header (typecode {exc})") from None
    size = _ITEMSIZE
    p0 = _HEAD.size
    p1 = p0 + n0 * size[codes[0]]
    p2 = p1 + n1 * size[codes[1]]
    p3 = p2 + n2 * size[codes[2]]
    p4 = p3 + n3 * size[codes[3]]
    p5 = p4 + n4 * size[codes[4]]
    p6 = p5 + n5 * size[codes[5]]
    p7 = p6 + 8 * nf
    if p7 + nraw != end:
        raise SchemaError(f"{what} state: {len(data)} bytes, the header says otherwise")
    ints = (
        array(codes[0], data[p0:p1]),
        array(codes[1], data[p1:p2]),
        array(codes[2], data[p2:p3]),
        array(codes[3], data[p3:p4]),
        array(codes[4], data[p4:p5]),
        array(codes[5], data[p5:p6]),
    )
    floats = array("d", data[p6:p7])
    if _BIG:  # pragma: no cover
        for a in ints:
            a.byteswap()
        floats.byteswap()
    return Groups(
        ints[0].tolist(),
        ints[1].tolist(),
        ints[2].tolist(),
        ints[3].tolist(),
        ints[4].tolist(),
        ints[5].tolist(),
        floats.tolist(),
        data[p7:end],
    )


# --- windowed counts ---------------------------------------------------------------------------


class BucketCounts:
    """Event counts per absolute time bucket and type, kept for the last ``n`` buckets.

    Keyed by absolute bucket (``t // width``) so that adding is commutative: the same events in
    any order give the same counts. A window of ``k`` buckets at ``as_of`` counts the events in the
    bucket containing ``as_of`` and in the ``k - 1`` before it. Counts saturate at 65535.
    """

    __slots__ = ("c", "n", "ntypes", "width", "win")

    def __init__(self, width: int, n: int, ntypes: int) -> None:
        self.width = width
        self.n = n
        self.ntypes = ntypes
        self.c: dict[int, list[int]] = {}
        #: window sums already computed, by (current bucket, k); kept up to date by :meth:`add`, so
        #: consecutive feature rows of a user within one bucket do not sum the buckets again
        self.win: dict[tuple[int, int], list[float]] = {}

    def add(self, t: int, typ: int) -> BucketCounts:
        idx = t // self.width
        row = self.c.get(idx)
        if row is None:
            row = self.c[idx] = [0] * self.ntypes
        if row[typ] < 0xFFFF:
            row[typ] += 1
            for (cur, k), sums in self.win.items():
                if cur - idx < k:
                    sums[typ] += 1
        return self

    def evict(self, watermark: int) -> None:
        """Drop buckets no window can reach once every future event is at or after ``watermark``."""
        lo = watermark // self.width - self.n
        c = self.c
        old = [idx for idx in c if idx <= lo]
        for idx in old:
            del c[idx]
        if old:
            self.win.clear()

    def window(self, as_of: int, k: int) -> list[float]:
        """Counts per type (as floats) over the last ``k`` buckets at ``as_of`` (read-only: it may be cached)."""
        sums = self.win.get((as_of // self.width, k))
        return sums if sums is not None else self.windows(as_of, (k,))[0]

    def windows(self, as_of: int, ks: tuple[int, ...]) -> list[list[float]]:
        """:meth:`window` for several ``k`` in one pass over the buckets (read-only lists).

        The sums are floats (exact: counts stay far below 2**53) because the feature rows want
        floats: they are converted once per bucket change, not once per row.
        """
        cur = as_of // self.width
        win = self.win
        try:
            return [win[(cur, k)] for k in ks]
        except KeyError:
            pass
        if win and next(iter(win))[0] != cur:
            win.clear()  # another current bucket: these sums are no longer asked for
        items = [(cur - idx, row) for idx, row in self.c.items()]
        for k in ks:
            rows = [row for age, row in items if age < k]
            if len(rows) > 1:
                win[(cur, k)] = list(map(float, map(sum, zip(*rows, strict=True))))
            else:
                win[(cur, k)] = list(map(float, rows[0])) if rows else [0.0] * self.ntypes
        return [win[(cur, k)] for k in ks]

    def active(self, as_of: int, k: int) -> int:
        """Number of non-empty buckets among the last ``k`` (e.g. active days)."""
        lo = as_of // self.width - k
        return sum(1 for idx in self.c if idx > lo)

    def write(self, w: Writer, ref_t: int) -> None:
        """Number of buckets and their ages relative to ``ref_t`` (small), the rows (bucket_counts)."""
        ref = ref_t // self.width
        c = self.c
        keys = sorted(c)
        small = w.small
        small.append(len(keys))
        small += [ref - k for k in keys]
        w.bucket_counts += chain.from_iterable([c[k] for k in keys])

    def load(self, ref_t: int, ages: list[int], flat: list[int]) -> None:
        """Set the buckets from what :meth:`write` wrote (``flat`` = the rows, concatenated)."""
        ref = ref_t // self.width
        nt = self.ntypes
        self.c = {ref - a: flat[i : i + nt] for i, a in zip(range(0, len(flat), nt), ages, strict=True)}
        self.win = {}


# --- distinct counting ---------------------------------------------------------------------------


def _fmix32(h: int) -> int:
    """MurmurHash3 finaliser: CRC-32 is linear, HyperLogLog wants well-mixed bits."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


class DistinctCounter:
    """Exact set of 32-bit hashes up to ``cap``, then a HyperLogLog with 2**p registers.

    The switch is order-independent: above the cap the registers are the max over all elements,
    whatever order they came in.
    """

    __slots__ = ("regs", "s")

    def __init__(self) -> None:
        self.s: set[int] | None = set()
        self.regs: bytearray | None = None

    def add(self, h: int, cap: int, p: int) -> DistinctCounter:
        s = self.s
        if s is not None:
            if h in s:
                return self
            s.add(h)
            if len(s) <= cap:
                return self
            self.regs = bytearray(1 << p)
            self.s = None
            for x in s:
                self._hll(x, p)
            return self
        self._hll(h, p)
        return self

    def _hll(self, h: int, p: int) -> None:
        regs = self.regs
        assert regs is not None
        x = _fmix32(h)
        idx = x >> (32 - p)
        rest = (x << p) & 0xFFFFFFFF
        rank = 33 - p if rest == 0 else 32 - rest.bit_length() + 1
        if rank > regs[idx]:
            regs[idx] = rank

    def count(self) -> float:
        if self.s is not None:
            return float(len(self.s))
        regs = self.regs
        assert regs is not None
        m = len(regs)
        alpha = {16: 0.673, 32: 0.697, 64: 0.709}.get(m, 0.7213 / (1 + 1.079 / m))
        est = alpha * m * m / sum(2.0**-r for r in regs)
        zeros = regs.count(0)
        if est <= 2.5 * m and zeros:
            est = m * math.log(m / zeros)
        return float(est)

    def write(self, w: Writer) -> None:
        """``2 * size`` (exact set, its hashes sorted in hashes) or ``2 * registers + 1`` (raw) in small."""
        if self.s is not None:
            w.small.append(2 * len(self.s))
            w.hashes += sorted(self.s)
        else:
            assert self.regs is not None
            w.small.append(2 * len(self.regs) + 1)
            w.raw += self.regs


# --- preferences ------------------------------------------------------------------------------------


class TopCounts:
    """Exact counts of the ``k`` values with the smallest codes seen; the rest counted as ``other``.

    Exact (and so the true mode) while a user has at most ``k`` distinct values, which is the
    common case for device, country, city, time zone. Bottom-k by code rather than a heavy-hitter
    sketch because it is order-independent: the tracked set is always the k smallest codes seen,
    and a tracked value has been tracked since its first occurrence.
    """

    __slots__ = ("c", "other")

    def __init__(self) -> None:
        self.c: dict[int, int] = {}
        self.other = 0

    def add(self, code: int, k: int) -> TopCounts:
        c = self.c
        if code in c:
            c[code] += 1
        elif len(c) < k:
            c[code] = 1
        else:
            mx = max(c)
            if code < mx:
                self.other += c.pop(mx)
                c[code] = 1
            else:
                self.other += 1
        return self

    def top(self) -> tuple[int, int, int]:
        """(mode code, its count, total count); ties go to the smaller code; (0, 0, 0) if empty."""
        c = self.c
        if len(c) == 1:
            ((code, n),) = c.items()
            return code, n, n + self.other
        if not c:
            return 0, 0, self.other
        m = max(c.values())
        best = min([code for code, n in c.items() if n == m])
        return best, m, sum(c.values()) + self.other

    def write(self, w: Writer) -> None:
        """Size (small), ``other`` and the counts (counters), the codes in order (hashes)."""
        c = self.c
        if len(c) == 1:
            ((code, count),) = c.items()
            w.small.append(1)
            w.counters += (self.other, count)
            w.hashes.append(code)
            return
        keys = sorted(c)
        w.small.append(len(keys))
        counters = w.counters
        counters.append(self.other)
        counters += [c[k] for k in keys]
        w.hashes += keys


# --- decayed means ---------------------------------------------------------------------------------


class DecayedMeans:
    """Means of several series observed together, each observation weighted 2**(-age/half_life).

    ``weight`` decayed to a time is the decayed number of observations (a frequency). Updates must
    come in non-decreasing time (the state applies sessions in event-time order).
    """

    __slots__ = ("means", "t", "w")

    def __init__(self, k: int) -> None:
        self.means = [0.0] * k
        self.w = 0.0
        self.t = -1

    def add(self, t: int, xs: list[float], half_life: int) -> DecayedMeans:
        d = 2.0 ** (-(t - self.t) / half_life) if self.t >= 0 and t > self.t else 1.0
        w_old = self.w * d
        w = w_old + 1.0
        self.means = [(m * w_old + x) / w for m, x in zip(self.means, xs, strict=True)]
        self.w = w
        self.t = max(t, self.t)
        return self

    def weight_at(self, t: int, half_life: int) -> float:
        if self.t < 0:
            return 0.0
        decay: float = 2.0 ** (-max(t - self.t, 0) / half_life)  # float ** float is typed Any (complex)
        return self.w * decay

    def write(self, w: Writer) -> None:
        """The time (wide), the weight and the means (floats)."""
        w.wide.append(self.t)
        floats = w.floats
        floats.append(self.w)
        floats += self.means

    def copy(self) -> DecayedMeans:
        d = DecayedMeans(len(self.means))
        d.means = list(self.means)
        d.w = self.w
        d.t = self.t
        return d

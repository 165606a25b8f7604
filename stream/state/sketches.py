"""Tiny rolling statistics (river style: ``add`` mutates and returns self, getters read).

Each one is order-independent where the state needs it to be (integer adds into absolute
buckets, max-registers, bottom-k by hash), and each writes itself into a compact binary
:class:`Writer` and reads back from a :class:`Reader`, so no pickle is involved.

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
from operator import add

from stream.errors import SchemaError

# --- binary codec -----------------------------------------------------------------------------

#: Raw deflate with a 1 KiB window and little memory: state payloads are 1-4 KB of mostly small
#: integers and zeros, so this is ~3x smaller than the raw arrays and costs tens of microseconds.
_WBITS, _MEMLEVEL, _LEVEL = -10, 2, 1
_HEAD = struct.Struct("<BIIII")


class Writer:
    """Collects a state as four typed arrays (int64, uint16 counts, float64, raw bytes).

    Components append whole lists at a time so that serializing is a few dozen C calls, not a
    Python loop per number; :meth:`finish` deflates the concatenation.
    """

    __slots__ = ("f", "h", "q", "raw")

    def __init__(self) -> None:
        self.q = array("q")
        self.h = array("H")
        self.f = array("d")
        self.raw = bytearray()

    def finish(self, fmt: int) -> bytes:
        q, h, f = self.q, self.h, self.f
        if _BIG:
            q, h, f = array("q", q), array("H", h), array("d", f)
            for a in (q, h, f):
                a.byteswap()
        body = b"".join((q.tobytes(), h.tobytes(), f.tobytes(), bytes(self.raw)))
        comp = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEMLEVEL)
        return _HEAD.pack(fmt, len(q), len(h), len(f), len(self.raw)) + comp.compress(body) + comp.flush()


class Reader:
    """Reads what :class:`Writer` wrote; each array has its own cursor."""

    __slots__ = ("f", "fi", "h", "hi", "q", "qi", "raw", "ri")

    def __init__(self, data: bytes, fmt: int, what: str) -> None:
        if len(data) < _HEAD.size or data[0] != fmt:
            raise SchemaError(f"{what} state: format byte {data[:1]!r} is not the supported format {fmt}")
        _, nq, nh, nf, nr = _HEAD.unpack_from(data)
        try:
            body = zlib.decompress(data[_HEAD.size:], _WBITS)
        except zlib.error as exc:
            raise SchemaError(f"{what} state: corrupt payload ({exc})") from exc
        if len(body) != nq * 8 + nh * 2 + nf * 8 + nr:
            raise SchemaError(f"{what} state: payload has {len(body)} bytes, header says otherwise")
        q, h, f = array("q"), array("H"), array("d")
        q.frombytes(body[: nq * 8])
        h.frombytes(body[nq * 8: nq * 8 + nh * 2])
        f.frombytes(body[nq * 8 + nh * 2: nq * 8 + nh * 2 + nf * 8])
        if _BIG:
            for a in (q, h, f):
                a.byteswap()
        self.q, self.h, self.f = q.tolist(), h.tolist(), f.tolist()
        self.raw = body[nq * 8 + nh * 2 + nf * 8:]
        self.qi = self.hi = self.fi = self.ri = 0

    def ints(self, n: int) -> list[int]:
        i = self.qi
        self.qi = i + n
        return self.q[i:i + n]

    def one(self) -> int:
        i = self.qi
        self.qi = i + 1
        return self.q[i]

    def counts(self, n: int) -> list[int]:
        i = self.hi
        self.hi = i + n
        return self.h[i:i + n]

    def floats(self, n: int) -> list[float]:
        i = self.fi
        self.fi = i + n
        return self.f[i:i + n]

    def blob(self, n: int) -> bytes:
        i = self.ri
        self.ri = i + n
        return self.raw[i:i + n]

    def done(self) -> bool:
        return (self.qi == len(self.q) and self.hi == len(self.h) and self.fi == len(self.f)
                and self.ri == len(self.raw))


_BIG = sys.byteorder == "big"


# --- windowed counts ---------------------------------------------------------------------------


class BucketCounts:
    """Event counts per absolute time bucket and type, kept for the last ``n`` buckets.

    Keyed by absolute bucket (``t // width``) so that adding is commutative: the same events in
    any order give the same counts. A window of ``k`` buckets at ``as_of`` counts the events in the
    bucket containing ``as_of`` and in the ``k - 1`` before it. Counts saturate at 65535.
    """

    __slots__ = ("c", "n", "ntypes", "width")

    def __init__(self, width: int, n: int, ntypes: int) -> None:
        self.width = width
        self.n = n
        self.ntypes = ntypes
        self.c: dict[int, list[int]] = {}

    def add(self, t: int, typ: int) -> BucketCounts:
        idx = t // self.width
        row = self.c.get(idx)
        if row is None:
            row = self.c[idx] = [0] * self.ntypes
        if row[typ] < 0xFFFF:
            row[typ] += 1
        return self

    def evict(self, watermark: int) -> None:
        """Drop buckets no window can reach once every future event is at or after ``watermark``."""
        lo = watermark // self.width - self.n
        c = self.c
        for idx in [idx for idx in c if idx <= lo]:
            del c[idx]

    def window(self, as_of: int, k: int) -> list[int]:
        """Counts per type over the last ``k`` buckets at ``as_of``."""
        lo = as_of // self.width - k
        out = [0] * self.ntypes
        for idx, row in self.c.items():
            if idx > lo:
                out = list(map(add, out, row))
        return out

    def windows(self, as_of: int, ks: tuple[int, ...]) -> list[list[int]]:
        """:meth:`window` for several ``k`` in one pass over the buckets."""
        cur = as_of // self.width
        outs = [[0] * self.ntypes for _ in ks]
        for idx, row in self.c.items():
            age = cur - idx
            for j, k in enumerate(ks):
                if age < k:
                    outs[j] = list(map(add, outs[j], row))
        return outs

    def active(self, as_of: int, k: int) -> int:
        """Number of non-empty buckets among the last ``k`` (e.g. active days)."""
        lo = as_of // self.width - k
        return sum(1 for idx in self.c if idx > lo)

    def write(self, w: Writer, ref_t: int) -> None:
        """Bucket ages relative to ``ref_t`` (int64), then the rows (uint16 counts)."""
        ref = ref_t // self.width
        keys = sorted(self.c)
        w.q.append(len(keys))
        w.q.extend([ref - k for k in keys])
        c = self.c
        w.h.extend(chain.from_iterable([c[k] for k in keys]))

    def read(self, r: Reader, ref_t: int) -> None:
        ref = ref_t // self.width
        ages = r.ints(r.one())
        nt = self.ntypes
        flat = r.counts(nt * len(ages))
        self.c = {ref - a: flat[i * nt:(i + 1) * nt] for i, a in enumerate(ages)}

    def copy(self) -> BucketCounts:
        b = BucketCounts(self.width, self.n, self.ntypes)
        b.c = {k: list(v) for k, v in self.c.items()}
        return b


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
        est = alpha * m * m / sum(2.0 ** -r for r in regs)
        zeros = regs.count(0)
        if est <= 2.5 * m and zeros:
            est = m * math.log(m / zeros)
        return float(est)

    def write(self, w: Writer) -> None:
        if self.s is not None:
            w.q.append(len(self.s))
            w.q.extend(sorted(self.s))
        else:
            assert self.regs is not None
            w.q.append(-len(self.regs))
            w.raw += self.regs

    def read(self, r: Reader) -> None:
        n = r.one()
        if n >= 0:
            self.s = set(r.ints(n))
            self.regs = None
        else:
            self.regs = bytearray(r.blob(-n))
            self.s = None

    def copy(self) -> DistinctCounter:
        d = DistinctCounter()
        d.s = None if self.s is None else set(self.s)
        d.regs = None if self.regs is None else bytearray(self.regs)
        return d


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
        best = min(c, key=lambda x: (-c[x], x))
        return best, c[best], sum(c.values()) + self.other

    def write(self, w: Writer) -> None:
        c = self.c
        keys = sorted(c)
        w.q.append(len(keys))
        w.q.append(self.other)
        w.q.extend(keys)
        w.q.extend([c[k] for k in keys])

    def read(self, r: Reader) -> None:
        n = r.one()
        self.other = r.one()
        keys = r.ints(n)
        self.c = dict(zip(keys, r.ints(n), strict=True))

    def copy(self) -> TopCounts:
        t = TopCounts()
        t.c = dict(self.c)
        t.other = self.other
        return t


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
        return self.w * 2.0 ** (-max(t - self.t, 0) / half_life)

    def write(self, w: Writer) -> None:
        w.q.append(self.t)
        w.f.append(self.w)
        w.f.extend(self.means)

    def read(self, r: Reader) -> None:
        self.t = r.one()
        self.w = r.floats(1)[0]
        self.means = r.floats(len(self.means))

    def copy(self) -> DecayedMeans:
        d = DecayedMeans(len(self.means))
        d.means = list(self.means)
        d.w = self.w
        d.t = self.t
        return d

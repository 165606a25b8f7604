"""What a user state holds: the commutative part, the order-dependent session part and its buffer.

:class:`~stream.state.user.UserState` (updates, equality) and :mod:`stream.state.user_codec` (its
bytes) both build on :class:`UserFields`, so that neither imports the other.
"""

from __future__ import annotations

from operator import mul

from stream.state.codes import EVENT_TYPES, T_SESSION_END, TYPE_CODE
from stream.state.config import DAY_MS, HOUR_MS, MINUTE_MS
from stream.state.labels import ENGAGEMENT_WEIGHTS, engagement_of_points
from stream.state.sketches import BucketCounts, DecayedMeans, DistinctCounter, TopCounts

#: (bucket width, buckets kept) per resolution.
RESOLUTIONS: tuple[tuple[int, int], ...] = ((5 * MINUTE_MS, 12), (HOUR_MS, 24), (DAY_MS, 30))
#: Event types whose per-session counts enter the engagement score (labels.ENGAGEMENT_WEIGHTS).
ENGAGEMENT_TYPES = ("article_view", "article_click", "video_play", "newsletter_signup", "subscription")
#: event type code -> its index in :attr:`OpenSession.engagement_counts`
_ENGAGEMENT_INDEX = {TYPE_CODE[name]: i for i, name in enumerate(ENGAGEMENT_TYPES)}
#: the engagement points of one event of each of :data:`ENGAGEMENT_TYPES`, in that order
_ENGAGEMENT_WEIGHTS = tuple(ENGAGEMENT_WEIGHTS.get(name, 0.0) for name in ENGAGEMENT_TYPES)
#: closed sessions remembered, so that their stragglers are ignored
_CLOSED_RING = 4

#: A buffered event: (time, type rank, id hash, type code, session hash, session_end duration or -1).
#: A plain tuple, built once per event: tuples sort by their fields in this order.
Pending = tuple[int, int, int, int, int, int]
#: index of the id hash in a :data:`Pending` tuple
PENDING_ID_HASH = 2


class OpenSession:
    """The session being fed: its hash, first and last event time, events, engagement counts, end."""

    __slots__ = ("end_duration", "engagement_counts", "events", "last", "session_hash", "start")

    def __init__(
        self, session_hash: int, start: int, last: int, events: int, engagement_counts: list[int], end_duration: int
    ) -> None:
        self.session_hash = session_hash
        self.start = start
        self.last = last
        self.events = events
        #: events per type of :data:`ENGAGEMENT_TYPES`, in that order
        self.engagement_counts = engagement_counts
        #: the ``duration_ms`` of its session_end, -1 before that
        self.end_duration = end_duration

    def stats(self) -> tuple[int, float]:
        """(duration ms, engagement score) of the session, as labels.session_engagement has it."""
        dur = self.end_duration if self.end_duration >= 0 else self.last - self.start
        # engagement_score of the counts by type: the same products, summed in the same order
        return dur, engagement_of_points(sum(map(mul, _ENGAGEMENT_WEIGHTS, self.engagement_counts)), dur)

    def copy(self) -> OpenSession:
        return OpenSession(
            self.session_hash, self.start, self.last, self.events, list(self.engagement_counts), self.end_duration
        )


class Sessions:
    """The open session and the decayed averages over closed ones, fed in event-time order.

    A session closes at its ``session_end`` or when an event of another session arrives; events of
    one of the last few closed sessions (stragglers) are then ignored here.
    """

    __slots__ = ("closed", "cur", "dm", "n")

    def __init__(self) -> None:
        self.cur: OpenSession | None = None
        #: hashes of the last closed sessions, oldest first
        self.closed: list[int] = []
        #: sessions closed
        self.n = 0
        #: decayed means of (minutes, events, engagement) per closed session
        self.dm = DecayedMeans(3)

    def apply(self, p: Pending, half_life: int) -> None:
        t, _, _, typ, session_hash, end_duration = p
        cur = self.cur
        if cur is None or cur.session_hash != session_hash:
            if session_hash in self.closed:
                return
            if cur is not None:
                self._close(half_life)
            cur = self.cur = OpenSession(session_hash, t, t, 0, [0, 0, 0, 0, 0], -1)
        if t > cur.last:
            cur.last = t
        cur.events += 1
        i = _ENGAGEMENT_INDEX.get(typ)
        if i is not None:
            cur.engagement_counts[i] += 1
        if typ == T_SESSION_END:
            cur.end_duration = end_duration
            self._close(half_life)

    def _close(self, half_life: int) -> None:
        cur = self.cur
        assert cur is not None
        dur, eng = cur.stats()
        self.dm.add(cur.start, [dur / MINUTE_MS, float(cur.events), eng], half_life)
        self.n += 1
        self.closed.append(cur.session_hash)
        if len(self.closed) > _CLOSED_RING:
            del self.closed[0]
        self.cur = None

    def copy(self) -> Sessions:
        s = Sessions()
        s.cur = None if self.cur is None else self.cur.copy()
        s.closed = list(self.closed)
        s.n = self.n
        s.dm = self.dm.copy()
        return s


class UserFields:
    """The fields of a user state, empty as for a user never seen."""

    __slots__ = (
        "brands",
        "buckets",
        "c_brand",
        "c_cat",
        "cats",
        "cents",
        "i_brand",
        "i_cat",
        "last_ss",
        "late",
        "max_t",
        "min_t",
        "nl_t",
        "p_brand",
        "p_browser",
        "p_city",
        "p_country",
        "p_device",
        "p_os",
        "p_tz",
        "pending",
        "ring",
        "segment",
        "sess",
        "sub_t",
        "tot",
        "view",
    )

    def __init__(self) -> None:
        self.max_t = -1
        self.min_t = -1
        #: events ignored as too late
        self.late = 0
        #: lifetime events per type code
        self.tot = [0] * len(EVENT_TYPES)
        self.buckets = [BucketCounts(width, n, len(EVENT_TYPES)) for width, n in RESOLUTIONS]
        #: latest session_start, first newsletter sign-up, first subscription (-1: none)
        self.last_ss = -1
        self.nl_t = -1
        self.sub_t = -1
        #: revenue in cents
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
        #: article impressions and clicks per brand and per category (``brand_k`` codes each): the
        #: user's click rate on the brand and category of an impression being scored
        self.i_brand = TopCounts()
        self.c_brand = TopCounts()
        self.i_cat = TopCounts()
        self.c_cat = TopCounts()
        #: sorted events not yet fed to ``sess``
        self.pending: list[Pending] = []
        #: id hashes of the last events fed to ``sess`` (the duplicates they would be), oldest first
        self.ring: list[int] = []
        self.sess = Sessions()
        #: the segment last assigned online (stream/models/segments.py): (segment id, segmentation
        #: model version, time of the session_end it was assigned at), None before any; written by
        #: the worker, not by events
        self.segment: tuple[int, int, int] | None = None
        #: derived, not serialized: (half-life, ``sess`` with ``pending`` applied), kept up to date
        #: by in-order events (see :func:`~stream.state.user.session_view`); None until a feature
        #: row asks for it
        self.view: tuple[int, Sessions] | None = None

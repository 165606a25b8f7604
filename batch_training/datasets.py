"""Point-in-time-correct training sets from the event history in ClickHouse.

The rows are computed by the very functions the stream worker runs (``stream.state``): events
are read per user in (user_id, event_time) order, in chunks of users so memory stays bounded,
and fed one by one into a user state; a row is cut whenever the worker would score.

* user snapshots (churn, conversion, high value): features as of daily cut-offs ``t`` (00:00
  UTC) from events at or before ``t``; labels strictly after ``t``. A cut-off is used when the
  conversion horizon (14 d) lies within the data; ``churned`` is NaN where its 30 d horizon does
  not. Only users with an event in the ``active_within_days`` before ``t``. The labels are
  ``labels.churned`` and ``stream.monitoring.horizon.converted`` of the user's first event (of any
  type; a newsletter_signup or subscription) after ``t``: the functions the horizon-quality job
  (``python -m stream outcomes``) applies to the worker's live churn and conversion predictions.
* clicks: one row per article_impression; user state before the impression, article popularity
  as of the impression's watermark (``stream.state.article_watermark``: 5 min back, floored to
  5 min; the worker's staleness contract, docs/worker.md), from a separate pass over all users'
  events; label = an article_click of the same user, session and article within
  ``click_window_ms`` after it (``labels.CLICK_WINDOW_MS``, which the worker's online join uses too).
* engagement: one row per session_start with the user state before it; label =
  ``labels.session_engagement`` of that session's events.

Parallelism: users are split by ``cityHash64(user_id) % n_chunks``; the parent queries each chunk
(one connection) and worker processes run the state.
"""

from __future__ import annotations

import bisect
import math
import multiprocessing as mp
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from stream.clickhouse import ClickHouse
from stream.monitoring.horizon import CONVERSION_EVENTS, converted
from stream.state import (
    ARTICLE_FEATURES,
    CLICK_FEATURES,
    DEFAULT_CONFIG,
    ENGAGEMENT_FEATURES,
    USER_FEATURES,
    Ev,
    StateConfig,
    apply_user,
    article_row,
    engagement_row,
    new_article_state,
    new_user_state,
    update_article,
    user_row,
)
from stream.state.codes import (
    T_IMPRESSION,
    T_SESSION_START,
    T_SUBSCRIPTION,
    TYPE_CODE,
    browser_code,
    country_code,
    device_code,
    os_code,
    str_hash,
    tz_code,
)
from stream.state.features import affinity_row, context_row
from stream.state.labels import (
    CHURN_HORIZON_MS,
    CLICK_WINDOW_MS,
    CONVERSION_HORIZON_MS,
    DAY_MS,
    churned,
    session_engagement_frame,
)

#: the type codes of the events that make a conversion (``converted``'s event types)
CONVERSION_CODES = frozenset(TYPE_CODE[k] for k in CONVERSION_EVENTS)

COLS = (
    "event_id, event_type, user_id, session_id, toUnixTimestamp64Milli(event_time) AS t, article_id, "
    "brand, category, position, revenue, duration_ms, device_type, device_os, device_browser, "
    "country, city, timezone"
)


@dataclass
class TrainingSets:
    """The three training sets plus how long building them took."""

    users: pd.DataFrame
    clicks: pd.DataFrame
    engagement: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)


# --- events from a frame, vectorised ---------------------------------------------------------------


def _codes(col: pd.Series, fn: Any) -> list[int]:
    """Apply a code function once per distinct value (absent = 0)."""
    idx, uniq = pd.factorize(col, use_na_sentinel=True)
    table = np.array([fn(u) for u in uniq] + [0], dtype=np.int64)
    return table[idx].tolist()


def frame_to_evs(df: pd.DataFrame) -> list[Ev]:
    """Encode a frame of events (columns of the events table, ``t`` in epoch ms) as :class:`Ev`.

    Same result as ``encode_event`` on each record, without building dicts (tested).
    """
    n = len(df)
    if n == 0:
        return []
    t = df["t"].astype("int64").tolist()
    typ = [TYPE_CODE[x] for x in df["event_type"].astype(str).tolist()]
    idh = [zlib.crc32(x.encode()) or 1 for x in df["event_id"].astype(str).tolist()]
    dur = df["duration_ms"].astype("Float64").fillna(-1).astype("int64").tolist()
    rev = df["revenue"].astype("Float64")
    cents = [0 if pd.isna(v) else round(float(v) * 100) for v in rev.tolist()] if rev.notna().any() else [0] * n
    pos = df["position"].astype("Float64").fillna(0).astype("int64").tolist()
    cols = [
        t,
        typ,
        idh,
        _codes(df["session_id"], str_hash),
        _codes(df["brand"], str_hash),
        _codes(df["category"], str_hash),
        _codes(df["device_type"], device_code),
        _codes(df["device_os"], os_code),
        _codes(df["device_browser"], browser_code),
        _codes(df["country"], country_code),
        _codes(df["city"], str_hash),
        _codes(df["timezone"], tz_code),
        dur,
        cents,
        pos,
    ]
    return [Ev._make(r) for r in zip(*cols, strict=True)]


# --- the per-user pass ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Which rows to build (all by default). Shares are kept by a seeded hash of the id, so the
    choice is the same in every process and run, and independent of chunking.

    * ``cutoff_every_days``: user snapshots every k days (1 = daily);
    * ``user_share``: users whose rows are built (their whole history is still read);
    * ``impression_share`` / ``session_share``: click rows per impression / engagement rows per
      session_start. Unsampled events are still applied to the states, so features are unchanged.
    """

    cutoff_every_days: int = 1
    user_share: float = 1.0
    impression_share: float = 1.0
    session_share: float = 1.0
    seed: int = 0

    def keep(self, h: int, share: float) -> bool:
        """Deterministic Bernoulli(share) from a 32-bit hash."""
        return share >= 1.0 or ((h * 2_654_435_761 + self.seed * 40_503) & 0xFFFFFFFF) < share * 4_294_967_296.0


FULL = Sampling()


@dataclass
class _Job:
    df: pd.DataFrame
    cutoffs: list[int]
    data_end: int
    active_within_ms: int
    click_window_ms: int
    config: StateConfig
    sampling: Sampling = FULL
    rows_from: int = 0  # click and engagement rows of events at or after this time only


class UserSnapshot(NamedTuple):
    """One row of the ``users`` set: a user's features as of a daily cut-off, and its labels."""

    user_id: str
    cutoff_ms: int
    features: list[float]  # USER_FEATURES order
    churned: float  # NaN when the 30-day horizon lies beyond the data
    converted: int
    high_value: int


class ClickRow(NamedTuple):
    """One row of the ``clicks`` set but its article part (joined by event_id after the article pass)."""

    event_id: str
    user_id: str
    session_id: str
    article_id: str
    event_time_ms: int
    user_part: list[float]  # USER_FEATURES order
    tail: list[float]  # position, the context features, then the affinity features
    clicked: int


class EngagementRow(NamedTuple):
    """One row of the ``engagement`` set: the user state before a session_start, and the session's engagement."""

    event_id: str
    user_id: str
    session_id: str
    event_time_ms: int
    features: list[float]  # ENGAGEMENT_FEATURES order
    engagement: float  # NaN when the session's events were not read


def click_labels(df: pd.DataFrame, window: int) -> dict[str, int]:
    """Per article_impression id: 1 if a click of its user, session and article follows within ``window``, else 0."""
    imp = df[df["event_type"] == "article_impression"][["event_id", "user_id", "session_id", "article_id", "t"]]
    clk = df[df["event_type"] == "article_click"][["user_id", "session_id", "article_id", "t"]]
    m = imp.merge(clk, on=["user_id", "session_id", "article_id"], suffixes=("", "_c"))
    m = m[(m["t_c"] >= m["t"]) & (m["t_c"] - m["t"] <= window)]
    hit = set(m["event_id"].tolist())
    return {e: int(e in hit) for e in imp["event_id"].tolist()}


def engagement_labels(df: pd.DataFrame) -> dict[str, float]:
    """``labels.session_engagement`` of every session in the frame (times in column ``t``)."""
    if not len(df):
        return {}
    score = session_engagement_frame(df, time_col="t")
    return dict(zip(score.index.tolist(), score.astype(float).tolist(), strict=True))


def _user_pass(job: _Job) -> tuple[list[UserSnapshot], list[ClickRow], list[EngagementRow]]:
    """Feed each user's events in order; cut snapshot, click and engagement rows on the way."""
    df, cfg, smp = job.df, job.config, job.sampling
    imp_share, sess_share = smp.impression_share, smp.session_share
    evs = frame_to_evs(df)
    clicks_y = click_labels(df, job.click_window_ms)
    eng_y = engagement_labels(df)
    users = df["user_id"].astype(str).tolist()
    ids = df["event_id"].astype(str).tolist()
    sids = df["session_id"].astype(str).tolist()
    arts = df["article_id"].tolist()
    snaps: list[UserSnapshot] = []
    clicks: list[ClickRow] = []
    engage: list[EngagementRow] = []
    cutoffs = job.cutoffs
    i, n = 0, len(evs)
    while i < n:
        uid = users[i]
        j = i
        while j < n and users[j] == uid:
            j += 1
        conv_t = [e.t for e in evs[i:j] if e.typ in CONVERSION_CODES]
        sub_t = [e.t for e in evs[i:j] if e.typ == T_SUBSCRIPTION]
        st = new_user_state()
        ci = bisect.bisect_left(cutoffs, evs[i].t)  # first cut-off at or after the first event
        for k in range(i, j + 1):
            nxt = evs[k].t if k < j else None
            while ci < len(cutoffs) and (nxt is None or cutoffs[ci] < nxt):
                c = cutoffs[ci]
                ci += 1
                if st.max_t < 0 or c - st.max_t > job.active_within_ms:
                    continue
                conv = int(converted(_next_after(conv_t, c), c))
                high = _any_in(sub_t, c, c + CONVERSION_HORIZON_MS)
                churn = float(churned(nxt, c)) if c + CHURN_HORIZON_MS <= job.data_end else math.nan
                snaps.append(UserSnapshot(uid, c, user_row(st, c, cfg), churn, conv, high))
            if k == j:
                break
            ev = evs[k]
            if ev.typ == T_IMPRESSION and ev.t >= job.rows_from and smp.keep(ev.idh, imp_share):
                # the article part is joined later (click_row = user, article, position, context)
                tail = [float(ev.pos) if ev.pos else math.nan, *context_row(st, ev), *affinity_row(st, ev, cfg)]
                clicks.append(
                    ClickRow(
                        ids[k], uid, sids[k], arts[k], ev.t, user_row(st, ev.t, cfg), tail, clicks_y.get(ids[k], 0)
                    )
                )
            elif ev.typ == T_SESSION_START and ev.t >= job.rows_from and smp.keep(ev.sidh, sess_share):
                engage.append(
                    EngagementRow(ids[k], uid, sids[k], ev.t, engagement_row(st, ev, cfg), eng_y.get(sids[k], math.nan))
                )
            apply_user(st, ev, cfg)
        i = j
    return snaps, clicks, engage


def _next_after(times: list[int], lo: int) -> int | None:
    """The first time strictly after ``lo`` (times sorted), or None."""
    k = bisect.bisect_right(times, lo)
    return times[k] if k < len(times) else None


def _any_in(times: list[int], lo: int, hi: int) -> int:
    """1 if some time lies in (lo, hi]."""
    k = bisect.bisect_right(times, lo)
    return int(k < len(times) and times[k] <= hi)


# --- the per-article pass ------------------------------------------------------------------------


def _article_pass(args: tuple[pd.DataFrame, StateConfig, Sampling]) -> dict[str, list[float]]:
    """Article vectors of each (sampled) impression, as the worker reads them: the events before the
    impression's watermark only (article_row), so the fold order does not matter."""
    df, cfg, smp = args
    share = smp.impression_share
    states: dict[str, Any] = {}
    out: dict[str, list[float]] = {}
    for eid, aid, kind, t in zip(
        df["event_id"].tolist(), df["article_id"].tolist(), df["event_type"].tolist(), df["t"].tolist(), strict=True
    ):
        st = states.get(aid)
        if st is None:
            st = states[aid] = new_article_state()
        typ = TYPE_CODE[kind]
        if typ == T_IMPRESSION and smp.keep(zlib.crc32(eid.encode()) or 1, share):
            out[eid] = article_row(st, t, cfg)
        update_article(st, Ev(t, typ, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, 0))
    return out


# --- driver ----------------------------------------------------------------------------------------------


def _chunks(ch: ClickHouse, n_chunks: int, where: str, user_filter: str = "") -> Iterator[pd.DataFrame]:
    for k in range(n_chunks):
        df = ch.query_df(
            f"SELECT {COLS} FROM {{db}}.events WHERE cityHash64(user_id) % {n_chunks} = {k} {where} {user_filter} "
            "ORDER BY user_id, event_time, event_id LIMIT 1 BY event_id"
        )
        if len(df):
            yield df


def _article_chunks(ch: ClickHouse, n_chunks: int, where: str) -> Iterator[pd.DataFrame]:
    for k in range(n_chunks):
        df = ch.query_df(
            "SELECT event_id, article_id, event_type, toUnixTimestamp64Milli(event_time) AS t "
            f"FROM {{db}}.events WHERE article_id IS NOT NULL AND cityHash64(article_id) % {n_chunks} = {k} "
            "AND event_type IN ('article_impression', 'article_click', 'article_view') "
            f"{where} ORDER BY event_time, event_id LIMIT 1 BY event_id"
        )
        if len(df):
            yield df


def build_training_sets(
    ch: ClickHouse,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    rows_from_ms: int | None = None,
    processes: int = 1,
    users_per_chunk: int = 2_000,
    active_within_days: int = 30,
    click_window_ms: int = CLICK_WINDOW_MS,
    config: StateConfig = DEFAULT_CONFIG,
    sampling: Sampling = FULL,
    progress: Any = None,
) -> TrainingSets:
    """Build the user-snapshot, click and engagement sets from ``{db}.events``.

    ``start_ms``/``end_ms`` bound the history read (default: all of it); the data end used for
    label horizons is the latest event time read. ``rows_from_ms`` keeps only the rows at or after
    it (snapshot cut-offs, impressions, session starts) while the states still fold the whole
    history read, as the worker's did: how ``retrain`` trains on the latest window and ``compare``
    scores held-out events.
    """
    t0 = time.perf_counter()
    where = ""
    if start_ms is not None:
        where += f" AND event_time >= fromUnixTimestamp64Milli({int(start_ms)})"
    if end_ms is not None:
        where += f" AND event_time <= fromUnixTimestamp64Milli({int(end_ms)})"
    stats = ch.query_df(
        f"SELECT uniqExact(user_id) AS n, toUnixTimestamp64Milli(min(event_time)) AS lo, "
        f"toUnixTimestamp64Milli(max(event_time)) AS hi FROM {{db}}.events WHERE 1 {where}"
    )
    n_users = int(stats["n"].iloc[0])
    if n_users == 0:
        return TrainingSets(_users_frame([]), _clicks_frame([], {}), _engagement_frame([]))
    lo, hi = int(stats["lo"].iloc[0]), int(stats["hi"].iloc[0])
    first_cut = (lo // DAY_MS + 1) * DAY_MS
    cutoffs = list(range(first_cut, hi - CONVERSION_HORIZON_MS + 1, DAY_MS * sampling.cutoff_every_days))
    rows_from = int(rows_from_ms) if rows_from_ms is not None else 0
    cutoffs = [c for c in cutoffs if c >= rows_from]
    user_filter = ""
    if sampling.user_share < 1.0:
        user_filter = f"AND cityHash64(user_id, {int(sampling.seed)}) % 10000 < {round(sampling.user_share * 10_000)}"
        n_users = max(1, round(n_users * sampling.user_share))
    n_chunks = max(1, math.ceil(n_users / users_per_chunk))
    jobs = (
        _Job(df, cutoffs, hi, active_within_days * DAY_MS, click_window_ms, config, sampling, rows_from)
        for df in _chunks(ch, n_chunks, where, user_filter)
    )
    n_art_chunks = max(1, min(n_chunks, 4))
    arts = ((df, config, sampling) for df in _article_chunks(ch, n_art_chunks, where))
    tick = progress.update if progress is not None else (lambda _n: None)
    if progress is not None and hasattr(progress, "total"):
        progress.total = n_chunks + n_art_chunks
        progress.refresh()
    snaps: list[UserSnapshot] = []
    clicks: list[ClickRow] = []
    engage: list[EngagementRow] = []
    art_rows: dict[str, list[float]] = {}
    if processes > 1:
        with mp.get_context("spawn").Pool(processes) as pool:
            for s, c, e in pool.imap(_user_pass, jobs):
                snaps += s
                clicks += c
                engage += e
                tick(1)
            t1 = time.perf_counter()
            for part in pool.imap(_article_pass, arts):
                art_rows.update(part)
                tick(1)
    else:
        for job in jobs:
            s, c, e = _user_pass(job)
            snaps += s
            clicks += c
            engage += e
            tick(1)
        t1 = time.perf_counter()
        for a in arts:
            art_rows.update(_article_pass(a))
            tick(1)
    t2 = time.perf_counter()
    out = TrainingSets(_users_frame(snaps), _clicks_frame(clicks, art_rows), _engagement_frame(engage))
    out.seconds = {
        "user_pass": t1 - t0,
        "article_pass": t2 - t1,
        "assemble": time.perf_counter() - t2,
        "total": time.perf_counter() - t0,
    }
    return out


def _users_frame(snaps: list[UserSnapshot]) -> pd.DataFrame:
    x = np.array([s.features for s in snaps], dtype=np.float32).reshape(len(snaps), len(USER_FEATURES))
    df = pd.DataFrame(x, columns=list(USER_FEATURES.names))
    df.insert(0, "user_id", [s.user_id for s in snaps])
    df.insert(1, "cutoff_ms", np.array([s.cutoff_ms for s in snaps], dtype=np.int64))
    df["churned"] = np.array([s.churned for s in snaps], dtype=np.float32)
    df["converted"] = np.array([s.converted for s in snaps], dtype=np.int8)
    df["high_value"] = np.array([s.high_value for s in snaps], dtype=np.int8)
    return df


def _clicks_frame(clicks: list[ClickRow], art_rows: dict[str, list[float]]) -> pd.DataFrame:
    nan_art = [math.nan] * len(ARTICLE_FEATURES)
    rows = [[*c.user_part, *art_rows.get(c.event_id, nan_art), *c.tail] for c in clicks]
    x = np.array(rows, dtype=np.float32).reshape(len(rows), len(CLICK_FEATURES))
    df = pd.DataFrame(x, columns=list(CLICK_FEATURES.names))
    df.insert(0, "event_id", [c.event_id for c in clicks])
    df.insert(1, "user_id", [c.user_id for c in clicks])
    df.insert(2, "session_id", [c.session_id for c in clicks])
    df.insert(3, "article_id", [c.article_id for c in clicks])
    df.insert(4, "event_time_ms", np.array([c.event_time_ms for c in clicks], dtype=np.int64))
    df["clicked"] = np.array([c.clicked for c in clicks], dtype=np.int8)
    return df


def _engagement_frame(engage: list[EngagementRow]) -> pd.DataFrame:
    x = np.array([e.features for e in engage], dtype=np.float32).reshape(len(engage), len(ENGAGEMENT_FEATURES))
    df = pd.DataFrame(x, columns=list(ENGAGEMENT_FEATURES.names))
    df.insert(0, "event_id", [e.event_id for e in engage])
    df.insert(1, "user_id", [e.user_id for e in engage])
    df.insert(2, "session_id", [e.session_id for e in engage])
    df.insert(3, "event_time_ms", np.array([e.event_time_ms for e in engage], dtype=np.int64))
    df["engagement"] = np.array([e.engagement for e in engage], dtype=np.float32)
    return df

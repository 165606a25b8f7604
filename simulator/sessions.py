"""Sessions and their events, built column-wise: per-day counts, then ``np.repeat`` expansions.

A session is laid out as offsets (ms) from its start::

    0      session_start            landing page: page_view, ad_request/ad_impression(/ad_click)
    800+   article_impression x N   the feed, positions 1..N, 40 ms apart
    F      views, one after another: (article_click) page_view article_view ad_request
           ad_impression (ad_click) (video_play), each lasting its dwell time
    E      (newsletter_signup) (subscription) session_end(duration_ms = E)

Dwell means are clipped so that E stays below 60 minutes: the engagement label's minute cap
never binds and the expected engagement below is exact up to the 100-point cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import SimConfig
from simulator.population import DAY_MS, HOUR_MS, Articles, Tastes, Users, sample_articles
from simulator.world import PLACES
from stream.state.codes import TYPE_CODE

# Event kinds are the state's type codes (stream.state.codes, checked against the schema's enum).
SESSION_START = TYPE_CODE["session_start"]
PAGE_VIEW = TYPE_CODE["page_view"]
ARTICLE_VIEW = TYPE_CODE["article_view"]
ARTICLE_IMPRESSION = TYPE_CODE["article_impression"]
ARTICLE_CLICK = TYPE_CODE["article_click"]
VIDEO_PLAY = TYPE_CODE["video_play"]
NEWSLETTER_SIGNUP = TYPE_CODE["newsletter_signup"]
SUBSCRIPTION = TYPE_CODE["subscription"]
AD_REQUEST = TYPE_CODE["ad_request"]
AD_IMPRESSION = TYPE_CODE["ad_impression"]
AD_CLICK = TYPE_CODE["ad_click"]
SESSION_END = TYPE_CODE["session_end"]

MAX_DIRECT = 3
SCROLL_MS = ((2_000, 10_000), (200, 1_000))  # humans, bots
TAIL_MS = ((3_000, 60_000), (1_000, 2_000))
FEED_BASE_MS = 1_200
FEED_STEP_MS = 40
BOT_FEED = 12  # 12 clicks * 6 points + < 1 minute: bots never reach the 100 cap


@dataclass
class Sessions:
    """One row per session, in (day, user) order; the row number is the session number."""

    user: np.ndarray
    day: np.ndarray
    start_ms: np.ndarray  # absolute epoch ms
    device: np.ndarray
    duration_ms: np.ndarray
    expected_engagement: np.ndarray
    newsletter_done_before: np.ndarray
    subscription_done_before: np.ndarray

    @property
    def n(self) -> int:
        return len(self.user)


@dataclass
class Events:
    """Columnar events (codes, not strings), sorted by event time. -1 / NaN = absent."""

    session: np.ndarray
    seq: np.ndarray  # position within the session (for event_id)
    time_ms: np.ndarray
    kind: np.ndarray
    article: np.ndarray
    position: np.ndarray  # 0 = absent
    placement: np.ndarray
    request: np.ndarray  # row index of the event's ad_request (-1 = none)
    revenue: np.ndarray
    duration_ms: np.ndarray  # -1 = absent
    p_click: np.ndarray  # truth for article and ad impressions, NaN otherwise

    @property
    def n(self) -> int:
        return len(self.kind)


def ad_ctr_by_day(cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """True CTR of every arm per day: shape (days, placements, 3 devices)."""
    base = np.asarray(cfg.ad_ctr, dtype=float)
    phase = rng.uniform(0, 2 * np.pi, size=base.shape)
    t = np.arange(cfg.days, dtype=float)[:, None, None]
    drift = np.exp(cfg.ad_drift_amplitude * np.sin(2 * np.pi * t / cfg.ad_drift_period_days + phase))
    return np.clip(base[None] * drift, 0.0, 1.0)


def _group_starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(counts)[:-1]))


def _rank_in_group(counts: np.ndarray) -> np.ndarray:
    """0..count-1 for each group, concatenated."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(_group_starts(counts), counts)


def _once_per_user(user: np.ndarray, draw: np.ndarray, init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep only a user's first successful draw (rows sorted by user, then time).

    Returns (happens, done_before): the event fires in this row / was done before this row.
    """
    csum = np.cumsum(draw.astype(np.int64))
    first = np.r_[True, user[1:] != user[:-1]]
    base = np.maximum.accumulate(np.where(first, csum - draw, 0))
    before = (csum - draw - base) > 0
    done_before = init[user] | before
    return draw & ~done_before, done_before


def generate_sessions(
    cfg: SimConfig,
    users: Users,
    arts: Articles,
    tastes: Tastes,
    ctr: np.ndarray,
    tz_offsets: np.ndarray,
    place_tz: np.ndarray,
    rng: np.random.Generator,
    taste_rng: np.random.Generator,
) -> tuple[Sessions, Events]:
    """Draw every session of the window and lay out its events (see the module docstring)."""
    start_ms0 = _epoch_ms(cfg)
    n, days = users.n, cfg.days
    dayidx = np.arange(days)
    weekday0 = cfg.start.weekday()
    week = np.asarray(cfg.weekly_rhythm)[(weekday0 + dayidx) % 7]

    # Step 1. Sessions per (day, user): Poisson while alive.
    alive = (dayidx[:, None] >= users.join_day[None, :]) & (dayidx[:, None] < users.death_day[None, :])
    lam = np.where(alive, week[:, None] * users.rate[None, :], 0.0)
    counts = rng.poisson(lam).ravel()
    cells = np.repeat(np.arange(days * n), counts)
    s_day = (cells // n).astype(np.int32)
    s_user = (cells % n).astype(np.int64)
    ns = len(s_user)
    bot = users.is_bot[s_user]

    # Step 2. Device, feed length, direct visits.
    stick = rng.random(ns) < cfg.device_stickiness
    other = rng.choice(
        3,
        size=ns,
        p=[cfg.desktop_first_share, cfg.mobile_first_share, 1.0 - cfg.mobile_first_share - cfg.desktop_first_share],
    )
    device = np.where(stick, users.primary_device[s_user], other).astype(np.int8)
    device[bot] = 0
    z = users.engagement[s_user]
    drifted = s_day >= cfg.drift_day if cfg.drift_day else np.zeros(ns, dtype=bool)
    base_feed = np.where(drifted, np.asarray(cfg.drift_feed_length)[device], np.asarray(cfg.feed_length)[device])
    feed = np.clip(np.rint(base_feed + cfg.feed_length_per_engagement * z), 3, 16).astype(np.int64)
    feed[bot] = BOT_FEED
    n_direct = rng.binomial(MAX_DIRECT, users.direct_prob[s_user])

    # Step 3. Start time: local hour from the daily rhythm, converted to a UTC time of day.
    rhythm = np.asarray(cfg.daily_rhythm, dtype=float)
    local_hour = rng.choice(24, size=ns, p=rhythm / rhythm.sum())
    local_ms = local_hour * HOUR_MS + rng.integers(0, HOUR_MS, size=ns)
    tz = place_tz[np.maximum(users.place[s_user], 0)]
    offset_ms = tz_offsets[tz, s_day].astype(np.int64) * 60_000
    offset_ms[bot] = 0
    tod = np.mod(local_ms - offset_ms, DAY_MS)
    tod[bot] = rng.integers(0, DAY_MS, size=int(bot.sum()))
    rel_start = s_day.astype(np.int64) * DAY_MS + tod  # ms since window start (unclipped)
    # Articles must exist when shown: pools end a full hour before the (unclipped) start hour,
    # so clipping the start earlier by < 1 h (below) never shows an unpublished article.
    pool_end = (rel_start // HOUR_MS - 1) * HOUR_MS

    # Step 4. Feed impressions and clicks.
    imp_sess = np.repeat(np.arange(ns), feed)
    imp_pos = _rank_in_group(feed) + 1
    imp_art = sample_articles(cfg, arts, pool_end[imp_sess], rng)
    iu = s_user[imp_sess]
    imp_drifted = drifted[imp_sess]
    logit = (
        users.click_logit[iu]
        + cfg.quality_weight * arts.quality[imp_art]
        + cfg.affinity_weight
        * (users.brand_logaff[iu, arts.brand[imp_art]] + users.category_logaff[iu, arts.category[imp_art]])
        + cfg.taste_click_weight * tastes.topic_logaff[iu, tastes.topic[imp_art]]
        - np.where(imp_drifted, cfg.drift_position_decay, cfg.position_decay) * np.log(imp_pos)
        + np.where(
            imp_drifted,
            np.asarray(cfg.drift_device_click_shift)[device[imp_sess]],
            np.asarray(cfg.device_click_shift)[device[imp_sess]],
        )
    )
    imp_p = 1.0 / (1.0 + np.exp(-logit))
    imp_p[bot[imp_sess]] = cfg.bot_click_prob
    clicked = rng.random(len(imp_p)) < imp_p
    exp_clicks = np.bincount(imp_sess, weights=imp_p, minlength=ns)

    # Step 5. Article views: clicked impressions in position order, then direct visits.
    c_sess, c_art, c_pos = imp_sess[clicked], imp_art[clicked], imp_pos[clicked]
    d_sess = np.repeat(np.arange(ns), n_direct)
    d_art = _direct_articles(cfg, users, arts, tastes, s_user[d_sess], pool_end[d_sess], rng, taste_rng)
    v_sess = np.concatenate([c_sess, d_sess])
    v_art = np.concatenate([c_art, d_art])
    v_pos = np.concatenate([c_pos, np.zeros(len(d_sess), dtype=np.int64)])
    v_from_click = np.concatenate([np.ones(len(c_sess), bool), np.zeros(len(d_sess), bool)])
    vo = np.lexsort((np.where(v_from_click, v_pos, 1_000), v_sess))
    v_sess, v_art, v_pos, v_from_click = v_sess[vo], v_art[vo], v_pos[vo], v_from_click[vo]
    n_views = np.bincount(v_sess, minlength=ns)
    nv = len(v_sess)
    dwell_mean_ms = users.dwell_minutes[s_user] * 60_000.0
    v_dwell = np.rint(dwell_mean_ms[v_sess] * (0.5 + rng.beta(2.0, 2.0, size=nv))).astype(np.int64)
    v_video = rng.random(nv) < users.video_prob[s_user[v_sess]]

    # Step 6. Timing.
    kind_idx = bot.astype(np.int64)
    scroll = rng.integers(np.asarray(SCROLL_MS)[kind_idx, 0], np.asarray(SCROLL_MS)[kind_idx, 1])
    tail = rng.integers(np.asarray(TAIL_MS)[kind_idx, 0], np.asarray(TAIL_MS)[kind_idx, 1])
    feed_end = FEED_BASE_MS + FEED_STEP_MS * feed + scroll
    dwell_sum = np.bincount(v_sess, weights=v_dwell, minlength=ns).astype(np.int64)
    duration = feed_end + dwell_sum + tail
    assert int(duration.max(initial=0)) < 3_600_000, "a session reached 60 minutes"
    cs = np.concatenate(([0], np.cumsum(v_dwell)))
    v_start = feed_end[v_sess] + cs[:-1] - np.repeat(cs[_group_starts(n_views)], n_views)
    # Keep the whole session inside its UTC day (labels count days exactly): clip the start.
    day_ms = s_day.astype(np.int64) * DAY_MS
    rel_start = np.clip(rel_start, day_ms + 1, day_ms + DAY_MS - duration - 1)
    start = start_ms0 + rel_start

    # Step 7. Conversions, at most once per user (rows in user-then-time order).
    uo = np.lexsort((rel_start, s_user))
    nl_draw = rng.random(ns) < users.newsletter_prob[s_user]
    sub_draw = rng.random(ns) < users.subscription_prob[s_user]
    nl = np.zeros(ns, bool)
    sub = np.zeros(ns, bool)
    nl_before = np.zeros(ns, bool)
    sub_before = np.zeros(ns, bool)
    nl[uo], nl_before[uo] = _once_per_user(s_user[uo], nl_draw[uo], users.newsletter_init)
    sub[uo], sub_before[uo] = _once_per_user(s_user[uo], sub_draw[uo], users.subscriber_init)
    prices = np.asarray(cfg.subscription_prices)
    revenue = prices[rng.integers(0, len(prices), size=ns)]

    # Step 8. Expected engagement (labels.engagement_score) given the user, device and feed.
    # Scroll and tail are uniform, dwell is mean * (0.5 + Beta(2,2)) with mean 1 * mean.
    exp_views = exp_clicks + MAX_DIRECT * users.direct_prob[s_user]
    exp_duration = (
        FEED_BASE_MS
        + FEED_STEP_MS * feed
        + np.asarray(SCROLL_MS)[kind_idx].sum(axis=1) / 2.0
        - 0.5
        + exp_views * dwell_mean_ms
        + np.asarray(TAIL_MS)[kind_idx].sum(axis=1) / 2.0
        - 0.5
    )
    expected = (
        2.0 * exp_views
        + 4.0 * exp_clicks
        + 5.0 * users.video_prob[s_user] * exp_views
        + 15.0 * users.newsletter_prob[s_user] * ~nl_before
        + 25.0 * users.subscription_prob[s_user] * ~sub_before
        + 0.5 * exp_duration / 60_000.0
    )

    # Step 9. Ads: one request per page (landing + each view), uniform placement.
    n_pl = len(cfg.placements)
    ad_sess = np.concatenate([np.arange(ns), v_sess])
    ad_off = np.concatenate([np.full(ns, 400, np.int64), v_start + 300])
    na = len(ad_sess)
    ad_pl = rng.integers(0, n_pl, size=na)
    ad_dev = device[ad_sess]
    ad_p = ctr[s_day[ad_sess], ad_pl, ad_dev]
    ad_p[bot[ad_sess]] = cfg.bot_ad_ctr
    ad_clicked = rng.random(na) < ad_p
    ad_window = np.concatenate([np.full(ns, 2_000, np.int64), v_dwell // 2])
    ad_click_off = ad_off + 50 + 100 + (rng.random(na) * np.maximum(ad_window - 100, 1)).astype(np.int64)
    video_off = v_start + 500 + (v_dwell * 0.3).astype(np.int64)

    # Step 10. Assemble event rows: (session, offset, kind, article, position, ad, ...).
    parts: list[dict[str, np.ndarray]] = []

    def add(sess: np.ndarray, off: np.ndarray, kind: int, **cols: np.ndarray) -> None:
        parts.append({"sess": sess, "off": off, "kind": np.full(len(sess), kind, np.int8), **cols})

    all_s = np.arange(ns)
    add(all_s, np.zeros(ns, np.int64), SESSION_START)
    add(all_s, np.full(ns, 200, np.int64), PAGE_VIEW)
    add(imp_sess, 800 + FEED_STEP_MS * imp_pos, ARTICLE_IMPRESSION, art=imp_art, pos=imp_pos, p=imp_p)
    add(v_sess[v_from_click], v_start[v_from_click], ARTICLE_CLICK, art=v_art[v_from_click], pos=v_pos[v_from_click])
    add(v_sess, v_start + 200, PAGE_VIEW)
    add(v_sess, v_start + 250, ARTICLE_VIEW, art=v_art)
    add(v_sess[v_video], video_off[v_video], VIDEO_PLAY, art=v_art[v_video])
    ad_id = np.arange(na)
    add(ad_sess, ad_off, AD_REQUEST, ad=ad_id)
    add(ad_sess, ad_off + 50, AD_IMPRESSION, ad=ad_id, pl=ad_pl, p=ad_p)
    add(ad_sess[ad_clicked], ad_click_off[ad_clicked], AD_CLICK, ad=ad_id[ad_clicked], pl=ad_pl[ad_clicked])
    add(all_s[nl], duration[nl] - 1_500, NEWSLETTER_SIGNUP)
    add(all_s[sub], duration[sub] - 800, SUBSCRIPTION, rev=revenue[sub])
    add(all_s, duration, SESSION_END, dur=duration)

    def cat(name: str, fill: float, dtype: type) -> np.ndarray:
        return np.concatenate([p[name] if name in p else np.full(len(p["sess"]), fill, dtype) for p in parts]).astype(
            dtype
        )

    e_sess = cat("sess", 0, np.int64)
    e_off = cat("off", 0, np.int64)
    e_kind = cat("kind", 0, np.int8)
    e_time = start[e_sess] + e_off
    # Order within each session (seq numbers), then globally by time.
    within = np.lexsort((e_kind, e_off, e_sess))
    seq = np.empty(len(e_sess), np.int64)
    seq[within] = _rank_in_group(np.bincount(e_sess, minlength=ns))
    order = np.lexsort((seq, e_sess, e_time))
    e_ad = cat("ad", -1, np.int64)[order]
    # request -> row index of its ad_request in the final order
    req_row = np.full(na, -1, np.int64)
    e_kind_o = e_kind[order]
    is_req = e_kind_o == AD_REQUEST
    req_row[e_ad[is_req]] = np.flatnonzero(is_req)
    events = Events(
        session=e_sess[order],
        seq=seq[order],
        time_ms=e_time[order],
        kind=e_kind_o,
        article=cat("art", -1, np.int64)[order],
        position=cat("pos", 0, np.int64)[order],
        placement=cat("pl", -1, np.int64)[order],
        request=np.where(e_ad >= 0, req_row[np.maximum(e_ad, 0)], -1),
        revenue=cat("rev", np.nan, np.float64)[order],
        duration_ms=cat("dur", -1, np.int64)[order],
        p_click=cat("p", np.nan, np.float64)[order],
    )
    sessions = Sessions(
        user=s_user,
        day=s_day,
        start_ms=start,
        device=device,
        duration_ms=duration,
        expected_engagement=expected,
        newsletter_done_before=nl_before,
        subscription_done_before=sub_before,
    )
    return sessions, events


def _direct_articles(
    cfg: SimConfig,
    users: Users,
    arts: Articles,
    tastes: Tastes,
    user: np.ndarray,
    pool_end: np.ndarray,
    rng: np.random.Generator,
    taste_rng: np.random.Generator,
) -> np.ndarray:
    """The article of each direct visit: a user seeks out what they like among what is around.

    ``direct_choices`` articles are drawn by popularity; the user picks one with probability
    proportional to exp(the article's part of their click logit) (Gumbel-max): quality, brand and
    category affinity, and taste. The first choice comes from the sessions' generator as before
    tastes existed, the rest from ``taste_rng``: the sessions' other draws are unchanged.
    """
    m = cfg.direct_choices
    first = sample_articles(cfg, arts, pool_end, rng)
    if m == 1:
        return first
    more = sample_articles(cfg, arts, np.repeat(pool_end, m - 1), taste_rng).reshape(-1, m - 1)
    cand = np.column_stack([first, more])
    u = user[:, None]
    pref = (
        cfg.quality_weight * arts.quality[cand]
        + cfg.affinity_weight
        * (users.brand_logaff[u, arts.brand[cand]] + users.category_logaff[u, arts.category[cand]])
        + cfg.taste_weight * tastes.topic_logaff[u, tastes.topic[cand]]
    )
    pick = np.argmax(pref + taste_rng.gumbel(size=cand.shape), axis=1)
    return cand[np.arange(len(cand)), pick]


def _epoch_ms(cfg: SimConfig) -> int:
    import datetime as dt

    t = dt.datetime.combine(cfg.start, dt.time(0), tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def place_timezones() -> tuple[list[str], np.ndarray]:
    """Distinct timezone names and, per place, its timezone index."""
    names: list[str] = []
    idx = []
    for _c, _city, tz, _w in PLACES:
        if tz not in names:
            names.append(tz)
        idx.append(names.index(tz))
    return names, np.array(idx, dtype=np.int64)

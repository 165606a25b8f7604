"""Users (latent traits, lifetimes) and articles (brand, category, quality, publish time).

Everything is a numpy array indexed by user or article number; no per-user Python objects, so
a population of a million users takes a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import SimConfig
from simulator.world import BRAND_CATEGORY_MIX, BRANDS, CATEGORIES, PLACES, software_table

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: dwell means are clipped here so that no session reaches 60 minutes (see sessions.py)
MAX_DWELL_MINUTES = 2.0
BOT_DWELL_MINUTES = 0.03
NEVER = np.iinfo(np.int32).max // 2


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Users:
    """Latent traits of every user; index = user number."""

    is_bot: np.ndarray  # bool
    join_day: np.ndarray  # first possible active day
    death_day: np.ndarray  # first day of permanent inactivity (NEVER for bots)
    engagement: np.ndarray  # the latent trait z ~ N(0, 1) that drives everything below
    rate: np.ndarray  # expected sessions per day (before the weekly rhythm)
    hazard: np.ndarray  # daily churn hazard
    place: np.ndarray  # index into world.PLACES (-1 = bot place)
    primary_device: np.ndarray  # index into world.DEVICE_TYPES
    os_code: np.ndarray  # (n, 3): os per device type
    browser_code: np.ndarray  # (n, 3): browser per device type
    brand_logaff: np.ndarray  # (n, n_brands) clipped log of relative affinity
    category_logaff: np.ndarray  # (n, n_categories)
    click_logit: np.ndarray
    video_prob: np.ndarray
    direct_prob: np.ndarray  # per-slot probability of a direct (non-feed) article visit
    dwell_minutes: np.ndarray  # mean reading time per article view
    newsletter_prob: np.ndarray  # per session
    subscription_prob: np.ndarray  # per session
    newsletter_init: np.ndarray  # already a newsletter member on day 0
    subscriber_init: np.ndarray  # already a subscriber on day 0

    @property
    def n(self) -> int:
        return len(self.is_bot)


def make_users(cfg: SimConfig, rng: np.random.Generator) -> Users:
    """Draw the population. Bots share the arrays but get absurd, fixed behaviour."""
    n = cfg.n_users
    is_bot = rng.random(n) < cfg.bot_share
    z = rng.standard_normal(n)
    z[is_bot] = 0.0
    initial = rng.random(n) < cfg.initial_user_share
    join_day = np.where(initial, 0, rng.integers(1, max(cfg.days, 2), size=n)).astype(np.int32)
    join_day[is_bot] = 0

    rho = cfg.activity_engagement_corr
    eps = rng.standard_normal(n)
    log_rate = np.log(cfg.activity_median_per_day) + cfg.activity_log_sd * (rho * z + np.sqrt(1.0 - rho * rho) * eps)
    rate = np.exp(log_rate)
    rate[is_bot] = cfg.bot_sessions_per_day * np.exp(0.5 * rng.standard_normal(int(is_bot.sum())))

    a, b = cfg.churn_hazard_logit
    hazard = sigmoid(a - b * z)
    hazard[is_bot] = 0.0
    # Lifetime: alive on join_day, then each new day dies with probability `hazard`.
    lifetime = rng.geometric(np.clip(hazard, 1e-12, 1.0)).astype(np.int64)
    death_day = np.minimum(join_day + lifetime, NEVER).astype(np.int32)
    death_day[is_bot] = NEVER

    weights = np.array([p[3] for p in PLACES])
    place = rng.choice(len(PLACES), size=n, p=weights / weights.sum()).astype(np.int16)
    place[is_bot] = -1

    mob, desk = cfg.mobile_first_share, cfg.desktop_first_share
    primary = rng.choice(3, size=n, p=[desk, mob, 1.0 - mob - desk]).astype(np.int8)
    primary[is_bot] = 0
    os_names, browsers, codes_by_device, sw_weights = software_table()
    os_code = np.zeros((n, 3), dtype=np.int16)
    browser_code = np.zeros((n, 3), dtype=np.int16)
    for dev in range(3):
        pick = rng.choice(len(sw_weights[dev]), size=n, p=sw_weights[dev])
        os_code[:, dev] = codes_by_device[dev][pick, 0]
        browser_code[:, dev] = codes_by_device[dev][pick, 1]
    os_code[is_bot] = len(os_names) - 1
    browser_code[is_bot] = len(browsers) - 1

    def logaff(k: int) -> np.ndarray:
        aff = rng.dirichlet(np.full(k, 0.7), size=n)
        return np.clip(np.log(aff * k + 1e-12), -2.0, 1.5)

    brand_logaff = logaff(len(BRANDS))
    category_logaff = logaff(len(CATEGORIES))

    c0, c1, cs = cfg.click_logit
    click_logit = c0 + c1 * z + cs * rng.standard_normal(n)
    v0, v1, vs = cfg.video_logit
    video_prob = sigmoid(v0 + v1 * z + vs * rng.standard_normal(n))
    d0, d1 = cfg.direct_visit_logit
    direct_prob = sigmoid(d0 + d1 * z)
    dwell = np.clip(
        cfg.dwell_minutes_base * np.exp(cfg.dwell_minutes_per_engagement * z + 0.15 * rng.standard_normal(n)),
        0.2,
        MAX_DWELL_MINUTES,
    )
    n0, n1 = cfg.newsletter_logit
    s0, s1 = cfg.subscription_logit
    newsletter_prob = sigmoid(n0 + n1 * z)
    subscription_prob = sigmoid(s0 + s1 * z)
    i0, i1 = cfg.initial_newsletter_logit
    j0, j1 = cfg.initial_subscriber_logit
    newsletter_init = (join_day == 0) & (rng.random(n) < sigmoid(i0 + i1 * z))
    subscriber_init = (join_day == 0) & (rng.random(n) < sigmoid(j0 + j1 * z))

    click_logit[is_bot] = 0.0
    video_prob[is_bot] = 0.0
    direct_prob[is_bot] = 0.0
    dwell[is_bot] = BOT_DWELL_MINUTES
    for arr in (newsletter_prob, subscription_prob):
        arr[is_bot] = 0.0
    newsletter_init[is_bot] = False
    subscriber_init[is_bot] = False
    return Users(
        is_bot=is_bot,
        join_day=join_day,
        death_day=death_day,
        engagement=z,
        rate=rate,
        hazard=hazard,
        place=place,
        primary_device=primary,
        os_code=os_code,
        browser_code=browser_code,
        brand_logaff=brand_logaff,
        category_logaff=category_logaff,
        click_logit=click_logit,
        video_prob=video_prob,
        direct_prob=direct_prob,
        dwell_minutes=dwell,
        newsletter_prob=newsletter_prob,
        subscription_prob=subscription_prob,
        newsletter_init=newsletter_init,
        subscriber_init=subscriber_init,
    )


@dataclass
class Articles:
    """Articles sorted by publish time (ms since the window start; negative = backlog)."""

    publish_ms: np.ndarray
    brand: np.ndarray
    category: np.ndarray
    quality: np.ndarray

    @property
    def n(self) -> int:
        return len(self.publish_ms)


def backlog_days(cfg: SimConfig) -> int:
    return int(np.ceil(cfg.article_max_age_hours / 24.0)) + 1


def make_articles(cfg: SimConfig, rng: np.random.Generator) -> Articles:
    """A steady flow of articles, plus a backlog so that day 0 has a full feed."""
    back = backlog_days(cfg)
    n_days = cfg.days + back
    n = cfg.articles_per_day * n_days
    day = np.repeat(np.arange(-back, cfg.days), cfg.articles_per_day)
    publish = day.astype(np.int64) * DAY_MS + rng.integers(0, DAY_MS, size=n)
    brand_w = np.array([3.0, 1.5, 1.5, 1.2, 1.0, 0.8])
    brand = rng.choice(len(BRANDS), size=n, p=brand_w / brand_w.sum())
    mix = BRAND_CATEGORY_MIX / BRAND_CATEGORY_MIX.sum(axis=1, keepdims=True)
    cum = np.cumsum(mix, axis=1)[brand]
    category = (rng.random(n)[:, None] > cum).sum(axis=1)
    category = np.minimum(category, len(CATEGORIES) - 1)
    quality = rng.standard_normal(n)
    order = np.argsort(publish, kind="stable")
    return Articles(
        publish_ms=publish[order],
        brand=brand[order].astype(np.int16),
        category=category[order].astype(np.int16),
        quality=quality[order],
    )


def sample_articles(cfg: SimConfig, arts: Articles, pool_end_ms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One article per request, drawn by popularity among those published before ``pool_end_ms``.

    Popularity is ``exp(quality_popularity * quality - age_hours / popularity_decay_hours)`` over
    articles younger than ``article_max_age_hours``. The age term factorises, so one cumulative
    sum per day serves every request of that day (rebased per day to keep ``exp`` finite).
    """
    out = np.empty(len(pool_end_ms), dtype=np.int64)
    max_age = int(cfg.article_max_age_hours * HOUR_MS)
    day_of = np.floor_divide(pool_end_ms, DAY_MS)
    order = np.argsort(day_of, kind="stable")
    days, starts = np.unique(day_of[order], return_index=True)
    bounds = np.append(starts, len(order))
    u = rng.random(len(pool_end_ms))
    for i, d in enumerate(days):
        idx = order[bounds[i] : bounds[i + 1]]
        base = int(d) * DAY_MS
        lo = int(np.searchsorted(arts.publish_ms, base - max_age, side="left"))
        hi = int(np.searchsorted(arts.publish_ms, base + DAY_MS, side="left"))
        expo = cfg.quality_popularity * arts.quality[lo:hi] + (arts.publish_ms[lo:hi] - base) / (
            cfg.popularity_decay_hours * HOUR_MS
        )
        cw = np.cumsum(np.exp(expo))
        cw0 = np.concatenate(([0.0], cw))
        end = pool_end_ms[idx]
        a = np.searchsorted(arts.publish_ms[lo:hi], end - max_age, side="left")
        b = np.searchsorted(arts.publish_ms[lo:hi], end, side="left")
        b = np.maximum(b, a + 1)  # an empty pool (cannot happen with articles_per_day >= 1) -> oldest
        target = cw0[a] + u[idx] * (cw0[b] - cw0[a])
        pick = np.searchsorted(cw, target, side="right")
        out[idx] = lo + np.clip(pick, a, b - 1)
    return out


@dataclass
class Tastes:
    """Hidden reading tastes: a topic per article, a lifelong affinity per (user, topic).

    Every user belongs to one of ``taste_clusters`` clusters; the cluster's profile over topics,
    mixed with a little of the user's own, fixes the user's affinity per topic for life: users
    who read alike keep reading alike. Topics are not in the events (brand and category do not
    reveal them), so only behaviour, that is collaborative filtering, can learn them.
    """

    cluster: np.ndarray  # per user
    topic: np.ndarray  # per article
    #: (n_users, n_topics) clipped log relative affinity, centred per user so that the mean of
    #: exp over topics is 1: tastes move clicks between topics, not the user's click rate
    topic_logaff: np.ndarray


def make_tastes(cfg: SimConfig, users: Users, n_articles: int, rng: np.random.Generator) -> Tastes:
    """Draw clusters, their topic profiles, each user's mix and each article's topic (own generator)."""
    n, t = users.n, cfg.article_topics
    profiles = rng.dirichlet(np.full(t, 0.3), size=cfg.taste_clusters)
    cluster = rng.integers(0, cfg.taste_clusters, size=n)
    own = rng.dirichlet(np.full(t, 0.3), size=n)
    share = cfg.taste_individual_share
    aff = (1.0 - share) * profiles[cluster] + share * own
    logaff = np.clip(np.log(aff * t + 1e-12), -2.5, 2.0)
    logaff -= np.log(np.exp(logaff).mean(axis=1, keepdims=True))
    logaff[users.is_bot] = 0.0
    topic = rng.integers(0, t, size=n_articles).astype(np.int16)
    return Tastes(cluster=cluster.astype(np.int16), topic=topic, topic_logaff=logaff)

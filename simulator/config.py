"""Every knob of the generative model in one frozen dataclass.

The defaults are tuned (see ``docs/simulator.md``) so that the oracle metrics sit above the
project's model targets but below perfection. A config plus its seed fully determines a dataset.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from stream.errors import ConfigError

DEFAULT_PLACEMENTS = ("top_banner", "sidebar", "in_article", "footer")
DEVICE_TYPES = ("desktop", "mobile", "tablet")


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the audience simulator. Units are in the names (``_ms``, ``_days``, ``_per_day``)."""

    # --- size and time -------------------------------------------------------------------
    seed: int = 42
    n_users: int = 20_000
    days: int = 60
    start: dt.date = dt.date(2025, 1, 6)  # a Monday; day 0 starts at 00:00 UTC

    # --- population ----------------------------------------------------------------------
    #: share of users already present on day 0; the rest join uniformly over the window
    initial_user_share: float = 0.7
    #: median human sessions per day and the log-sd of the (log-normal, heavy-tailed) rate
    activity_median_per_day: float = 0.25
    activity_log_sd: float = 1.0
    #: correlation between log activity rate and the latent engagement trait
    activity_engagement_corr: float = 0.5
    #: weekday multipliers of the session rate, Monday first (applied per UTC day)
    weekly_rhythm: tuple[float, ...] = (1.05, 1.05, 1.0, 1.0, 1.0, 0.9, 1.0)
    #: relative session-start weight per LOCAL hour 0..23
    daily_rhythm: tuple[float, ...] = (
        0.35,
        0.18,
        0.08,
        0.05,
        0.05,
        0.12,
        0.45,
        1.00,
        1.30,
        1.00,
        0.85,
        0.85,
        1.10,
        1.00,
        0.80,
        0.75,
        0.80,
        0.95,
        1.20,
        1.60,
        1.75,
        1.65,
        1.20,
        0.70,
    )
    #: share of users whose usual device is a phone / a desktop (the rest: tablet)
    mobile_first_share: float = 0.58
    desktop_first_share: float = 0.34
    #: probability a session uses the user's usual device
    device_stickiness: float = 0.85

    # --- engagement-driven behaviour -----------------------------------------------------
    #: feed length per device (article impressions per session) and its slope in engagement
    feed_length: tuple[int, int, int] = (10, 6, 8)  # desktop, mobile, tablet
    feed_length_per_engagement: float = 2.5
    #: per-session direct article visits: Binomial(3, p), logit p = a + b * engagement
    direct_visit_logit: tuple[float, float] = (-1.2, 1.2)
    #: mean reading time per article view (minutes) = base * exp(slope * engagement), clipped
    dwell_minutes_base: float = 1.0
    dwell_minutes_per_engagement: float = 0.45
    #: click logit = intercept + slope * engagement + noise_sd * N(0,1), per user
    click_logit: tuple[float, float, float] = (-2.2, 1.1, 0.6)
    #: position bias: click logit decreases by this times log(position)
    position_decay: float = 0.55
    #: click logit weight of article quality and of brand/category affinity
    quality_weight: float = 0.35
    affinity_weight: float = 0.35
    #: hidden reading tastes (population.make_tastes): every article has one of ``article_topics``
    #: topics (not in the events), every user belongs to one of ``taste_clusters`` clusters whose
    #: profile over topics, mixed with ``taste_individual_share`` of the user's own, sets the user's
    #: lifelong affinity per topic. ``taste_weight`` weighs it in the choice of direct visits (what
    #: a user seeks out), ``taste_click_weight`` in feed clicks: 0 by default, so that the click
    #: model, whose features cannot see topics, keeps its oracle (a choice, docs/simulator.md)
    article_topics: int = 24
    taste_clusters: int = 8
    taste_individual_share: float = 0.25
    taste_weight: float = 1.0
    taste_click_weight: float = 0.0
    #: a direct visit picks among this many articles drawn by popularity, by preference (1 = none)
    direct_choices: int = 8
    #: click-logit shift per device type (desktop, mobile, tablet)
    device_click_shift: tuple[float, float, float] = (0.0, 0.1, 0.05)
    #: video plays per article view: logit = intercept + slope * engagement + noise_sd * N(0,1)
    video_logit: tuple[float, float, float] = (-2.2, 0.5, 0.8)
    #: newsletter sign-up per session: logit = intercept + slope * engagement (once per user)
    newsletter_logit: tuple[float, float] = (-5.6, 1.1)
    #: subscription per session: logit = intercept + slope * engagement (once per user)
    subscription_logit: tuple[float, float] = (-7.4, 1.3)
    subscription_prices: tuple[float, ...] = (4.99, 9.99, 14.99)
    #: existing newsletter members / subscribers on day 0: logit = intercept + slope * engagement
    initial_newsletter_logit: tuple[float, float] = (-2.0, 1.0)
    initial_subscriber_logit: tuple[float, float] = (-3.5, 1.0)
    #: daily churn hazard: logit = intercept - slope * engagement (rises as engagement falls)
    churn_hazard_logit: tuple[float, float] = (-4.3, 1.1)

    # --- content -------------------------------------------------------------------------
    articles_per_day: int = 120
    #: popularity (feed weight) = exp(quality_popularity * quality - age_hours / half-life-ish)
    popularity_decay_hours: float = 18.0
    quality_popularity: float = 0.8
    #: articles older than this never appear in feeds
    article_max_age_hours: float = 96.0

    # --- ads -----------------------------------------------------------------------------
    placements: tuple[str, ...] = DEFAULT_PLACEMENTS
    #: true CTR per placement (rows, in ``placements`` order) x device (desktop, mobile, tablet)
    ad_ctr: tuple[tuple[float, float, float], ...] = (
        (0.020, 0.012, 0.015),
        (0.010, 0.004, 0.007),
        (0.024, 0.034, 0.028),
        (0.006, 0.009, 0.006),
    )
    #: multiplicative drift: ctr * exp(amplitude * sin(2 pi day / period + phase of the arm))
    ad_drift_amplitude: float = 0.3
    ad_drift_period_days: float = 28.0

    # --- a change of the world (off by default) ------------------------------------------
    #: from this day on (0 = never) the feed is redesigned: longer feeds, a weaker position bias
    #: and other device effects, so click models trained before it lose accuracy until retrained
    #: on later data; position's distribution shifts with the feed length (feature drift)
    drift_day: int = 0
    drift_feed_length: tuple[int, int, int] = (14, 10, 12)
    drift_position_decay: float = 0.1
    drift_device_click_shift: tuple[float, float, float] = (0.3, -0.3, 0.0)

    # --- bots ----------------------------------------------------------------------------
    bot_share: float = 0.001
    bot_sessions_per_day: float = 30.0
    bot_click_prob: float = 0.6
    bot_ad_ctr: float = 0.05

    # --- messy reality (all off by default) ----------------------------------------------
    late_share: float = 0.0
    late_max_ms: int = 5 * 60_000
    duplicate_share: float = 0.0
    duplicate_max_delay_ms: int = 30_000
    missing_share: float = 0.0
    malformed_share: float = 0.0

    def __post_init__(self) -> None:
        _check(self.n_users >= 1, "n_users", self.n_users, "an integer >= 1")
        _check(1 <= self.days <= 3660, "days", self.days, "an integer in 1..3660")
        _check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        for name in (
            "initial_user_share",
            "mobile_first_share",
            "desktop_first_share",
            "device_stickiness",
            "bot_share",
            "bot_click_prob",
            "bot_ad_ctr",
            "late_share",
            "duplicate_share",
            "missing_share",
            "malformed_share",
            "activity_engagement_corr",
            "taste_individual_share",
        ):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, name, v, "a number in [0, 1]")
        _check(
            self.mobile_first_share + self.desktop_first_share <= 1.0,
            "mobile_first_share",
            self.mobile_first_share,
            "mobile_first_share + desktop_first_share <= 1",
        )
        _check(len(self.weekly_rhythm) == 7, "weekly_rhythm", self.weekly_rhythm, "7 numbers")
        _check(len(self.daily_rhythm) == 24, "daily_rhythm", self.daily_rhythm, "24 numbers")
        _check(len(self.placements) >= 1, "placements", self.placements, "at least one placement")
        _check(
            len(self.ad_ctr) == len(self.placements) and all(len(r) == 3 for r in self.ad_ctr),
            "ad_ctr",
            self.ad_ctr,
            "one (desktop, mobile, tablet) triple per placement",
        )
        _check(
            self.activity_median_per_day > 0, "activity_median_per_day", self.activity_median_per_day, "a number > 0"
        )
        _check(self.articles_per_day >= 1, "articles_per_day", self.articles_per_day, "an integer >= 1")
        _check(self.article_topics >= 1, "article_topics", self.article_topics, "an integer >= 1")
        _check(self.taste_clusters >= 1, "taste_clusters", self.taste_clusters, "an integer >= 1")
        _check(self.taste_weight >= 0, "taste_weight", self.taste_weight, "a number >= 0")
        _check(self.taste_click_weight >= 0, "taste_click_weight", self.taste_click_weight, "a number >= 0")
        _check(self.direct_choices >= 1, "direct_choices", self.direct_choices, "an integer >= 1")
        _check(0 < self.late_max_ms <= 86_400_000, "late_max_ms", self.late_max_ms, "1..86400000 ms")
        _check(all(3 <= n <= 16 for n in self.feed_length), "feed_length", self.feed_length, "three integers in 3..16")
        _check(0 <= self.drift_day <= self.days, "drift_day", self.drift_day, f"a day in 0..{self.days} (0 = no drift)")
        _check(
            len(self.drift_feed_length) == 3 and all(3 <= n <= 16 for n in self.drift_feed_length),
            "drift_feed_length",
            self.drift_feed_length,
            "three integers in 3..16",
        )
        _check(
            len(self.drift_device_click_shift) == 3,
            "drift_device_click_shift",
            self.drift_device_click_shift,
            "three numbers (desktop, mobile, tablet)",
        )

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["start"] = self.start.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            if k not in known:
                raise ConfigError(f"unknown simulator setting {k!r}; valid settings are {sorted(known)}")
            kwargs[k] = _coerce(k, v, getattr(cls(), k))
        return cls(**kwargs)

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with some knobs changed (values are validated)."""
        return dataclasses.replace(self, **changes)


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"invalid simulator setting {name}={value!r}: expected {expected}")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert JSON / CLI values to the type of the default (tuples stay tuples)."""
    try:
        if isinstance(default, dt.date):
            return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
        if isinstance(default, bool):
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            seq = list(value)
            if default and isinstance(default[0], tuple):
                return tuple(tuple(float(x) for x in row) for row in seq)
            kind = type(default[0]) if default else str
            return tuple(kind(x) for x in seq)
    except (TypeError, ValueError):
        raise ConfigError(
            f"invalid simulator setting {name}={value!r}: expected {type(default).__name__} like {default!r}"
        ) from None
    return value

"""Parameters of the state and its features, in one frozen object.

Values that change what a feature *means* (half-lives, priors, caps) are part of
:meth:`StateConfig.fingerprint` and hence of every feature list's version, so a model trained
with one setting is refused by a worker running another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from stream.errors import ConfigError

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Knobs of the rolling state; the defaults are what models are trained with."""

    #: Out-of-order events up to this far behind the user's latest event are applied in order.
    lateness_ms: int = 5 * MINUTE_MS
    #: Ids of this many most recently finalised events are kept (besides the lateness buffer).
    dedup_ring: int = 16
    #: Hard cap on buffered events per user; beyond it the oldest is applied early.
    max_pending: int = 256
    #: Half-life of the decayed per-session averages.
    session_half_life_ms: int = 7 * DAY_MS
    #: A session without session_end counts as open while its last event is this recent.
    session_timeout_ms: int = 30 * MINUTE_MS
    #: Exact distinct counting up to this many values, HyperLogLog beyond.
    distinct_cap: int = 24
    #: HyperLogLog precision (2**p one-byte registers).
    hll_p: int = 6
    #: Values tracked exactly per preference field (device, os, browser, country, city, tz).
    pref_k: int = 4
    #: Brands tracked exactly for brand loyalty.
    brand_k: int = 16
    #: Beta prior of the smoothed user CTR: (clicks + prior*strength) / (impressions + strength).
    ctr_prior: float = 0.1
    ctr_strength: float = 10.0
    #: Same for article CTR.
    article_ctr_prior: float = 0.1
    article_ctr_strength: float = 20.0
    #: recency_score = exp(-days_since_last_event / recency_days).
    recency_days: float = 7.0
    #: Click rows read article popularity as of ``event_time - article_lag_ms`` floored to 5 minutes
    #: (:func:`stream.state.article.article_watermark`): the staleness contract of docs/worker.md.
    article_lag_ms: int = 5 * MINUTE_MS

    def __post_init__(self) -> None:
        if not 0 <= self.lateness_ms <= DAY_MS:
            raise ConfigError(f"lateness_ms must be within [0, {DAY_MS}], got {self.lateness_ms}")
        if not 0 <= self.article_lag_ms <= DAY_MS:
            raise ConfigError(f"article_lag_ms must be within [0, {DAY_MS}], got {self.article_lag_ms}")
        if not 4 <= self.hll_p <= 12:
            raise ConfigError(f"hll_p must be within [4, 12], got {self.hll_p}")
        for name in ("dedup_ring", "max_pending", "distinct_cap", "pref_k", "brand_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.session_half_life_ms <= 0 or self.ctr_strength <= 0 or self.article_ctr_strength <= 0:
            raise ConfigError("half-lives and prior strengths must be positive")

    def fingerprint(self) -> str:
        """Parameters that define feature values, as a canonical string (buffers excluded)."""
        d = asdict(self)
        for k in ("dedup_ring", "max_pending", "lateness_ms"):
            d.pop(k)
        return ",".join(f"{k}={d[k]!r}" for k in sorted(d))


DEFAULT_CONFIG = StateConfig()

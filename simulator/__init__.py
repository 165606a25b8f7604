"""Audience simulator: realistic session-event streams with known ground truth.

>>> from simulator import SimConfig, generate
>>> ds = generate(SimConfig(n_users=50, days=3, seed=1))
>>> ds.events["event_time"].is_monotonic_increasing
True
>>> sorted(ds.truth)
['ad_arms', 'ad_impressions', 'article_impressions', 'articles', 'sessions', 'user_daily', 'user_preferences', 'users']
"""

from simulator.config import SimConfig
from simulator.dataset import EVENT_SCHEMA, Dataset, generate

__all__ = ["EVENT_SCHEMA", "Dataset", "SimConfig", "generate"]

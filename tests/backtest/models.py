"""Small XGBoost models for backtest tests, trained on rows built with the shared feature code.

``article_blind=True`` trains the click model with its article columns missing, so no tree
splits on them: its scores do not depend on article popularity, which the end-to-end worker
reads from a GlobalTable with timing-dependent staleness (see ``docs/replay.md``). That makes
offline and end-to-end click scores comparable exactly, by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from stream.models.registry import ModelRegistry
from stream.state import (
    ARTICLE_FEATURES,
    CHURN_FEATURES,
    CLICK_FEATURES,
    ENGAGEMENT_FEATURES,
)
from stream.state.labels import session_engagement
from tests.support.models import replay_rows

FEATURES = {"churn": CHURN_FEATURES, "click": CLICK_FEATURES, "engagement": ENGAGEMENT_FEATURES}
ARTICLE_COLUMNS = [CLICK_FEATURES.index(n) for n in ARTICLE_FEATURES.names]


def train_models(
    models_dir: Path, events: list[Mapping[str, Any]], *, article_blind: bool = False, seed: int = 0, rounds: int = 30
) -> dict[str, str]:
    """Train churn / click / engagement on ``events``, register them and set ``production``."""
    rows = replay_rows(events)
    clicked = {(e["session_id"], e["article_id"]) for e in events if e["event_type"] == "article_click"}
    sessions: dict[str, list[Mapping[str, Any]]] = {}
    last_seen: dict[str, int] = {}
    for e in events:
        sessions.setdefault(e["session_id"], []).append(e)
    registry = ModelRegistry(models_dir)
    rng = np.random.default_rng(seed)
    versions = {}
    for name, fl in FEATURES.items():
        evs = [e for e, _ in rows[name]]
        x = np.vstack([r for _, r in rows[name]]).astype(np.float32)
        if name == "click":
            y = np.array([(e["session_id"], e["article_id"]) in clicked for e in evs], float)
            if article_blind:
                x[:, ARTICLE_COLUMNS] = np.nan
            params: dict[str, Any] = {"objective": "binary:logistic"}
        elif name == "engagement":
            y = np.array([session_engagement(sessions[e["session_id"]]) for e in evs])
            params = {"objective": "reg:squarederror"}
        else:  # no 30-day horizon in a small window: a proxy label (short sessions), enough to test plumbing
            for e in events:
                last_seen[e["user_id"]] = e["event_time"]
            y = (rng.random(len(x)) < 0.2).astype(float)
            params = {"objective": "binary:logistic"}
        booster = xgb.train(
            {**params, "nthread": 1, "max_depth": 4, "eta": 0.3, "seed": seed}, xgb.DMatrix(x, y), rounds
        )
        mv = registry.register(name, "xgboost", lambda p, b=booster: b.save_model(str(p)), {"features": fl.to_dict()})
        registry.set_alias(name, "production", mv.version)
        versions[name] = mv.version
    return versions

"""Small real XGBoost models for worker tests, and an independent offline scorer.

The rows are built by replaying events through ``stream.state`` directly (not through
``stream.worker.processor``), so comparing the worker's scores with :func:`offline_scores` checks the
worker's plumbing (state tables, batching, ordering) against the definitions themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from stream.models.registry import ModelRegistry
from stream.monitoring.profile import METADATA_KEY, build_profile
from stream.state import (
    CHURN_FEATURES,
    CLICK_FEATURES,
    ENGAGEMENT_FEATURES,
    ArticleState,
    Outcome,
    UserState,
    apply_user,
    click_features,
    engagement_features,
    new_article_state,
    new_user_state,
    update_article,
    user_features,
)

FEATURES = {"churn": CHURN_FEATURES, "click": CLICK_FEATURES, "engagement": ENGAGEMENT_FEATURES}


Rows = dict[str, list[tuple[Mapping[str, Any], np.ndarray]]]


def replay_rows(events: Iterable[Mapping[str, Any]]) -> Rows:
    """(event, row) per model, in delivery order, with exact article state (no staleness)."""
    users: dict[str, UserState] = {}
    articles: dict[str, ArticleState] = {}
    rows: Rows = {"churn": [], "click": [], "engagement": []}
    for ev in events:
        st = users.setdefault(ev["user_id"], new_user_state())
        kind = ev["event_type"]
        if kind == "article_impression":
            art = articles.get(ev["article_id"]) or new_article_state()
            rows["click"].append((ev, click_features(st, art, ev)))
        elif kind == "session_start":
            rows["engagement"].append((ev, engagement_features(st, ev)))
        outcome = apply_user(st, ev)
        if kind == "session_end":
            rows["churn"].append((ev, user_features(st, ev["event_time"])))
        if kind in ("article_impression", "article_click", "article_view") and outcome is Outcome.APPLIED:
            articles[ev["article_id"]] = update_article(articles.get(ev["article_id"]) or new_article_state(), ev)
    return rows


def train_and_register(
    models_dir: Path,
    events: list[Mapping[str, Any]],
    seed: int = 0,
    rounds: int = 20,
    alias: str = "production",
    *,
    profile: bool = False,
) -> dict[str, str]:
    """Train churn/click/engagement boosters on rows from ``events`` and point ``alias`` at them.

    With ``profile``, each version stores a reference profile of its training rows and their
    scores (what batch training stores for drift monitoring: stream/monitoring/profile.py).
    """
    rows = replay_rows(events)
    clicked = {(e["session_id"], e["article_id"]) for e in events if e["event_type"] == "article_click"}
    rng = np.random.default_rng(seed)
    registry = ModelRegistry(models_dir)
    versions = {}
    for name, fl in FEATURES.items():
        x = np.vstack([r for _, r in rows[name]]).astype(np.float32)
        if name == "click":
            y = np.array([(e["session_id"], e["article_id"]) in clicked for e, _ in rows[name]], float)
            params = {"objective": "binary:logistic"}
        elif name == "churn":
            y = (rng.random(len(x)) < 0.3).astype(float)
            params = {"objective": "binary:logistic"}
        else:
            y = np.nan_to_num(x[:, 0]) + rng.normal(size=len(x))
            params = {"objective": "reg:squarederror"}
        booster = xgb.train({**params, "nthread": 1, "max_depth": 4, "seed": seed}, xgb.DMatrix(x, y), rounds)
        meta: dict[str, Any] = {"features": fl.to_dict()}
        if profile:
            meta[METADATA_KEY] = build_profile(fl.names, x, booster.predict(xgb.DMatrix(x))).to_dict()
        mv = registry.register(name, "xgboost", lambda p, b=booster: b.save_model(str(p)), meta)
        registry.set_alias(name, alias, mv.version)
        versions[name] = mv.version
    return versions


def offline_scores(
    models_dir: Path, events: list[Mapping[str, Any]], alias: str = "production"
) -> dict[str, dict[str, float]]:
    """model -> event_id -> score of the ``alias`` version, scoring each row with ``Booster.predict`` on a DMatrix."""
    registry = ModelRegistry(models_dir)
    out: dict[str, dict[str, float]] = {}
    for name, rows in replay_rows(events).items():
        mv = registry.resolve(name, alias)
        booster = xgb.Booster()
        booster.load_model(str(mv.model_file))
        x = np.vstack([r for _, r in rows]).astype(np.float32)
        scores = booster.predict(xgb.DMatrix(x))
        out[name] = {e["event_id"]: float(s) for (e, _), s in zip(rows, scores, strict=True)}
    return out

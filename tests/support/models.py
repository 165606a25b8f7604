"""Small real XGBoost models for worker tests, and an independent offline scorer.

The rows are built by replaying events through ``stream.state`` directly (not through
``stream.worker.processor``), so comparing the worker's scores with :func:`offline_scores` checks the
worker's plumbing (state tables, batching, ordering) against the definitions themselves.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.cluster import KMeans
from sklearn.decomposition import NMF, PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from stream.models.registry import ModelRegistry
from stream.monitoring.profile import METADATA_KEY, build_profile
from stream.state import (
    CHURN_FEATURES,
    CLICK_FEATURES,
    CONVERSION_FEATURES,
    ENGAGEMENT_FEATURES,
    USER_FEATURES,
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


#: the user feature columns the test segmentation reads (a part of batch_training.segmentation's)
SEGMENT_COLUMNS = [
    "total_sessions",
    "avg_session_minutes",
    "avg_events_per_session",
    "n_article_view_30d",
    "ctr_lifetime",
    "device_mobile",
    "days_since_last_event",
]


@dataclass(frozen=True)
class Segmenter:
    """A segmentation fitted with scikit-learn as batch training fits it, to assign segments offline."""

    median: pd.Series
    scaler: StandardScaler
    pca: PCA
    km: KMeans
    names: dict[int, str]

    def assign(self, rows: np.ndarray) -> np.ndarray:
        """The segment of each user row (:data:`USER_FEATURES` order), by scikit-learn."""
        frame = pd.DataFrame(np.asarray(rows, dtype=np.float64), columns=list(USER_FEATURES.names))[SEGMENT_COLUMNS]
        x = np.log1p(np.clip(frame.fillna(self.median).fillna(0.0).to_numpy(), 0, None))
        return np.asarray(self.km.predict(self.pca.transform(self.scaler.transform(x))))


def fit_segmentation(
    frame: pd.DataFrame, k: int, seed: int, names: Mapping[int, str]
) -> tuple[dict[str, Any], StandardScaler, PCA, KMeans, pd.Series]:
    """batch_training/segmentation.py's pipeline fitted with scikit-learn on ``frame``'s columns: the
    registry parameters it stands for, and the fitted scaler, PCA, K-Means and fill medians."""
    median = frame.median()
    xs = np.log1p(np.clip(frame.fillna(median).fillna(0.0).to_numpy(), 0, None))
    scaler = StandardScaler().fit(xs)
    pca = PCA(n_components=0.9, random_state=seed).fit(scaler.transform(xs))
    km = KMeans(k, n_init=4, random_state=seed).fit(pca.transform(scaler.transform(xs)))
    params = {
        "columns": list(frame.columns),
        "transform": "log1p(clip(x, 0))",
        "fill": median.to_dict(),
        "scaler_mean": scaler.mean_.tolist(),
        "scaler_scale": scaler.scale_.tolist(),
        "pca_components": pca.components_.tolist(),
        "pca_mean": pca.mean_.tolist(),
        "centroids": km.cluster_centers_.tolist(),
        "names": {str(i): n for i, n in names.items()},
    }
    return params, scaler, pca, km, median


def register_online_models(
    models_dir: Path,
    events: list[Mapping[str, Any]],
    seed: int = 0,
    *,
    conversion: bool = True,
    segmentation: bool = True,
    k: int = 4,
) -> tuple[dict[str, str], Segmenter | None]:
    """A LightGBM conversion model and a segmentation, on the user rows at each session_end, in production.

    The segmentation is fitted with scikit-learn and registered as batch training registers it
    (JSON parameters, the user feature list); the returned :class:`Segmenter` scores rows with
    the fitted scikit-learn objects. Returns the versions registered and the segmenter.
    """
    x = np.vstack([r for _, r in replay_rows(events)["churn"]]).astype(np.float32)
    rng = np.random.default_rng(seed)
    registry = ModelRegistry(models_dir)
    versions: dict[str, str] = {}
    segmenter = None
    if conversion:
        y = (np.nan_to_num(x[:, USER_FEATURES.index("total_events")]) + rng.normal(0, 5, len(x)) > 20).astype(int)
        params = {"objective": "binary", "num_threads": 1, "seed": seed, "deterministic": True, "verbose": -1}
        booster = lgb.train({**params, "num_leaves": 8, "min_data_in_leaf": 5}, lgb.Dataset(x, y), 15)
        mv = registry.register(
            "conversion",
            "lightgbm",
            lambda p: booster.save_model(str(p)),
            {"features": CONVERSION_FEATURES.to_dict()},
        )
        registry.set_alias("conversion", "production", mv.version)
        versions["conversion"] = mv.version
    if segmentation:
        m = pd.DataFrame(x.astype(np.float64), columns=list(USER_FEATURES.names))[SEGMENT_COLUMNS]
        names = {i: f"test segment {i}" for i in range(k)}
        doc, scaler, pca, km, median = fit_segmentation(m, k, seed, names)
        mv = registry.register(
            "segmentation", "json", lambda p: p.write_text(json.dumps(doc)), {"features": USER_FEATURES.to_dict()}
        )
        registry.set_alias("segmentation", "production", mv.version)
        versions["segmentation"] = mv.version
        segmenter = Segmenter(median, scaler, pca, km, names)
    return versions, segmenter


def offline_online_scores(
    models_dir: Path, events: list[Mapping[str, Any]], segmenter: Segmenter | None
) -> dict[str, dict[str, float]]:
    """conversion / segment -> event_id -> score at each session_end: LightGBM's own predict on the
    rows rebuilt from ``stream.state``, and the segmenter's scikit-learn assignment of the same rows."""
    rows = replay_rows(events)["churn"]
    x = np.vstack([r for _, r in rows]).astype(np.float32)  # the worker scores float32 rows
    ids = [e["event_id"] for e, _ in rows]
    out: dict[str, dict[str, float]] = {}
    registry = ModelRegistry(models_dir)
    if "production" in registry.aliases("conversion"):
        booster = lgb.Booster(model_file=str(registry.resolve("conversion").model_file))
        out["conversion"] = dict(zip(ids, map(float, booster.predict(x.astype(np.float64))), strict=True))
    if segmenter is not None:
        out["segment"] = dict(zip(ids, map(float, segmenter.assign(x)), strict=True))
    return out


def register_recommendation(
    models_dir: Path,
    events: Iterable[Mapping[str, Any]],
    seed: int = 0,
    components: int = 16,
    alias: str = "production",
) -> str:
    """A ``recommendation`` model of the events' reads (seeded NMF item factors, as batch training fits them),
    registered and pointed ``alias`` at; returns its version."""
    reads = [
        (e["user_id"], e["article_id"])
        for e in events
        if e.get("article_id") and e["event_type"] in ("article_view", "article_click", "video_play")
    ]
    users = sorted({u for u, _ in reads})
    items = sorted({a for _, a in reads})
    u_of, a_of = {u: i for i, u in enumerate(users)}, {a: i for i, a in enumerate(items)}
    r = np.zeros((len(users), len(items)))
    for u, a in reads:
        r[u_of[u], a_of[a]] = np.log(2.0)
    n = max(1, min(components, len(users) - 1, len(items) - 1))
    with warnings.catch_warnings():  # not converged in 150 iterations: as batch training, good enough here
        warnings.simplefilter("ignore", ConvergenceWarning)
        nmf = NMF(n_components=n, init="nndsvda", max_iter=150, random_state=seed).fit(r)
    params = {
        "weights": {"cf": 0.5, "content": 0.25, "popularity": 0.25},
        "item_ids": items,
        "item_factors": nmf.components_.T.round(6).tolist(),
        "interaction": float(np.log(2.0)),
        "popularity": {"window_hours": 12.0},
        "content_vocabulary": [],
    }
    reg = ModelRegistry(models_dir)
    mv = reg.register("recommendation", "json", lambda p: p.write_text(json.dumps(params)), {"metrics": {}})
    reg.set_alias("recommendation", alias, mv.version, reason="test")
    return mv.version

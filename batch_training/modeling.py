"""Shared model-training pieces: time splits, a bounded seeded search with time-series CV,
metrics at a stated operating point, plots, latency and registration with full metadata."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from stream.models.registry import ModelKind, ModelRegistry, ModelVersion
from stream.state import FeatureList


@dataclass
class Split:
    """Row positions of a time-based train / validation / test split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    bounds: dict[str, int] = field(default_factory=dict)


def time_split(times: np.ndarray | pd.Series, fractions: tuple[float, float] = (0.70, 0.85)) -> Split:
    """Train = earliest 70 % of the time range's rows, validation the next 15 %, test the latest.

    Splits on distinct time values (cut-offs share a time), so no time lies on two sides.
    """
    t = np.asarray(times, dtype=np.int64)
    u = np.unique(t)
    a, b = np.quantile(t, fractions[0], method="lower"), np.quantile(t, fractions[1], method="lower")
    if not (u[0] <= a < b < u[-1]):  # few distinct times (cut-offs): split on the distinct values
        k = len(u)
        ia = min(max(0, round(k * fractions[0]) - 1), max(0, k - 3))
        ib = min(max(ia + 1, round(k * fractions[1]) - 1), k - 2) if k >= 3 else ia
        a, b = u[ia], u[ib]
    train = np.flatnonzero(t <= a)
    val = np.flatnonzero((t > a) & (t <= b))
    test = np.flatnonzero(t > b)
    return Split(
        train, val, test, {"train_end_ms": int(a), "val_end_ms": int(b), "min_ms": int(t.min()), "max_ms": int(t.max())}
    )


def cap_rows(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` positions (seeded uniform sample, order kept)."""
    if len(idx) <= n:
        return idx
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, n, replace=False))


# --- metrics ---------------------------------------------------------------------------------------


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold with the best F1 on (validation) data: the operating point used for P/R."""
    grid = np.unique(np.quantile(p, np.linspace(0.01, 0.99, 197)))
    best, thr = -1.0, 0.5
    for g in grid:
        pred = p >= g
        tp = float((pred & (y == 1)).sum())
        fp = float((pred & (y == 0)).sum())
        fn = float((~pred & (y == 1)).sum())
        f1 = 2 * tp / max(2 * tp + fp + fn, 1.0)
        if f1 > best:
            best, thr = f1, float(g)
    return thr


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.asarray(y, dtype=int)
    pred = (np.asarray(p) >= threshold).astype(int)
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return {
        "auc": auc,
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "threshold": float(threshold),
        "positive_rate": float(y.mean()),
        "rows": len(y),
    }


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "r2": float(r2_score(y, p)),
        "rmse": float(np.sqrt(mean_squared_error(y, p))),
        "mae": float(mean_absolute_error(y, p)),
        "rows": len(y),
    }


# --- XGBoost with a bounded search -----------------------------------------------------------------

XGB_SPACE: dict[str, Sequence[Any]] = {
    "max_depth": (4, 5, 6, 8),
    "learning_rate": (0.05, 0.08, 0.12),
    "min_child_weight": (1, 5, 20),
    "subsample": (0.8, 1.0),
    "colsample_bytree": (0.6, 0.8, 1.0),
    "reg_lambda": (1.0, 5.0),
}


#: the search of a warm start (``fit_xgb(base=...)``): shallow, slow trees that correct the base where
#: the new rows differ (a retrain after drift keeps what did not change: users, articles, affinities)
WARM_SPACE: dict[str, Sequence[Any]] = {
    "max_depth": (3, 2),
    "learning_rate": (0.1, 0.05),
    "min_child_weight": (5, 20),
    "subsample": (0.8, 1.0),
    "colsample_bytree": (0.8, 1.0),
    "reg_lambda": (1.0, 5.0),
}


def sample_params(space: Mapping[str, Sequence[Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct seeded draws from a grid (the first is the grid's middle, a safe default)."""
    rng = np.random.default_rng(seed)
    out = [{k: v[len(v) // 2] for k, v in space.items()}]
    while len(out) < n:
        cand = {k: v[int(rng.integers(len(v)))] for k, v in space.items()}
        if cand not in out:
            out.append(cand)
    return out


@dataclass
class Fitted:
    model: Any
    params: dict[str, Any]
    val_score: float
    cv_scores: list[float]
    search: list[dict[str, Any]]
    seconds: float
    best_iteration: int
    #: validation predictions of the best candidate (trained on the training part only)
    val_pred: np.ndarray | None = None


def fit_xgb(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_va: np.ndarray,
    y_va: np.ndarray,
    *,
    objective: str,
    n_iter: int,
    cv_folds: int,
    n_estimators: int,
    seed: int,
    extra: dict[str, Any] | None = None,
    space: dict[str, Sequence[Any]] | None = None,
    base: Any = None,
) -> Fitted:
    """Seeded random search (``n_iter`` candidates, early stopping on validation), then time-series
    CV of the best candidate on the training part, then the final model on train + validation.

    ``base`` (an XGBoost Booster): a warm start, every candidate adds its trees to a copy of it and
    searches :data:`WARM_SPACE` (small corrections) unless ``space`` says otherwise; ``n_estimators``
    counts the added trees only.
    """
    import xgboost as xgb

    t0 = time.perf_counter()
    base_rounds = int(base.num_boosted_rounds()) if base is not None else 0
    grid = {**(XGB_SPACE if base is None else WARM_SPACE), **(space or {})}
    binary = objective == "binary:logistic"
    score = _auc_score if binary else _r2_score
    fixed = {
        "objective": objective,
        "tree_method": "hist",
        "n_jobs": 2,
        "random_state": seed,
        "eval_metric": "auc" if binary else "rmse",
        "early_stopping_rounds": 30,
        **(extra or {}),
    }
    trials = []
    best: tuple[float, dict[str, Any], int] | None = None
    best_pred: np.ndarray | None = None
    for params in sample_params(grid, n_iter, seed):
        m = xgb.XGBRegressor if not binary else xgb.XGBClassifier
        model = m(n_estimators=n_estimators, **fixed, **params)
        model.fit(x_tr, y_tr, eval_set=[(x_va, y_va)], verbose=False, xgb_model=base)
        p_va = _predict(model, x_va, binary)
        s = score(y_va, p_va)
        # best_iteration counts the base's rounds too: keep the number of added trees
        added = int(model.best_iteration) + 1 - base_rounds
        trials.append({**params, "val_score": s, "best_iteration": added - 1})
        if best is None or s > best[0]:
            best = (s, params, added - 1)
            best_pred = p_va
    assert best is not None
    val_score, params, best_it = best
    n_final = max(20, int((best_it + 1) * 1.1)) if base is None else max(1, int((best_it + 1) * 1.1))
    cv = _time_series_cv(x_tr, y_tr, binary, {**fixed, **params, "n_estimators": n_final}, cv_folds, base)
    final_cls = xgb.XGBClassifier if binary else xgb.XGBRegressor
    final_params = {k: v for k, v in {**fixed, **params}.items() if k != "early_stopping_rounds"}
    final = final_cls(n_estimators=n_final, **final_params)
    final.fit(np.vstack([x_tr, x_va]), np.concatenate([y_tr, y_va]), verbose=False, xgb_model=base)
    return Fitted(
        final, {**params, "n_estimators": n_final}, val_score, cv, trials, time.perf_counter() - t0, best_it, best_pred
    )


def _time_series_cv(
    x: np.ndarray, y: np.ndarray, binary: bool, params: dict[str, Any], folds: int, base: Any = None
) -> list[float]:
    """Expanding-window CV: rows are in time order, each fold validates on the next block (``base``: warm
    start, as in :func:`fit_xgb`)."""
    import xgboost as xgb
    from sklearn.model_selection import TimeSeriesSplit

    if folds < 2:
        return []
    p = {k: v for k, v in params.items() if k != "early_stopping_rounds"}
    out = []
    for tr, va in TimeSeriesSplit(n_splits=folds).split(x):
        m = xgb.XGBClassifier(**p) if binary else xgb.XGBRegressor(**p)
        m.fit(x[tr], y[tr], verbose=False, xgb_model=base)
        s = (_auc_score if binary else _r2_score)(y[va], _predict(m, x[va], binary))
        out.append(float(s))
    return out


def _predict(model: Any, x: np.ndarray, binary: bool) -> np.ndarray:
    return np.asarray(model.predict_proba(x)[:, 1] if binary else model.predict(x))


def _auc_score(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < np.sum(y) < len(y) else float("nan")


def _r2_score(y: np.ndarray, p: np.ndarray) -> float:
    return float(r2_score(y, p))


# --- latency ---------------------------------------------------------------------------------------


def latency(
    predict: Callable[[np.ndarray], Any], x: np.ndarray, repeats: int = 200, batch: int = 1000
) -> dict[str, float]:
    """Median single-row latency and per-row latency of ``batch``-row calls, in microseconds."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows = x[: max(1, min(len(x), repeats))]
    times = []
    for i in range(len(rows)):
        t = time.perf_counter()
        predict(rows[i : i + 1])
        times.append(time.perf_counter() - t)
    xb = x[:batch] if len(x) >= batch else np.resize(x, (batch, x.shape[1]))
    predict(xb)
    t = time.perf_counter()
    for _ in range(5):
        predict(xb)
    per_row = (time.perf_counter() - t) / (5 * len(xb))
    return {"single_row_us": float(np.median(times) * 1e6), "batched_per_row_us": per_row * 1e6, "batch_size": len(xb)}


# --- plots -----------------------------------------------------------------------------------------


def plot_roc(y: np.ndarray, curves: dict[str, np.ndarray], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, p in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_importance(names: Sequence[str], values: np.ndarray, path: Path, title: str, top: int = 20) -> None:
    order = np.argsort(values)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(order) + 1))
    ax.barh([names[i] for i in order], values[order])
    ax.set(title=title, xlabel="gain share")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_regression(y: np.ndarray, p: np.ndarray, path_scatter: Path, path_resid: Path, title: str) -> None:
    rng = np.random.default_rng(0)
    k = rng.choice(len(y), min(len(y), 5000), replace=False)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y[k], p[k], s=3, alpha=0.3)
    hi = float(max(y.max(), p.max()))
    ax.plot([0, hi], [0, hi], "r--", lw=0.8)
    ax.set(xlabel="actual", ylabel="predicted", title=f"{title}: prediction vs actual")
    fig.tight_layout()
    fig.savefig(path_scatter, dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(p[k], (y - p)[k], s=3, alpha=0.3)
    ax.axhline(0, color="r", lw=0.8)
    ax.set(xlabel="predicted", ylabel="residual (actual - predicted)", title=f"{title}: residuals")
    fig.tight_layout()
    fig.savefig(path_resid, dpi=90)
    plt.close(fig)


# --- registration ----------------------------------------------------------------------------------


def data_fingerprint(df: pd.DataFrame, columns: Sequence[str]) -> str:
    """sha256 over row count and a content hash of the given columns (stable across runs)."""
    h = hashlib.sha256(str(len(df)).encode())
    h.update(pd.util.hash_pandas_object(df[list(columns)], index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    import lightgbm
    import sklearn
    import xgboost

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "xgboost": xgboost.__version__,
        "lightgbm": lightgbm.__version__,
    }


def register(
    registry: ModelRegistry,
    name: str,
    kind: ModelKind,
    write: Callable[[Path], None],
    *,
    features: FeatureList | None,
    metrics: dict[str, Any],
    window: dict[str, int],
    rows: dict[str, int],
    fingerprint: str,
    extra: dict[str, Any] | None = None,
) -> ModelVersion:
    meta: dict[str, Any] = {
        "metrics": metrics,
        "training_window": window,
        "rows": rows,
        "data_fingerprint": fingerprint,
        "trained_at": int(time.time() * 1000),
        "libraries": library_versions(),
        **(extra or {}),
    }
    if features is not None:
        meta["features"] = features.to_dict()
        meta["feature_version"] = features.version
    return registry.register(name, kind, write, meta)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_default))


def _default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)

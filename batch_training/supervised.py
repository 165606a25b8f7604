"""Steps 4a: churn (XGBoost), conversion (LightGBM), click (XGBoost), engagement (XGBoost regression).

Each: time-based train/validation/test split, seeded bounded search with early stopping on
validation, expanding-window CV, class imbalance handled by a searched ``scale_pos_weight`` plus
an operating threshold chosen on validation (best F1), metrics and plots on the test split,
oracle ratio when simulator truth exists, a linear baseline, latency, and registration.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from batch_training.context import Context, Skipped
from batch_training.modeling import (
    Fitted,
    cap_rows,
    classification_metrics,
    data_fingerprint,
    fit_xgb,
    latency,
    plot_importance,
    plot_regression,
    plot_roc,
    register,
    regression_metrics,
    sample_params,
    write_json,
)
from batch_training.oracle import oracle_predictions
from batch_training.specs import SPECS, ModelSpec
from stream.models.registry import load_booster
from stream.monitoring.profile import METADATA_KEY, build_profile

LGB_SPACE: dict[str, tuple[Any, ...]] = {
    "num_leaves": (15, 31, 63),
    "learning_rate": (0.03, 0.05, 0.1),
    "min_child_samples": (20, 50, 100),
    "feature_fraction": (0.6, 0.8, 1.0),
    "bagging_fraction": (0.8, 1.0),
    "lambda_l2": (0.0, 5.0),
}


def load_table(ctx: Context, table: str) -> pd.DataFrame:
    ctx.need_features()
    return pd.read_parquet(ctx.data_dir / f"{table}.parquet")


MIN_ROWS = 200
#: a warm start's search: candidates and added trees at most
WARM_SEARCH_ITER = 3
WARM_MAX_TREES = 200


def spec_data(ctx: Context, spec: ModelSpec) -> pd.DataFrame:
    df = spec.rows(load_table(ctx, spec.table))
    if len(df) < MIN_ROWS:
        raise Skipped(f"only {len(df)} labelled rows (needs {MIN_ROWS}): too few users or too short a history")
    return df


def check_label(spec: ModelSpec, y: np.ndarray, parts: dict[str, np.ndarray]) -> None:
    """Skip a model whose label cannot be learnt or scored: one class (binary), or a constant value.

    ``parts`` are the row positions of the splits, each of which needs both classes (AUC, thresholds).
    """
    if spec.task != "binary":
        if float(np.nanstd(y)) == 0.0:
            raise Skipped(f"the label {spec.label!r} is constant ({y[0]:g} in all {len(y)} rows)")
        return
    classes = np.unique(y)
    if len(classes) < 2:
        raise Skipped(f"the label {spec.label!r} has a single class ({int(classes[0])} in all {len(y)} rows)")
    for part, idx in parts.items():
        if len(np.unique(y[idx])) < 2:
            raise Skipped(
                f"the label {spec.label!r} has a single class in the {part} split "
                f"({len(idx)} rows, all {int(y[idx][0])})"
            )


def code_columns(names: tuple[str, ...]) -> list[int]:
    """Columns usable by linear models / MLPs: hashed codes carry no order, leave them out."""
    return [i for i, n in enumerate(names) if not n.endswith("_code")]


def linear_baseline(
    task: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, cols: list[int], seed: int
) -> np.ndarray:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    est = LogisticRegression(max_iter=400, C=0.5, random_state=seed) if task == "binary" else Ridge(alpha=1.0)
    pipe = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), est)
    pipe.fit(x_tr[:, cols], y_tr)
    return np.asarray(pipe.predict_proba(x_te[:, cols])[:, 1] if task == "binary" else pipe.predict(x_te[:, cols]))


def fit_lgb(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_va: np.ndarray,
    y_va: np.ndarray,
    *,
    n_iter: int,
    cv_folds: int,
    n_estimators: int,
    seed: int,
    pos_weight: float,
) -> Fitted:
    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import TimeSeriesSplit

    t0 = time.perf_counter()
    space = {**LGB_SPACE, "scale_pos_weight": (1.0, float(pos_weight))}
    base = {
        "objective": "binary",
        "metric": "auc",
        "verbosity": -1,
        "num_threads": 2,
        "seed": seed,
        "bagging_freq": 1,
        "deterministic": True,
    }
    dtr = lgb.Dataset(x_tr, y_tr, free_raw_data=False, params={"feature_pre_filter": False})
    dva = lgb.Dataset(x_va, y_va, reference=dtr)
    best: tuple[float, dict[str, Any], int] | None = None
    best_pred = None
    trials = []
    for params in sample_params(space, n_iter, seed):
        b = lgb.train(
            {**base, **params}, dtr, n_estimators, valid_sets=[dva], callbacks=[lgb.early_stopping(30, verbose=False)]
        )
        p_va = np.asarray(b.predict(x_va, num_iteration=b.best_iteration))
        s = float(roc_auc_score(y_va, p_va))
        trials.append({**params, "val_score": s, "best_iteration": int(b.best_iteration)})
        if best is None or s > best[0]:
            best = (s, params, int(b.best_iteration))
            best_pred = p_va
    assert best is not None
    val_score, params, best_it = best
    n_final = max(20, int(best_it * 1.1))
    cv = []
    if cv_folds >= 2:
        for tr, va in TimeSeriesSplit(n_splits=cv_folds).split(x_tr):
            b = lgb.train({**base, **params}, lgb.Dataset(x_tr[tr], y_tr[tr]), n_final)
            yv = y_tr[va]
            if 0 < yv.sum() < len(yv):
                cv.append(float(roc_auc_score(yv, b.predict(x_tr[va]))))
    final = lgb.train({**base, **params}, lgb.Dataset(np.vstack([x_tr, x_va]), np.concatenate([y_tr, y_va])), n_final)
    return Fitted(
        final, {**params, "n_estimators": n_final}, val_score, cv, trials, time.perf_counter() - t0, best_it, best_pred
    )


def predictor(spec: ModelSpec, model: Any) -> Any:
    """x -> prediction, exactly as the worker calls it (XGBoost ``inplace_predict``)."""
    if spec.library == "lightgbm":
        return lambda x: model.predict(x)
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    return lambda x: booster.inplace_predict(x)


def score(spec: ModelSpec, y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    return classification_metrics(y, p, threshold) if spec.task == "binary" else regression_metrics(y, p)


def train_model(ctx: Context, name: str, warm_start: Any = None) -> dict[str, Any]:
    """Train, evaluate and register one supervised model; returns (and writes) its result.

    ``warm_start``: a registered XGBoost model version of the same features to continue boosting
    from (``retrain``: the champion), searched in ``modeling.WARM_SPACE``; None trains from scratch.
    """
    spec = SPECS[name]
    prof = ctx.profile
    df = spec_data(ctx, spec)
    x, y = spec.xy(df)
    sp = spec.split(df)
    if min(len(sp.train), len(sp.val), len(sp.test)) == 0:
        raise Skipped("the data spans too little time for a train/validation/test split")
    tr = cap_rows(sp.train, prof.max_train_rows, prof.seed)
    va = cap_rows(sp.val, prof.max_train_rows // 3, prof.seed)
    te = sp.test
    check_label(spec, y, {"training": tr, "validation": va, "test": te})
    t0 = time.perf_counter()
    if spec.library == "lightgbm":
        pos = max(float(y[tr].mean()), 1e-6)
        fitted = fit_lgb(
            x[tr],
            y[tr],
            x[va],
            y[va],
            n_iter=prof.search_iter,
            cv_folds=prof.cv_folds,
            n_estimators=prof.n_estimators * 2,
            seed=prof.seed,
            pos_weight=((1 - pos) / pos) ** 0.5,
        )
    else:
        space: dict[str, Any] = {}
        base = None
        if warm_start is not None:
            base = load_booster(warm_start, nthread=2)
            # the added trees weigh classes as the base's did
            if spec.task == "binary":
                space["scale_pos_weight"] = (float(warm_start.metadata.get("params", {}).get("scale_pos_weight", 1.0)),)
        elif spec.task == "binary":
            pos = max(float(y[tr].mean()), 1e-6)
            space["scale_pos_weight"] = (1.0, round(((1 - pos) / pos) ** 0.5, 3))
        fitted = fit_xgb(
            x[tr],
            y[tr],
            x[va],
            y[va],
            objective="binary:logistic" if spec.task == "binary" else "reg:squarederror",
            # a warm start searches a small space of small corrections: fewer candidates and trees, so
            # that a retrain after drift is ready while the drift is news
            n_iter=prof.search_iter if base is None else min(prof.search_iter, WARM_SEARCH_ITER),
            cv_folds=prof.cv_folds,
            n_estimators=prof.n_estimators if base is None else min(prof.n_estimators, WARM_MAX_TREES),
            seed=prof.seed,
            space=space,
            base=base,
        )
    train_seconds = time.perf_counter() - t0
    pred = predictor(spec, fitted.model)
    # Operating threshold: best F1 on validation predictions of the best candidate, which was
    # trained on the training part only (the final model also saw the validation rows).
    p_va = fitted.val_pred if fitted.val_pred is not None else np.asarray(pred(x[va]))
    threshold = _threshold(spec, y[va], p_va)
    p_te = np.asarray(pred(x[te]))
    metrics = score(spec, y[te], p_te, threshold)
    cols = code_columns(spec.features.names)
    base_tr = cap_rows(np.concatenate([tr, va]), 60_000, prof.seed)
    p_base = linear_baseline(spec.task, x[base_tr], y[base_tr], x[te], cols, prof.seed)
    baseline = score(spec, y[te], p_base, _threshold(spec, y[te], p_base) if spec.task == "binary" else 0.5)
    result: dict[str, Any] = {
        "model": name,
        "library": spec.library,
        "task": spec.task,
        "metrics": metrics,
        "validation_score": fitted.val_score,
        "cv_scores": fitted.cv_scores,
        "params": fitted.params,
        "search": fitted.search,
        "threshold": threshold,
        "operating_point": "threshold maximising F1 on the validation split" if spec.task == "binary" else None,
        "baselines": {"linear": baseline},
        "train_seconds": train_seconds,
        "warm_start": None if warm_start is None else {"from_version": warm_start.version},
        "rows": {"train": len(tr), "validation": len(va), "test": len(te), "available": len(df)},
        "window": sp.bounds,
        "latency": latency(pred, x[te]),
    }
    result["oracle"] = _oracle(ctx, spec, df.iloc[te], y[te], p_te, threshold)
    out = ctx.reports_dir / name
    out.mkdir(exist_ok=True)
    plots = _plots(spec, fitted.model, y[te], p_te, {"linear baseline": p_base}, out)
    result["plots"] = [str(p) for p in plots]
    profile = reference_profile(spec, x[te], p_te)
    mv = register(
        ctx.registry,
        name,
        "lightgbm" if spec.library == "lightgbm" else "xgboost",
        lambda path: _save(spec, fitted.model, path),
        features=spec.features,
        metrics={**metrics, "holdout": "test split"},
        window=sp.bounds,
        rows=result["rows"],
        fingerprint=data_fingerprint(df, [*spec.id_cols, spec.time_col, spec.label]),
        extra={
            "task": spec.task,
            "threshold": threshold,
            "params": fitted.params,
            "objective": "binary:logistic"
            if spec.task == "binary" and spec.library == "xgboost"
            else ("binary" if spec.task == "binary" else "reg:squarederror"),
            "label": spec.label,
            "profile": prof.name,
            # where its training sets are: the promote gate scores candidates on their own test split
            "workspace": ctx.workspace,
            "rows_from_ms": ctx.rows_from_ms,
            "warm_start_from": None if warm_start is None else warm_start.version,
            METADATA_KEY: profile,
        },
    )
    result["version"] = mv.version
    write_json(ctx.reports_dir / f"{name}.json", result)
    return result


def reference_profile(spec: ModelSpec, x_test: np.ndarray, p_test: np.ndarray) -> dict[str, Any]:
    """The drift reference stored with the model (stream/monitoring/profile.py): features and predictions
    of the test split.

    The split is by time, so the test rows are the latest before the model is served: what live rows
    look like when nothing changed. Rows from the whole history would not be: features that grow with
    time (tenure, counts over windows longer than the history's first days) drift against them on
    every live window. The predictions are those of rows the final model never saw, spread like live
    scores rather than like fitted ones.
    """
    return build_profile(spec.features.names, x_test, p_test).to_dict()


def _threshold(spec: ModelSpec, y: np.ndarray, p: np.ndarray) -> float:
    from batch_training.modeling import best_f1_threshold

    return best_f1_threshold(y, p) if spec.task == "binary" else 0.0


def _save(spec: ModelSpec, model: Any, path: Path) -> None:
    if spec.library == "lightgbm":
        model.save_model(str(path))
    else:
        model.get_booster().save_model(str(path))


def _oracle(
    ctx: Context, spec: ModelSpec, rows: pd.DataFrame, y: np.ndarray, p: np.ndarray, threshold: float
) -> dict[str, Any] | None:
    if not ctx.has_table_rows("truth_users"):
        return None
    q = oracle_predictions(ctx.ch, spec.name, rows)
    ok = np.isfinite(q)
    if ok.sum() < 50:
        return None
    if spec.task == "binary":
        from sklearn.metrics import roc_auc_score

        yy = y[ok]
        model_auc, oracle_auc = float(roc_auc_score(yy, p[ok])), float(roc_auc_score(yy, q[ok]))
        return {
            "metric": "auc",
            "model": model_auc,
            "oracle": oracle_auc,
            "ratio": model_auc / oracle_auc,
            "rows": int(ok.sum()),
        }
    m, o = regression_metrics(y[ok], p[ok]), regression_metrics(y[ok], q[ok])
    return {
        "metric": "r2",
        "model": m["r2"],
        "oracle": o["r2"],
        "ratio": m["r2"] / o["r2"],
        "oracle_rmse": o["rmse"],
        "oracle_mae": o["mae"],
        "rows": int(ok.sum()),
    }


def _plots(
    spec: ModelSpec, model: Any, y: np.ndarray, p: np.ndarray, others: dict[str, np.ndarray], out: Path
) -> list[Path]:
    names = spec.features.names
    if spec.library == "lightgbm":
        imp = np.asarray(model.feature_importance(importance_type="gain"), dtype=float)
    else:
        gains = model.get_booster().get_score(importance_type="gain")
        imp = np.array([gains.get(f"f{i}", 0.0) for i in range(len(names))], dtype=float)
    imp = imp / max(imp.sum(), 1e-12)
    paths = [out / "feature_importance.png"]
    plot_importance(names, imp, paths[0], f"{spec.name}: feature importance")
    if spec.task == "binary":
        paths.append(out / "roc_curve.png")
        plot_roc(y, {spec.name: p, **others}, paths[-1], f"{spec.name}: ROC (test split)")
    else:
        paths += [out / "prediction_vs_actual.png", out / "residuals.png"]
        plot_regression(y, p, paths[-2], paths[-1], spec.name)
    return paths

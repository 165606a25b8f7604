"""Step 4 (baselines): logistic regression, random forest and an MLP on churn, beside XGBoost.

Same rows and time split as the churn model; linear models and the MLP get median-imputed,
standardised features without the hashed code columns. Not persisted beyond their metrics.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from batch_training.context import Context
from batch_training.modeling import best_f1_threshold, cap_rows, classification_metrics, plot_roc, write_json
from batch_training.specs import SPECS
from batch_training.supervised import check_label, code_columns, spec_data


def baselines(ctx: Context) -> dict[str, Any]:
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec, seed = SPECS["churn"], ctx.profile.seed
    df = spec_data(ctx, spec)
    x, y = spec.xy(df)
    sp = spec.split(df)
    tr = cap_rows(sp.train, min(ctx.profile.max_train_rows, 60_000), seed)
    va, te = sp.val, sp.test
    check_label(spec, y, {"training": tr, "validation": va, "test": te})
    cols = code_columns(spec.features.names)
    pos = max(float(y[tr].mean()), 1e-6)

    def prep(est: Any) -> Any:
        return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), est)

    models: dict[str, tuple[Any, list[int]]] = {
        "logistic_regression": (
            prep(LogisticRegression(max_iter=500, class_weight="balanced", random_state=seed)),
            cols,
        ),
        "random_forest": (
            make_pipeline(
                SimpleImputer(strategy="median", keep_empty_features=True),
                RandomForestClassifier(
                    n_estimators=150, min_samples_leaf=5, n_jobs=2, class_weight="balanced_subsample", random_state=seed
                ),
            ),
            list(range(x.shape[1])),
        ),
        "mlp": (
            prep(MLPClassifier(hidden_layer_sizes=(64, 32), early_stopping=True, max_iter=200, random_state=seed)),
            cols,
        ),
        "xgboost": (
            xgb.XGBClassifier(
                n_estimators=300,
                max_depth=5,
                learning_rate=0.08,
                tree_method="hist",
                n_jobs=2,
                random_state=seed,
                scale_pos_weight=((1 - pos) / pos) ** 0.5,
            ),
            list(range(x.shape[1])),
        ),
    }
    out: dict[str, Any] = {}
    curves = {}
    for name, (est, c) in models.items():
        t = time.perf_counter()
        est.fit(x[tr][:, c], y[tr])
        secs = time.perf_counter() - t
        thr = best_f1_threshold(y[va], est.predict_proba(x[va][:, c])[:, 1])
        p = est.predict_proba(x[te][:, c])[:, 1]
        curves[name] = p
        out[name] = {**classification_metrics(y[te], p, thr), "train_seconds": secs}
    plot_dir = ctx.reports_dir / "baselines"
    plot_dir.mkdir(exist_ok=True)
    plot_roc(y[te], curves, plot_dir / "roc_comparison.png", "churn: baselines vs XGBoost")
    best_base = max((n for n in out if n != "xgboost"), key=lambda n: out[n]["auc"])
    result = {
        "models": out,
        "best_baseline": best_base,
        "summary": {n: round(m["auc"], 4) for n, m in out.items()},
        "xgboost_beats_baselines": bool(out["xgboost"]["auc"] > out[best_base]["auc"]),
        "rows": {"train": len(tr), "validation": len(va), "test": len(te)},
    }
    write_json(ctx.reports_dir / "baselines.json", result)
    return result


__all__ = ["baselines", "np"]

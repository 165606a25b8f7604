"""Step 6: move the ``production`` alias, but only to a model at least as good on the same holdout.

The holdout is the test split of the current training sets. The current production model and
the candidate are both scored on it; the candidate is refused if its primary metric (AUC, or R²
for engagement) is lower, unless ``force``. A production model trained on other features (its
feature list no longer matches) cannot be scored and is replaced.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from batch_training.context import Context
from batch_training.modeling import write_json
from batch_training.specs import SPECS, ModelSpec
from batch_training.supervised import score, spec_data
from stream.errors import StreamError
from stream.models.registry import ModelVersion, RegistryError, load_booster
from stream.state import FeatureList


class PromotionRefused(StreamError):
    """The candidate does worse than production on the same holdout."""


def holdout(ctx: Context, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    df = spec_data(ctx, spec)
    x, y = spec.xy(df)
    te = spec.split(df).test
    return x[te], y[te]


def evaluate_version(spec: ModelSpec, mv: ModelVersion, x: np.ndarray, y: np.ndarray) -> float | None:
    """Primary metric of a registered model on (x, y); None if it was built for other features."""
    stored = mv.features
    if not stored or not spec.features.matches(FeatureList.from_json(json.dumps(stored))):
        return None
    booster = load_booster(mv, nthread=2)
    p = booster.predict(x) if mv.kind == "lightgbm" else booster.inplace_predict(x)
    return float(score(spec, y, np.asarray(p))[spec.primary])


def promote(
    ctx: Context,
    names: list[str] | None = None,
    *,
    version: str | None = None,
    force: bool = False,
    skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Promote the latest (or given) version of each model; raises PromotionRefused on a worse one.

    ``skipped``: models whose training step was skipped in this run, with the reason (they keep
    their production version). The outcome is written to ``promotion.json``.
    """
    reg = ctx.registry
    out: dict[str, Any] = {}
    refused = []
    for name in names or list(SPECS):
        spec = SPECS[name]
        if skipped and name in skipped:
            out[name] = {"status": "skipped", "reason": skipped[name]}
            continue
        versions = reg.versions(name)
        if not versions:
            out[name] = {
                "status": "skipped",
                "reason": f"no registered {name} model: run `python -m batch_training {name}`",
            }
            continue
        cand = reg.get(name, version or versions[-1])
        try:
            prod: ModelVersion | None = reg.resolve(name)
        except RegistryError:
            prod = None
        if prod is not None and prod.version == cand.version:
            out[name] = {"status": "unchanged", "version": cand.version}
            continue
        x, y = holdout(ctx, spec)
        c_score = evaluate_version(spec, cand, x, y)
        p_score = evaluate_version(spec, prod, x, y) if prod is not None else None
        entry = {
            "candidate": cand.version,
            "candidate_score": c_score,
            "production": prod and prod.version,
            "production_score": p_score,
            "metric": spec.primary,
            "holdout_rows": len(y),
        }
        if c_score is None:
            entry["status"] = "refused (candidate features do not match this code)"
            refused.append(name)
        elif p_score is not None and c_score < p_score and not force:
            entry["status"] = "refused"
            refused.append(name)
        else:
            reg.set_alias(name, "production", cand.version)
            entry["status"] = "promoted" + (" (forced)" if force and p_score is not None and c_score < p_score else "")
        out[name] = entry
    write_json(ctx.reports_dir / "promotion.json", out)
    if refused:
        detail = "; ".join(
            f"{n} v{out[n]['candidate']} {out[n]['metric']}={_f(out[n]['candidate_score'])} < "
            f"production v{out[n]['production']} {_f(out[n]['production_score'])}"
            for n in refused
        )
        raise PromotionRefused(f"promotion refused: {detail} (use --force to override)")
    return out


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"

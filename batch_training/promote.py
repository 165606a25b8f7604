"""Step 6: move the ``production`` alias, but only to a model at least as good on the same holdout.

The holdout is the test split of the candidate's own training sets (the pipeline's, or those of
the ``retrain`` window for a challenger). The current production model and the candidate are both
scored on it; the candidate is refused if its primary metric (AUC, or R² for engagement) is lower,
unless ``force``. A production model trained on other features (its feature list no longer
matches) cannot be scored and is replaced. Every promotion is recorded in the registry's history
with these scores as its evidence.

The segmentation (unsupervised, served online as model ``segment``) has no holdout metric to
compare: its latest version is promoted once it loads as the worker loads it (its user feature
list matches this code and its parameters fit the user rows), with its clustering scores as
evidence.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from batch_training.context import Context, Skipped
from batch_training.modeling import write_json
from batch_training.specs import SPECS, ModelSpec
from batch_training.supervised import score, spec_data
from stream.errors import PrerequisiteError, StreamError
from stream.models import SEGMENTS
from stream.models.registry import CHALLENGER, PRODUCTION, ModelVersion, RegistryError, load_booster
from stream.models.segments import SegmentModel
from stream.state import FeatureList


class PromotionRefused(StreamError):
    """The candidate does worse than production on the same holdout."""


def holdout(ctx: Context, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    df = spec_data(ctx, spec)
    x, y = spec.xy(df)
    te = spec.split(df).test
    return x[te], y[te]


def predict_version(spec: ModelSpec, mv: ModelVersion, x: np.ndarray) -> np.ndarray | None:
    """A registered model's scores of x, as the worker computes them; None if built for other features."""
    stored = mv.features
    if not stored or not spec.features.matches(FeatureList.from_json(json.dumps(stored))):
        return None
    booster = load_booster(mv, nthread=2)
    return np.asarray(booster.predict(x) if mv.kind == "lightgbm" else booster.inplace_predict(x), dtype=np.float64)


def evaluate_version(spec: ModelSpec, mv: ModelVersion, x: np.ndarray, y: np.ndarray) -> float | None:
    """Primary metric of a registered model on (x, y); None if it was built for other features."""
    p = predict_version(spec, mv, x)
    return None if p is None else float(score(spec, y, p)[spec.primary])


def default_version(ctx: Context, name: str) -> str | None:
    """What ``promote`` promotes when no version is given: the challenger if there is one, else the latest."""
    reg = ctx.registry
    challenger = reg.aliases(name).get(CHALLENGER)
    if challenger is not None:
        return challenger
    versions = reg.versions(name)
    return versions[-1] if versions else None


def promote(
    ctx: Context,
    names: list[str] | None = None,
    *,
    version: str | None = None,
    force: bool = False,
    skipped: dict[str, str] | None = None,
    challenger_first: bool = False,
    reason: str = "",
) -> dict[str, Any]:
    """Promote the latest (or given) version of each model; raises PromotionRefused on a worse one.

    ``skipped``: models whose training step was skipped in this run, with the reason (they keep
    their production version). ``challenger_first``: without ``version``, promote the challenger
    if the model has one (the ``promote`` command; the pipeline promotes what it just trained).
    ``reason`` goes to the history with the scores. The outcome is written to ``promotion.json``.
    """
    reg = ctx.registry
    out: dict[str, Any] = {}
    refused = []
    for name in names or [*SPECS, SEGMENTS.registered_as]:
        if skipped and name in skipped:
            out[name] = {"status": "skipped", "reason": skipped[name]}
            continue
        if name == SEGMENTS.registered_as:
            out[name] = promote_segmentation(ctx, version=version, reason=reason)
            if out[name]["status"].startswith("refused"):
                refused.append(name)
            continue
        spec = SPECS[name]
        versions = reg.versions(name)
        if not versions:
            out[name] = {
                "status": "skipped",
                "reason": f"no registered {name} model: run `python -m batch_training {name}`",
            }
            continue
        cand = reg.get(name, version or (default_version(ctx, name) if challenger_first else None) or versions[-1])
        try:
            prod: ModelVersion | None = reg.resolve(name)
        except RegistryError:
            prod = None
        if prod is not None and prod.version == cand.version:
            out[name] = {"status": "unchanged", "version": cand.version}
            continue
        hctx = ctx.in_workspace(str(cand.metadata.get("workspace") or ""))
        if not (hctx.data_dir / f"{spec.table}.parquet").exists():
            hctx = ctx
        try:
            x, y = holdout(hctx, spec)
        except (PrerequisiteError, Skipped) as exc:
            if not force:
                raise
            x, y = np.zeros((0, len(spec.features.names)), dtype=np.float32), np.zeros(0)
            no_holdout: str | None = str(exc)
        else:
            no_holdout = None
        c_score = evaluate_version(spec, cand, x, y) if no_holdout is None else None
        p_score = evaluate_version(spec, prod, x, y) if prod is not None and no_holdout is None else None
        entry = {
            "candidate": cand.version,
            "candidate_score": c_score,
            "production": prod and prod.version,
            "production_score": p_score,
            "metric": spec.primary,
            "holdout_rows": len(y),
            "holdout": str(hctx.data_dir),
        }
        if no_holdout is not None:
            reg.set_alias(name, PRODUCTION, cand.version, reason=reason or "forced without a holdout", evidence=entry)
            entry["status"] = f"promoted (forced, no holdout: {no_holdout})"
        elif c_score is None:
            entry["status"] = "refused (candidate features do not match this code)"
            refused.append(name)
        elif p_score is not None and c_score < p_score and not force:
            entry["status"] = "refused"
            refused.append(name)
        else:
            forced = force and p_score is not None and c_score < p_score
            why = reason or ("forced" if forced else f"{spec.primary} on the candidate's holdout not worse")
            reg.set_alias(name, PRODUCTION, cand.version, reason=why, evidence=dict(entry))
            entry["status"] = "promoted" + (" (forced)" if forced else "")
        if name in refused:
            reg.record(
                name,
                "refused",
                from_version=prod.version if prod is not None else None,
                to_version=cand.version,
                reason=f"promote: {entry['status']}",
                evidence=dict(entry),
            )
        out[name] = entry
    write_json(ctx.reports_dir / "promotion.json", out)
    if refused:
        detail = "; ".join(
            f"{n} v{out[n]['candidate']}: {out[n]['status']}"
            if n == SEGMENTS.registered_as
            else f"{n} v{out[n]['candidate']} {out[n]['metric']}={_f(out[n]['candidate_score'])} < "
            f"production v{out[n]['production']} {_f(out[n]['production_score'])}"
            for n in refused
        )
        raise PromotionRefused(f"promotion refused: {detail} (use --force to override)")
    return out


def promote_segmentation(ctx: Context, *, version: str | None = None, reason: str = "") -> dict[str, Any]:
    """Point the segmentation's production alias at its latest (or given) version, if the worker can load it."""
    reg = ctx.registry
    name = SEGMENTS.registered_as
    versions = reg.versions(name)
    if not versions:
        return {"status": "skipped", "reason": f"no registered {name} model: run `python -m batch_training {name}`"}
    cand = reg.get(name, version or versions[-1])
    prod = reg.aliases(name).get(PRODUCTION)
    if prod == cand.version:
        return {"status": "unchanged", "version": cand.version}
    entry: dict[str, Any] = {"candidate": cand.version, "production": prod, "metrics": cand.metadata.get("metrics", {})}
    want = SEGMENTS.features
    stored = cand.features
    if stored.get("version") != want.version or list(stored.get("names", [])) != list(want.names):
        entry["status"] = "refused (candidate features do not match this code)"
    else:
        try:
            SegmentModel.load(cand, want.names)
        except (RegistryError, KeyError, ValueError) as exc:
            entry["status"] = f"refused (its parameters do not load: {exc})"
    if "status" in entry:
        reg.record(name, "refused", from_version=prod, to_version=cand.version, reason=f"promote: {entry['status']}")
        return entry
    why = reason or "unsupervised: no holdout metric to gate on; the latest fit that loads is served"
    reg.set_alias(name, PRODUCTION, cand.version, reason=why, evidence=dict(entry))
    entry["status"] = "promoted"
    return entry


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"

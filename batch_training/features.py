"""Steps 1 and 3: prerequisites, and the point-in-time training sets (Parquet + feature list)."""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd

from batch_training.context import Context
from batch_training.datasets import build_training_sets
from batch_training.modeling import write_json
from stream.errors import PrerequisiteError
from stream.models import MODELS
from stream.state.labels import ENGAGEMENT_CAP

SUPPORTED_SCHEMA_VERSIONS = {1}
_BACKFILL = (
    "python -m stream ingest --from-file PATH` (a history of your own) or "
    "`python -m simulator backfill --users 3000 --days 45"
)
#: label column -> the model trained on it (high_value has none)
_MODEL_OF_LABEL = {"churned": "churn", "converted": "conversion", "clicked": "click"}
#: above this share of sessions at the engagement cap, the features step warns (docs/features.md)
CAP_WARN_SHARE = 0.05


def prerequisites(ctx: Context) -> dict[str, Any]:
    """Data present, enough rows, a schema version this code understands."""
    where = f"{ctx.db}.events"
    try:
        df = ctx.ch.query_df(
            "SELECT count() AS n, uniqExact(user_id) AS users, groupUniqArray(schema_version) AS v, "
            "toUnixTimestamp64Milli(min(event_time)) AS lo, "
            "toUnixTimestamp64Milli(max(event_time)) AS hi FROM {db}.events"
        )
    except Exception as exc:
        raise PrerequisiteError(
            f"cannot read table {where} ({type(exc).__name__}): run `{_BACKFILL}` or set STREAM_CLICKHOUSE_URL"
        ) from exc
    n = int(df["n"].iloc[0])
    if n == 0:
        raise PrerequisiteError(f"no events in table {where}: run `{_BACKFILL}` or set STREAM_CLICKHOUSE_URL")
    if n < ctx.profile.min_events:
        raise PrerequisiteError(
            f"only {n} events in table {where} (profile {ctx.profile.name!r} needs "
            f">= {ctx.profile.min_events}): run `{_BACKFILL}`"
        )
    versions = {int(v) for v in df["v"].iloc[0]}
    if not versions <= SUPPORTED_SCHEMA_VERSIONS:
        raise PrerequisiteError(
            f"{where} holds schema versions {sorted(versions)}; this code reads "
            f"{sorted(SUPPORTED_SCHEMA_VERSIONS)}: upgrade batch_training"
        )
    days = (int(df["hi"].iloc[0]) - int(df["lo"].iloc[0])) / 86_400_000
    if days < 21:
        raise PrerequisiteError(
            f"{where} spans {days:.2f} days (first to last event); the labels need >= 21 (14-day conversion "
            f"horizon + history): run `{_BACKFILL}`"
        )
    return {
        "events": n,
        "users": int(df["users"].iloc[0]),
        "days": round(days, 2),
        "schema_versions": sorted(versions),
        "truth": ctx.has_table_rows("truth_users"),
    }


def cap_share(engagement: pd.Series) -> float | None:
    """Share of sessions whose engagement label is at ``ENGAGEMENT_CAP`` (None without sessions)."""
    y = engagement.dropna()
    return float((y >= ENGAGEMENT_CAP).mean()) if len(y) else None


def label_warnings(labels: dict[str, pd.Series], at_cap: float | None) -> list[str]:
    """One line per label a model cannot learn from as it is: a single class, or a saturated cap."""
    out = []
    for name, values in labels.items():
        y = values.dropna()
        classes = sorted(set(y.astype(int).tolist()))
        if len(classes) == 1:
            model = _MODEL_OF_LABEL.get(name)
            out.append(
                f"label {name!r} has a single class ({classes[0]} in all {len(y)} rows)"
                + (f": the {model} model will be skipped" if model else "")
            )
    if at_cap is not None and at_cap > CAP_WARN_SHARE:
        out.append(
            f"{at_cap:.0%} of sessions reach the engagement cap of {ENGAGEMENT_CAP:g} points: the label "
            "saturates on this history (docs/features.md, section Engagement label)"
        )
    return out


def features(ctx: Context) -> dict[str, Any]:
    prof = ctx.profile
    t0 = time.perf_counter()
    bar = ctx.bar(None, "features: chunks")
    try:
        sets = build_training_sets(
            ctx.ch,
            rows_from_ms=ctx.rows_from_ms,
            processes=prof.processes,
            users_per_chunk=prof.users_per_chunk,
            sampling=prof.sampling,
            progress=bar,
        )
    finally:
        bar.close()
    out = ctx.data_dir
    for name, df in (("users", sets.users), ("clicks", sets.clicks), ("engagement", sets.engagement)):
        df.to_parquet(out / f"{name}.parquet", index=False)
    lists: dict[str, Any] = {name: m.features.to_dict() for name, m in MODELS.items()}
    lists["labels"] = {
        "users": ["churned", "converted", "high_value"],
        "clicks": ["clicked"],
        "engagement": ["engagement"],
    }
    (out / "feature_list.json").write_text(json.dumps(lists, indent=2))
    u = sets.users
    at_cap = cap_share(sets.engagement["engagement"])
    manifest: dict[str, Any] = {
        "profile": prof.name,
        "sampling": prof.sampling.__dict__,
        "rows_from_ms": ctx.rows_from_ms,
        "seconds": sets.seconds,
        "rows": {"users": len(u), "clicks": len(sets.clicks), "engagement": len(sets.engagement)},
        "label_rates": {
            "churned": float(u["churned"].mean()) if len(u) else None,
            "converted": float(u["converted"].mean()) if len(u) else None,
            "high_value": float(u["high_value"].mean()) if len(u) else None,
            "clicked": float(sets.clicks["clicked"].mean()) if len(sets.clicks) else None,
            "engagement_mean": float(sets.engagement["engagement"].mean()) if len(sets.engagement) else None,
        },
        "engagement_at_cap_share": at_cap,
        "build_seconds": time.perf_counter() - t0,
    }
    manifest["warnings"] = label_warnings(
        {
            "churned": u["churned"],
            "converted": u["converted"],
            "high_value": u["high_value"],
            "clicked": sets.clicks["clicked"],
        },
        at_cap,
    )
    write_json(out / "manifest.json", manifest)
    return manifest

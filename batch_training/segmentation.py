"""Step 4 (segmentation): scaling, PCA, K-Means with k chosen by silhouette and Davies-Bouldin.

One row per user: the latest snapshot in the training set. Segments get readable names from
what they contain: a name of :data:`NAMES` goes to the segment that stands out most on its column,
only if that segment's mean lies at least ``MIN_Z`` population standard deviations from the
population's in the named direction (and is non-zero for a "+" name: no "video consumers" without
video plays). Other segments are named by their most distinctive column ("high ..."/"low ...").
Each name states its evidence (segment mean vs population mean).
The model (scaler, PCA, centroids) is registered as JSON; no pickle, with the user feature list
its rows come from: the worker assigns segments online from the same rows (``stream/models/segments.py``)
once ``promote`` moved its ``production`` alias.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from batch_training.context import Context, Skipped
from batch_training.modeling import data_fingerprint, register, write_json
from batch_training.supervised import load_table
from stream.models import SEGMENTS

PROFILE_COLUMNS = [
    "total_sessions",
    "session_frequency",
    "avg_session_minutes",
    "avg_events_per_session",
    "avg_session_engagement",
    "active_days_30d",
    "n_article_view_30d",
    "n_video_play_30d",
    "ctr_lifetime",
    "distinct_categories",
    "newsletter_flag",
    "subscription_flag",
    "device_mobile",
    "device_desktop",
    "days_since_last_event",
]
#: name -> (column, sign): the segment with the largest standardized mean (sign +1) or smallest (-1)
NAMES: list[tuple[str, str, int]] = [
    ("high-engagement", "avg_session_engagement", 1),
    ("newsletter subscribers", "newsletter_flag", 1),
    ("video consumers", "n_video_play_30d", 1),
    ("mobile-first", "device_mobile", 1),
    ("casual browsers", "session_frequency", -1),
    ("desktop readers", "device_desktop", 1),
    ("lapsing users", "days_since_last_event", 1),
]


def user_matrix(users: pd.DataFrame) -> pd.DataFrame:
    last = users.sort_values("cutoff_ms").groupby("user_id", sort=True).tail(1).set_index("user_id")
    return last[PROFILE_COLUMNS].astype(float)


MIN_Z = 0.5
MIN_USERS = 30


def name_segments(profiles: pd.DataFrame, users: pd.DataFrame) -> dict[int, tuple[str, str]]:
    """segment -> (name, evidence), from segment means (``profiles``) against the users' distribution."""
    mean, std = users.mean(), users.std(ddof=0)
    z = ((profiles - mean) / std.where(std > 0)).fillna(0.0)  # a constant column distinguishes nobody
    names: dict[int, tuple[str, str]] = {}

    def evidence(k: Any, col: str) -> str:
        return f"{col} {profiles.loc[k, col]:.3g} vs {mean[col]:.3g} overall"

    for label, col, sign in NAMES:
        free = [k for k in z.index if k not in names]
        if not free:
            break
        k = max(free, key=lambda i: sign * z.loc[i, col])
        if sign * z.loc[k, col] >= MIN_Z and (sign < 0 or profiles.loc[k, col] > 0):
            names[int(k)] = (label, evidence(k, col))
    used = {n for n, _ in names.values()}
    for k in z.index:
        if int(k) in names:
            continue
        col = str(z.loc[k].abs().idxmax())
        v = z.loc[k, col]
        label = f"{'high' if v > 0 else 'low'} {col.replace('_', ' ')}" if abs(v) > 0 else "average users"
        base, n = label, 2
        while label in used:
            label, n = f"{base} ({n})", n + 1
        used.add(label)
        names[int(k)] = (label, evidence(k, col))
    return names


def segmentation(ctx: Context) -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import davies_bouldin_score, silhouette_score
    from sklearn.preprocessing import StandardScaler

    seed = ctx.profile.seed
    m = user_matrix(load_table(ctx, "users"))
    if len(m) < MIN_USERS:
        raise Skipped(f"too few users to segment: {len(m)} (needs {MIN_USERS})")
    x = m.fillna(m.median()).fillna(0.0).to_numpy()
    x = np.log1p(np.clip(x, 0, None))  # heavy-tailed counts
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    pca = PCA(n_components=0.9, random_state=seed).fit(xs)
    xp = pca.transform(xs)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(xp), min(len(xp), 4000), replace=False)
    scores = []
    for k in range(3, 9):
        km = KMeans(k, n_init=4, random_state=seed).fit(xp)
        lab = km.labels_[sample]
        scores.append(
            {
                "k": k,
                "silhouette": float(silhouette_score(xp[sample], lab)),
                "davies_bouldin": float(davies_bouldin_score(xp[sample], lab)),
            }
        )
    s = pd.DataFrame(scores)
    # rank-sum: high silhouette and low Davies-Bouldin
    s["rank"] = s["silhouette"].rank(ascending=False) + s["davies_bouldin"].rank(ascending=True)
    k = int(s.sort_values(["rank", "k"]).iloc[0]["k"])
    km = KMeans(k, n_init=8, random_state=seed).fit(xp)
    labels = km.labels_
    prof = m.assign(segment=labels).groupby("segment").mean()
    prof["users"] = np.bincount(labels, minlength=k)
    named = name_segments(prof[PROFILE_COLUMNS], m)
    names = {k2: n for k2, (n, _) in named.items()}
    prof["name"] = [names[int(i)] for i in prof.index]
    prof["because"] = [named[int(i)][1] for i in prof.index]
    out = ctx.reports_dir / "segmentation"
    out.mkdir(exist_ok=True)
    prof.to_csv(out / "segment_profiles.csv")
    seg = pd.DataFrame(
        {"user_id": m.index, "segment": labels, "name": [names.get(int(i), f"segment {i}") for i in labels]}
    )
    seg.to_csv(out / "user_segments.csv", index=False)
    _plot(xp, labels, out)
    params = {
        "columns": PROFILE_COLUMNS,
        "transform": "log1p(clip(x, 0))",
        "fill": m.median().to_dict(),
        "scaler_mean": scaler.mean_.tolist(),
        "scaler_scale": scaler.scale_.tolist(),
        "pca_components": pca.components_.tolist(),
        "pca_mean": pca.mean_.tolist(),
        "centroids": km.cluster_centers_.tolist(),
        "names": {str(k2): v for k2, v in names.items()},
    }

    def write(path: Any) -> None:
        path.write_text(json.dumps(params))

    mv = register(
        ctx.registry,
        SEGMENTS.registered_as,
        "json",
        write,
        features=SEGMENTS.features,
        metrics={"k": k, **scores[k - 3]},
        window={},
        rows={"users": len(m)},
        fingerprint=data_fingerprint(seg, ["user_id"]),
    )
    result = {
        "k": k,
        "selection": scores,
        "version": mv.version,
        "users": len(m),
        "summary": {
            "k": k,
            "segments": {prof.loc[i, "name"]: int(prof.loc[i, "users"]) for i in prof.index},
            "named_for": {prof.loc[i, "name"]: prof.loc[i, "because"] for i in prof.index},
            "silhouette": scores[k - 3]["silhouette"],
            "davies_bouldin": scores[k - 3]["davies_bouldin"],
        },
    }
    write_json(ctx.reports_dir / "segmentation.json", result)
    return result


def _plot(xp: np.ndarray, labels: np.ndarray, out: Any) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    k = np.random.default_rng(0).choice(len(xp), min(len(xp), 5000), replace=False)
    ax.scatter(xp[k, 0], xp[k, 1] if xp.shape[1] > 1 else 0 * xp[k, 0], c=labels[k], s=4, cmap="tab10")
    ax.set(xlabel="PC1", ylabel="PC2", title="user segments (PCA)")
    fig.tight_layout()
    fig.savefig(out / "segments_pca.png", dpi=90)
    plt.close(fig)

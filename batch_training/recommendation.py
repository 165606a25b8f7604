"""Step 4 (recommendation): hybrid of NMF collaborative filtering and content-based cosine similarity.

Interactions = article views, clicks and video plays. Split: leave the last ``LEAVE_LAST``
distinct articles of each user out (by the time the user first consumed them); a user is
eligible with at least ``LEAVE_LAST + MIN_TRAIN`` distinct articles, and every eligible user is
evaluated. The model is fit on everything else (all users' other interactions). For each user,
the candidates are the articles alive while the user read the held-out ones (some event of the
article between its first and last event spans them: news articles are short-lived) and not
consumed in training; precision@K / recall@K are computed against the held-out articles.
Articles without CF factors (seen only in held-out interactions: item cold start) are scored by
the content part (brand + category).

The hybrid mixes the max-normalised CF, content and popularity scores; its weights (a grid on
the simplex) are cross-fitted: users are split in two seeded halves; each half is scored
with the weight tuned on the other, so every eligible user counts once, untuned. Each metric has
a 95 % bootstrap interval over users, and the hybrid is compared with the popularity ranking on
the same users (paired bootstrap of the per-user difference): it "beats popularity" only if that
interval lies above 0. The registered model uses the weight tuned on all users.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from batch_training.context import Context, Skipped
from batch_training.modeling import data_fingerprint, register, write_json

LEAVE_LAST = 2
MIN_TRAIN = 3
MIN_USERS = 20
K = 10
#: (CF, content, popularity) weights of the hybrid: a grid on the simplex, steps of 0.25
WEIGHTS: tuple[tuple[float, float, float], ...] = tuple(
    (a / 4, b / 4, (4 - a - b) / 4) for a in range(5) for b in range(5 - a)
)
BOOTSTRAP = 1000
USER_BATCH = 2_000


def _load(ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame]:
    cons = ctx.ch.query_df(
        "SELECT user_id, article_id, min(toUnixTimestamp64Milli(event_time)) AS t FROM {db}.events "
        "WHERE article_id IS NOT NULL AND event_type IN ('article_view', 'article_click', 'video_play') "
        "GROUP BY user_id, article_id"
    )
    items = ctx.ch.query_df(
        "SELECT article_id, any(brand) AS brand, any(category) AS category, "
        "toUnixTimestamp64Milli(min(event_time)) AS first_t, "
        "toUnixTimestamp64Milli(max(event_time)) AS last_t FROM {db}.events "
        "WHERE article_id IS NOT NULL GROUP BY article_id"
    )
    return cons, items


def leave_last_n(
    cons: pd.DataFrame, n: int = LEAVE_LAST, min_train: int = MIN_TRAIN
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, held out): each eligible user's last ``n`` distinct articles by first consumption.

    ``cons`` has one row per (user_id, article_id) with its first time ``t``; users with fewer than
    ``n + min_train`` articles keep all of them in training.

    >>> c = pd.DataFrame({"user_id": ["a"] * 4 + ["b"], "article_id": list("wxyzw"), "t": [1, 4, 3, 2, 1]})
    >>> tr, te = leave_last_n(c, n=2, min_train=2)
    >>> sorted(te["article_id"]), sorted(tr["article_id"])
    (['x', 'y'], ['w', 'w', 'z'])
    """
    c = cons.sort_values(["user_id", "t", "article_id"], kind="stable")
    size = c.groupby("user_id")["article_id"].transform("size")
    rank_from_end = c.groupby("user_id").cumcount(ascending=False)
    held = (size >= n + min_train) & (rank_from_end < n)
    return c[~held].reset_index(drop=True), c[held].reset_index(drop=True)


def _hits(scores: np.ndarray, truth: list[set[int]], k: int) -> np.ndarray:
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    return np.array([len(t & set(row.tolist())) for t, row in zip(truth, top, strict=True)], dtype=float)


def _norm(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return a / np.where(m > 0, m, 1.0)


def bootstrap_ci(values: np.ndarray, seed: int, n: int = BOOTSTRAP) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``values`` (seeded)."""
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def recommendation(ctx: Context) -> dict[str, Any]:
    from scipy import sparse
    from sklearn.decomposition import NMF

    seed = ctx.profile.seed
    cons, items = _load(ctx)
    if cons.empty:
        raise Skipped("no article views, clicks or video plays to learn from")
    train, test = leave_last_n(cons)
    eval_users = sorted(test["user_id"].unique())
    if len(eval_users) < MIN_USERS:
        raise Skipped(
            f"too few users to evaluate: {len(eval_users)} with >= {LEAVE_LAST + MIN_TRAIN} distinct "
            f"articles (needs {MIN_USERS})"
        )
    users = pd.Index(sorted(cons["user_id"].unique()))
    arts = pd.Index(sorted(items["article_id"].unique()))
    ui, ai = users.get_indexer(train["user_id"]), arts.get_indexer(train["article_id"])
    r = sparse.csr_matrix((np.full(len(ui), np.log1p(1.0)), (ui, ai)), shape=(len(users), len(arts)))
    n_components = max(1, min(16, len(arts) - 1, len(users) - 1))
    nmf = NMF(n_components=n_components, init="nndsvda", max_iter=150, random_state=seed)
    w = nmf.fit_transform(r)
    h = nmf.components_
    content = pd.get_dummies(
        items.set_index("article_id").reindex(arts)[["brand", "category"]].fillna("?"), dtype=float
    ).to_numpy()
    content /= np.linalg.norm(content, axis=1, keepdims=True).clip(1e-9)
    pop = np.bincount(ai, minlength=len(arts)).astype(float)
    held: dict[str, set[int]] = {}
    for user, a in zip(test["user_id"].tolist(), arts.get_indexer(test["article_id"]).tolist(), strict=True):
        held.setdefault(user, set()).add(a)
    span = test.groupby("user_id")["t"].agg(["min", "max"]).reindex(eval_users)
    alive_from = items.set_index("article_id").reindex(arts)["first_t"].to_numpy(dtype=np.int64)
    alive_to = items.set_index("article_id").reindex(arts)["last_t"].to_numpy(dtype=np.int64)
    uidx = users.get_indexer(eval_users)
    truth = [held[u] for u in eval_users]
    # per user and weight: hits of the hybrid; and of the single rankers
    hyb_hits = np.zeros((len(uidx), len(WEIGHTS)))
    single = {name: np.zeros(len(uidx)) for name in ("collaborative", "content", "popularity")}
    for lo in range(0, len(uidx), USER_BATCH):
        sl = slice(lo, lo + USER_BATCH)
        u, t = uidx[sl], truth[sl]
        lo_t, hi_t = span["min"].to_numpy()[sl, None], span["max"].to_numpy()[sl, None]
        # candidates: articles not consumed in training and alive while the user read the held-out ones
        out = (r[u].toarray() > 0) | (alive_from[None, :] > hi_t) | (alive_to[None, :] < lo_t)
        penalty = np.where(out, -1e9, 0.0)
        cf = _norm(w[u] @ h)
        prof = np.asarray(r[u] @ content)
        prof /= np.linalg.norm(prof, axis=1, keepdims=True).clip(1e-9)
        cb = _norm(prof @ content.T)
        popn = _norm(np.tile(pop, (len(u), 1)))
        for j, (w_cf, w_cb, w_pop) in enumerate(WEIGHTS):
            hyb_hits[sl, j] = _hits(w_cf * cf + w_cb * cb + w_pop * popn + penalty, t, K)
        single["collaborative"][sl] = _hits(cf + penalty, t, K)
        single["content"][sl] = _hits(cb + penalty, t, K)
        single["popularity"][sl] = _hits(np.tile(pop, (len(u), 1)) + penalty, t, K)

    def best_weight(rows: np.ndarray) -> int:
        means = hyb_hits[rows].mean(axis=0)
        return int(max(range(len(WEIGHTS)), key=lambda j: (means[j], -max(WEIGHTS[j]))))  # ties: the mix

    half = np.random.default_rng(seed).permutation(len(uidx)) % 2 == 0
    hybrid = np.where(half, hyb_hits[:, best_weight(~half)], hyb_hits[:, best_weight(half)])
    n_held = np.array([len(t) for t in truth], dtype=float)
    models: dict[str, Any] = {}
    for j, (name, hits) in enumerate({"hybrid": hybrid, **single}.items()):
        models[name] = _metrics(hits, n_held, seed + j)
    diff = hybrid / K - single["popularity"] / K
    diff_ci = bootstrap_ci(diff, seed + 99)
    verdict = "better" if diff_ci[0] > 0 else ("worse" if diff_ci[1] < 0 else "no significant difference")
    best_w = dict(
        zip(("cf", "content", "popularity"), WEIGHTS[best_weight(np.ones(len(uidx), dtype=bool))], strict=True)
    )
    cold_items = float((pop == 0).mean())
    evaluation = {
        "split": f"leave-last-{LEAVE_LAST}-per-user",
        "k": K,
        "eligible_users": len(eval_users),
        "users": len(uidx),
        "candidates": "articles alive while the user read the held-out ones, not consumed in training",
        "tuning": "weights cross-fitted over two seeded halves of the users",
        "models": models,
        "hybrid_minus_popularity_precision": {"mean": float(diff.mean()), "ci95": list(diff_ci), "verdict": verdict},
    }
    params = {
        "weights": best_w,
        "k": K,
        "n_components": n_components,
        "split": evaluation["split"],
        "item_ids": arts.tolist(),
        "item_factors": h.T.round(5).tolist(),
    }

    def write(path: Any) -> None:
        path.write_text(json.dumps(params))
        np.savez_compressed(path.parent / "user_factors.npz", user_ids=np.array(users.tolist()), factors=w)

    metrics: dict[str, Any] = {
        f"{n}_{m}@{K}": v[f"{m}@{K}"] for n, v in models.items() for m in ("precision", "recall")
    }
    mv = register(
        ctx.registry,
        "recommendation",
        "json",
        write,
        features=None,
        metrics=metrics,
        window={"start_ms": int(cons["t"].min()), "end_ms": int(cons["t"].max())},
        rows={"interactions": len(train), "users": len(users), "items": len(arts)},
        fingerprint=data_fingerprint(train, ["user_id", "article_id", "t"]),
    )
    result = {
        "metrics": metrics,
        "weights": best_w,
        "evaluation": evaluation,
        "cold_start_item_share": cold_items,
        "version": mv.version,
        "beats_popularity": verdict == "better",
        "summary": {
            "split": evaluation["split"],
            "users": len(uidx),
            **{f"{n} precision@{K}": _ci_text(v, f"precision@{K}") for n, v in models.items()},
            "hybrid vs popularity": verdict,
            "weights": best_w,
            "cold_start_item_share": round(cold_items, 3),
        },
    }
    write_json(ctx.reports_dir / "recommendation.json", result)
    return result


def _metrics(hits: np.ndarray, n_held: np.ndarray, seed: int) -> dict[str, Any]:
    prec, rec = hits / K, hits / n_held
    return {
        f"precision@{K}": float(prec.mean()),
        "ci95": list(bootstrap_ci(prec, seed)),
        f"recall@{K}": float(rec.mean()),
        "recall_ci95": list(bootstrap_ci(rec, seed)),
    }


def _ci_text(m: dict[str, Any], key: str) -> str:
    lo, hi = m["ci95"]
    return f"{m[key]:.4f} [{lo:.4f}, {hi:.4f}]"

"""Step 4 (recommendation): hybrid of NMF collaborative filtering, content cosine and recent popularity.

Interactions = article views, clicks and video plays. Split: leave the last ``LEAVE_LAST``
distinct articles of each user out (by the time the user first consumed them); a user is
eligible with at least ``LEAVE_LAST + MIN_TRAIN`` distinct articles, and every eligible user is
evaluated. The model is fit on everything else (all users' other interactions). For each user,
the candidates are the articles alive while the user read the held-out ones (some event of the
article between its first and last event spans them: news articles are short-lived) and not
consumed in training; precision@K / recall@K are computed against the held-out articles.
Articles without CF factors (seen only in held-out interactions: item cold start) are scored by
the content part (brand + category).

Rankers compared on the same users and candidates:

- ``popularity``: interactions per article over the whole training set;
- ``recent_popularity``: interactions of every user in the ``POP_WINDOW_DAYS`` before the user's
  split time (their first held-out read), each weighted ``0.5 ** (age / POP_HALF_LIFE_HOURS)``:
  what a "trending now" box shows, and the popularity part of the hybrid (and of the worker's);
- ``collaborative`` (NMF), ``content`` (cosine of brand/category profiles);
- ``hybrid``: the max-normalised mix of the three; its weights (a grid on the simplex) are
  cross-fitted: users are split in two seeded halves, each half is scored with the weight tuned
  on the other, so every eligible user counts once, untuned;
- ``oracle`` (simulated histories only): each user's true preference per article (the order of
  their true click probabilities when tastes also drive clicks), from the simulator's truth
  (``truth_articles``, ``truth_user_preferences``); "no ground truth" otherwise.

Each metric has a 95 % bootstrap interval over users; the hybrid is compared with popularity on
the same users (paired bootstrap of the per-user difference): it "beats popularity" only if that
interval lies above 0. The registered model (JSON: weights, item factors, content vocabulary,
popularity decay) uses the weight tuned on all users; it becomes the ``production`` version unless
it does significantly worse than popularity. The worker folds a user's vector in from their
reads (:func:`stream.models.recommend.fold_in`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from batch_training.context import Context, Skipped
from batch_training.modeling import data_fingerprint, register, write_json
from stream.models.registry import PRODUCTION

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
#: recent popularity: interactions of the last days before the split, halved every POP_HALF_LIFE_HOURS
POP_WINDOW_DAYS = 3.0
POP_HALF_LIFE_HOURS = 12.0
#: the value of one interaction in the user x article matrix (and in the worker's fold-in)
INTERACTION = float(np.log1p(1.0))
HOUR_MS = 3_600_000
RANKERS = ("popularity", "recent_popularity", "collaborative", "content", "hybrid", "oracle")


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


def _load_truth(ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(articles, user preferences) of the simulator's truth, or None (no ground truth)."""
    if not (ctx.has_table_rows("truth_articles") and ctx.has_table_rows("truth_user_preferences")):
        return None
    arts = ctx.ch.query_df(
        "SELECT article_id, brand_index, category_index, topic, quality_logit FROM {db}.truth_articles"
    )
    prefs = ctx.ch.query_df("SELECT user_id, kind, key, logit FROM {db}.truth_user_preferences")
    return arts, prefs


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


def hits_at_k(scores: np.ndarray, truth: Sequence[set[int]], k: int) -> np.ndarray:
    """Per row, how many of the ``k`` best-scored columns are in the row's ``truth``.

    Ties are broken by the lower column index (so the count is deterministic).

    >>> hits_at_k(np.array([[0.9, 0.1, 0.5], [0.0, 0.0, 1.0]]), [{0, 1}, {1}], 2)  # row 2: columns 2, then 0 of the tie
    array([1., 0.])
    """
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.array([len(t & set(row.tolist())) for t, row in zip(truth, order, strict=True)], dtype=float)


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


def recent_popularity(
    times: np.ndarray,
    items: np.ndarray,
    n_items: int,
    at: np.ndarray,
    window_ms: float = POP_WINDOW_DAYS * 24 * HOUR_MS,
    half_life_ms: float = POP_HALF_LIFE_HOURS * HOUR_MS,
) -> np.ndarray:
    """(len(at), n_items): per time ``at[i]``, the decayed count of interactions in ``[at[i] - window, at[i])``.

    ``times`` must be sorted; each interaction weighs ``0.5 ** ((at - t) / half_life)``.

    >>> recent_popularity(np.array([0, 10, 20]), np.array([0, 1, 1]), 2, np.array([20]), 15, 10)
    array([[0. , 0.5]])
    """
    out = np.zeros((len(at), n_items))
    for i, a in enumerate(at.tolist()):
        lo, hi = np.searchsorted(times, [a - window_ms, a], side="left")
        w = 0.5 ** ((a - times[lo:hi]) / half_life_ms)
        out[i] = np.bincount(items[lo:hi], weights=w, minlength=n_items)
    return out


def oracle_logits(
    users: Sequence[str], arts: pd.Index, truth_articles: pd.DataFrame, prefs: pd.DataFrame
) -> np.ndarray:
    """(len(users), len(arts)): each user's true preference per article (quality, brand, category and
    topic terms; the click logit less the terms that do not depend on the article). NaN where the
    truth has no row.
    """
    ta = truth_articles.set_index("article_id").reindex(arts)
    known = ta["quality_logit"].notna().to_numpy()
    brand = ta["brand_index"].fillna(0).to_numpy(dtype=np.int64)
    cat = ta["category_index"].fillna(0).to_numpy(dtype=np.int64)
    topic = ta["topic"].fillna(0).to_numpy(dtype=np.int64)
    out = np.tile(ta["quality_logit"].to_numpy(dtype=float), (len(users), 1))
    p = prefs[prefs["user_id"].isin(set(users))]
    row_of = {u: i for i, u in enumerate(users)}
    for kind, col in (("brand", brand), ("category", cat), ("topic", topic)):
        k = p[p["kind"] == kind]
        width = int(k["key"].max()) + 1 if len(k) else 1
        m = np.full((len(users), width), np.nan)
        m[k["user_id"].map(row_of).to_numpy(), k["key"].to_numpy(dtype=np.int64)] = k["logit"].to_numpy()
        out += m[:, np.minimum(col, width - 1)]
    out[:, ~known] = np.nan
    return out


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
    r = sparse.csr_matrix((np.full(len(ui), INTERACTION), (ui, ai)), shape=(len(users), len(arts)))
    n_components = max(1, min(16, len(arts) - 1, len(users) - 1))
    nmf = NMF(n_components=n_components, init="nndsvda", max_iter=150, random_state=seed)
    w = nmf.fit_transform(r)
    h = nmf.components_
    brand_cat = items.set_index("article_id").reindex(arts)[["brand", "category"]].fillna("?")
    onehot = pd.get_dummies(brand_cat, prefix_sep="=", dtype=float)
    content = onehot.to_numpy()
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
    # every interaction before a user's split time is known then (whoever's it is)
    by_t = cons.sort_values("t", kind="stable")
    all_t = by_t["t"].to_numpy(dtype=np.int64)
    all_a = arts.get_indexer(by_t["article_id"])
    sim_truth = _load_truth(ctx)
    # per user and weight: hits of the hybrid; and of the single rankers
    hyb_hits = np.zeros((len(uidx), len(WEIGHTS)))
    single = {name: np.zeros(len(uidx)) for name in RANKERS if name != "hybrid"}
    if sim_truth is None:
        del single["oracle"]
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
        recent = recent_popularity(all_t, all_a, len(arts), span["min"].to_numpy()[sl])
        recent_n = _norm(recent)
        for j, (w_cf, w_cb, w_pop) in enumerate(WEIGHTS):
            hyb_hits[sl, j] = hits_at_k(w_cf * cf + w_cb * cb + w_pop * recent_n + penalty, t, K)
        single["collaborative"][sl] = hits_at_k(cf + penalty, t, K)
        single["content"][sl] = hits_at_k(cb + penalty, t, K)
        single["popularity"][sl] = hits_at_k(np.tile(pop, (len(u), 1)) + penalty, t, K)
        single["recent_popularity"][sl] = hits_at_k(recent + penalty, t, K)
        if sim_truth is not None:
            logits = oracle_logits(eval_users[sl], arts, *sim_truth)
            single["oracle"][sl] = hits_at_k(np.nan_to_num(logits, nan=-1e6) + penalty, t, K)

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
    table = comparison(models, f"precision@{K}")
    evaluation = {
        "split": f"leave-last-{LEAVE_LAST}-per-user",
        "k": K,
        "eligible_users": len(eval_users),
        "users": len(uidx),
        "candidates": "articles alive while the user read the held-out ones, not consumed in training",
        "tuning": "weights cross-fitted over two seeded halves of the users",
        "recent_popularity": {"window_days": POP_WINDOW_DAYS, "half_life_hours": POP_HALF_LIFE_HOURS},
        "ground_truth": sim_truth is not None,
        "models": models,
        "table": table,
        "hybrid_minus_popularity_precision": {"mean": float(diff.mean()), "ci95": list(diff_ci), "verdict": verdict},
    }
    params = {
        "weights": best_w,
        "k": K,
        "n_components": n_components,
        "split": evaluation["split"],
        "interaction": INTERACTION,
        "popularity": {"half_life_hours": POP_HALF_LIFE_HOURS, "window_days": POP_WINDOW_DAYS},
        "content_vocabulary": [str(c) for c in onehot.columns],
        "item_ids": arts.tolist(),
        "item_factors": h.T.round(6).tolist(),
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
    # The worker serves the production version: move it unless the hybrid does worse than popularity.
    promoted = verdict != "worse"
    if promoted:
        ctx.registry.set_alias(
            "recommendation",
            PRODUCTION,
            mv.version,
            reason=f"hybrid precision@{K} against popularity: {verdict}",
            evidence={"hybrid_minus_popularity_precision": {"mean": float(diff.mean()), "ci95": list(diff_ci)}},
        )
    result = {
        "metrics": metrics,
        "weights": best_w,
        "promoted": promoted,
        "evaluation": evaluation,
        "cold_start_item_share": cold_items,
        "version": mv.version,
        "beats_popularity": verdict == "better",
        "summary": {
            "split": evaluation["split"],
            "users": len(uidx),
            **{f"{n} precision@{K}": _ci_text(v, f"precision@{K}") for n, v in models.items()},
            "hybrid vs popularity": verdict,
            "ground_truth": "the simulator's (oracle ranking)" if sim_truth is not None else "no ground truth",
            "weights": best_w,
            "cold_start_item_share": round(cold_items, 3),
        },
    }
    write_json(ctx.reports_dir / "recommendation.json", result)
    (ctx.reports_dir / "recommendation.md").write_text(format_comparison(table, len(uidx)))
    return result


def _metrics(hits: np.ndarray, n_held: np.ndarray, seed: int) -> dict[str, Any]:
    prec, rec = hits / K, hits / n_held
    return {
        f"precision@{K}": float(prec.mean()),
        "ci95": list(bootstrap_ci(prec, seed)),
        f"recall@{K}": float(rec.mean()),
        "recall_ci95": list(bootstrap_ci(rec, seed)),
    }


def comparison(models: Mapping[str, Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows of the recommendation table: popularity, recent popularity, ours (the hybrid), oracle.

    Each with its ``metric``, 95 % interval and ratios to popularity and to the oracle (None
    without ground truth). The goal: ours >= 1.5 x popularity and >= 0.7 x oracle.
    """
    pop = models["popularity"][metric]
    oracle = models["oracle"][metric] if "oracle" in models else None
    rows = []
    for name, label in (
        ("popularity", "popularity"),
        ("recent_popularity", "recent-popularity"),
        ("hybrid", "ours (hybrid)"),
        ("oracle", "oracle"),
    ):
        if name not in models:
            rows.append({"ranker": label, "value": None, "ci95": None, "vs_popularity": None, "vs_oracle": None})
            continue
        v = models[name][metric]
        rows.append(
            {
                "ranker": label,
                "value": v,
                "ci95": models[name]["ci95"],
                "vs_popularity": v / pop if pop > 0 else None,
                "vs_oracle": v / oracle if oracle else None,
            }
        )
    return rows


def format_comparison(rows: Sequence[Mapping[str, Any]], users: int) -> str:
    """The table as Markdown (``reports/recommendation.md``)."""
    lines = [
        f"# Recommendation: precision@{K}, leave-last-{LEAVE_LAST} per user, {users} users",
        "",
        "| ranker | precision@10 | 95 % CI | × popularity | × oracle |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["value"] is None:
            lines.append(f"| {r['ranker']} | no ground truth | | | |")
            continue
        lo, hi = r["ci95"]
        vp = "–" if r["vs_popularity"] is None else f"{r['vs_popularity']:.2f}"
        vo = "no ground truth" if r["vs_oracle"] is None else f"{r['vs_oracle']:.2f}"
        lines.append(f"| {r['ranker']} | {r['value']:.4f} | [{lo:.4f}, {hi:.4f}] | {vp} | {vo} |")
    return "\n".join(lines) + "\n"


def _ci_text(m: dict[str, Any], key: str) -> str:
    lo, hi = m["ci95"]
    return f"{m[key]:.4f} [{lo:.4f}, {hi:.4f}]"

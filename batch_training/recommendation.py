"""Step 4 (recommendation): exposure rate times the user's collaborative and content affinities.

Interactions = article views, clicks and video plays. Split: leave the last ``LEAVE_LAST``
distinct articles of each user out (by the time the user first consumed them); a user is
eligible with at least ``LEAVE_LAST + MIN_TRAIN`` distinct articles, and every eligible user is
evaluated. The model is fit on everything else (all users' other interactions). For each user,
the candidates are the articles alive while the user read the held-out ones (some event of the
article between its first and last event spans them: news articles are short-lived) and not
consumed in training; precision@K / recall@K are computed against the held-out articles. Every
ranker sees what was known at the user's split time (their first held-out read).

Rankers compared on the same users and candidates:

- ``popularity``: interactions per article over the whole training set;
- ``recent_popularity``: interactions of every user in the ``POP_WINDOW_DAYS`` before the user's
  split time, each weighted ``0.5 ** (age / POP_HALF_LIFE_HOURS)``: what a "trending now" box shows;
- ``exposure``: the articles' impressions + views per hour over the last whole hours
  (:func:`stream.models.recommend.exposure_rate`): how much the site shows them now;
- ``collaborative`` (NMF), ``content`` (cosine of brand/category profiles);
- ``hybrid`` (ours, what the worker serves): :func:`stream.models.recommend.blend`, ``log`` of the
  exposure rate plus the weighted collaborative and content parts, each max-normalised over the
  user's candidates. Its exposure window and weights (:data:`CONFIGS`) are the best on a
  validation split, the same leave-last split inside the training reads (NMF refit without
  them); the test split only measures the chosen one;
- ``oracle`` (simulated histories only): each user's true chance to read each article at the
  split time, ``log exposure + preference`` (:func:`oracle_scores`), from the simulator's truth
  (``truth_articles``, ``truth_user_preferences``); "no ground truth" otherwise.

Each metric has a 95 % bootstrap interval over users; the hybrid is compared with popularity on
the same users (paired bootstrap of the per-user difference): it "beats popularity" only if that
interval lies above 0. The registered model (JSON: weights, exposure window, item factors,
content vocabulary) becomes the ``production`` version unless it does significantly worse than
popularity. The worker folds a user's vector in from their reads
(:func:`stream.models.recommend.fold_in`) and ranks with the same :func:`~stream.models.recommend.blend`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from batch_training.context import Context, Skipped
from batch_training.modeling import data_fingerprint, register, write_json
from stream.models.recommend import POP_FLOOR, blend
from stream.models.registry import PRODUCTION

LEAVE_LAST = 2
MIN_TRAIN = 3
MIN_USERS = 20
K = 10
#: the hybrid's (exposure window in hours, collaborative weight, content weight), chosen on validation
CONFIGS: tuple[tuple[float, float, float], ...] = tuple(
    (wh, w_cf, w_cb) for wh in (6.0, 12.0, 24.0) for w_cf in (0.0, 0.5, 1.0) for w_cb in (0.0, 0.5, 1.0)
)
#: when too few users have a validation split
FALLBACK_CONFIG = (12.0, 0.0, 0.0)
BOOTSTRAP = 1000
USER_BATCH = 2_000
#: recent popularity: interactions of the last days before the split, halved every POP_HALF_LIFE_HOURS
POP_WINDOW_DAYS = 3.0
POP_HALF_LIFE_HOURS = 12.0
#: the value of one interaction in the user x article matrix (and in the worker's fold-in)
INTERACTION = float(np.log1p(1.0))
HOUR_MS = 3_600_000
RANKERS = ("popularity", "recent_popularity", "exposure", "collaborative", "content", "hybrid", "oracle")


def _load(ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
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
    # the article state's hourly buckets, as the worker reads them: impressions + views per hour
    hourly = ctx.ch.query_df(
        "SELECT article_id, intDiv(toUnixTimestamp64Milli(event_time), 3600000) AS hour, count() AS n "
        "FROM {db}.events WHERE article_id IS NOT NULL AND event_type IN ('article_impression', 'article_view') "
        "GROUP BY article_id, hour"
    )
    return cons, items, hourly


def _load_truth(ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(articles, user preferences) of the simulator's truth, or None (no ground truth)."""
    if not (ctx.has_table_rows("truth_articles") and ctx.has_table_rows("truth_user_preferences")):
        return None
    arts = ctx.ch.query_df(
        "SELECT article_id, toUnixTimestamp64Milli(publish_time) AS publish_time, brand_index, category_index, "
        "topic, quality_logit, popularity_logit, popularity_decay_hours, feed_max_age_hours FROM {db}.truth_articles"
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


def hourly_counts(rows: pd.DataFrame, arts: pd.Index) -> tuple[int, np.ndarray]:
    """(first hour ``h0``, ``cum``): ``cum[a, h - h0]`` = article ``a``'s impressions + views before hour ``h``.

    ``rows`` has one row per (article_id, hour, n) as the step's query returns them.
    """
    if rows.empty:
        return 0, np.zeros((len(arts), 2))
    h0, h1 = int(rows["hour"].min()), int(rows["hour"].max())
    m = np.zeros((len(arts), h1 - h0 + 2))
    a = arts.get_indexer(pd.Index(rows["article_id"]))
    keep = a >= 0
    np.add.at(m, (a[keep], rows["hour"].to_numpy(dtype=np.int64)[keep] - h0 + 1), rows["n"].to_numpy(dtype=float)[keep])
    return h0, np.cumsum(m, axis=1)


def exposure_rates(
    hourly: tuple[int, np.ndarray], first_t: np.ndarray, at: np.ndarray, window_hours: float
) -> np.ndarray:
    """(len(at), n_items): :func:`stream.models.recommend.exposure_rate` of every article at each time ``at``."""
    h0, cum = hourly
    n_h = cum.shape[1] - 1
    end_h = at // HOUR_MS
    start_h = end_h - int(window_hours)
    col = lambda h: np.clip(h - h0, 0, n_h)  # noqa: E731 - cum's column of "before hour h"
    n = cum[:, col(end_h)].T - cum[:, col(start_h)].T
    exposed = end_h[:, None] * HOUR_MS - np.maximum(start_h[:, None] * HOUR_MS, first_t[None, :])
    return np.where(exposed > 0, n * HOUR_MS / np.maximum(exposed, HOUR_MS // 2), 0.0)


def oracle_scores(
    users: Sequence[str],
    arts: pd.Index,
    truth_articles: pd.DataFrame,
    prefs: pd.DataFrame,
    at: np.ndarray,
) -> np.ndarray:
    """(len(users), len(arts)): how likely each user reads each article at their time ``at``.

    ``log exposure + preference``: the simulator's feed and direct visits draw an article in
    proportion to its exposure ``exp(popularity_logit - age / popularity_decay_hours)`` (0 past
    ``feed_max_age_hours`` or before it is published), and a direct visit then picks it in
    proportion to ``exp(preference)`` (:func:`oracle_logits`). -inf where the article is not
    shown at ``at``; NaN where the truth has no row.
    """
    ta = truth_articles.set_index("article_id").reindex(arts)
    pub = _ms(ta["publish_time"])
    age_h = (at[:, None] - pub[None, :]) / HOUR_MS
    decay = ta["popularity_decay_hours"].to_numpy(dtype=float)[None, :]
    shown = (age_h >= 0) & (age_h < ta["feed_max_age_hours"].to_numpy(dtype=float)[None, :])
    log_exposure = np.where(shown, ta["popularity_logit"].to_numpy(dtype=float)[None, :] - age_h / decay, -np.inf)
    return log_exposure + oracle_logits(users, arts, truth_articles, prefs)


def _ms(col: pd.Series) -> np.ndarray:
    """Epoch milliseconds of a time column (ClickHouse returns datetimes, the test frames integers)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return (col.astype("int64") // (1_000_000 if str(col.dtype).startswith("datetime64[ns") else 1)).to_numpy(
            dtype=np.int64
        )
    return col.to_numpy(dtype=np.int64)


class _Data:
    """What every split scores with: ids, content vectors, alive spans, exposure counts, reads by time."""

    def __init__(self, cons: pd.DataFrame, items: pd.DataFrame, hourly_rows: pd.DataFrame) -> None:
        self.users = pd.Index(sorted(cons["user_id"].unique()))
        self.arts = pd.Index(sorted(items["article_id"].unique()))
        it = items.set_index("article_id").reindex(self.arts)
        brand_cat = it[["brand", "category"]].fillna("?")
        self.onehot = pd.get_dummies(brand_cat, prefix_sep="=", dtype=float)
        content = self.onehot.to_numpy()
        self.content = content / np.linalg.norm(content, axis=1, keepdims=True).clip(1e-9)
        self.alive_from = it["first_t"].to_numpy(dtype=np.int64)
        self.alive_to = it["last_t"].to_numpy(dtype=np.int64)
        self.hourly = hourly_counts(hourly_rows, self.arts)
        # every read before a user's split time is known then (whoever's it is)
        by_t = cons.sort_values("t", kind="stable")
        self.all_t = by_t["t"].to_numpy(dtype=np.int64)
        self.all_a = self.arts.get_indexer(by_t["article_id"])


def _fit(data: _Data, train: pd.DataFrame, seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """(user x article matrix, NMF user factors, item factors) of the training reads."""
    from scipy import sparse
    from sklearn.decomposition import NMF

    ui, ai = data.users.get_indexer(train["user_id"]), data.arts.get_indexer(train["article_id"])
    r = sparse.csr_matrix((np.full(len(ui), INTERACTION), (ui, ai)), shape=(len(data.users), len(data.arts)))
    n_components = max(1, min(16, len(data.arts) - 1, len(data.users) - 1))
    nmf = NMF(n_components=n_components, init="nndsvda", max_iter=150, random_state=seed)
    w = nmf.fit_transform(r)
    return r, w, nmf.components_


def _row_norm(a: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """``a`` max-normalised over each row's candidates (the worker normalises over a request's)."""
    m = np.where(cand, a, -np.inf).max(axis=1, keepdims=True)
    return a / np.where(np.isfinite(m) & (m > 0), m, 1.0)


def _score_split(
    data: _Data,
    train: pd.DataFrame,
    test: pd.DataFrame,
    seed: int,
    configs: Sequence[tuple[float, float, float]],
    sim_truth: tuple[pd.DataFrame, pd.DataFrame] | None,
    baselines: bool,
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray], tuple[Any, np.ndarray, np.ndarray]]:
    """Per evaluated user: hits@K of the hybrid under each (window_hours, w_cf, w_content) config and,
    with ``baselines``, of the single rankers (and the oracle with the simulator's truth)."""
    arts = data.arts
    eval_users = sorted(test["user_id"].unique())
    r, w, h = _fit(data, train, seed)
    held: dict[str, set[int]] = {}
    for user, a in zip(test["user_id"].tolist(), arts.get_indexer(test["article_id"]).tolist(), strict=True):
        held.setdefault(user, set()).add(a)
    span = test.groupby("user_id")["t"].agg(["min", "max"]).reindex(eval_users)
    uidx = data.users.get_indexer(eval_users)
    truth = [held[u] for u in eval_users]
    pop = np.asarray(r.sum(axis=0)).ravel() / INTERACTION
    hyb = np.zeros((len(uidx), len(configs)))
    single = {name: np.zeros(len(uidx)) for name in RANKERS if name != "hybrid"}
    if sim_truth is None or not baselines:
        single.pop("oracle")
    if not baselines:
        single = {}
    windows = sorted({c[0] for c in configs})
    for lo in range(0, len(uidx), USER_BATCH):
        sl = slice(lo, lo + USER_BATCH)
        u, t = uidx[sl], truth[sl]
        at = span["min"].to_numpy(dtype=np.int64)[sl]
        lo_t, hi_t = at[:, None], span["max"].to_numpy(dtype=np.int64)[sl, None]
        # candidates: articles not read in training and alive while the user read the held-out ones
        cand = ~((r[u].toarray() > 0) | (data.alive_from[None, :] > hi_t) | (data.alive_to[None, :] < lo_t))
        penalty = np.where(cand, 0.0, -np.inf)
        cf = _row_norm(w[u] @ h, cand)
        prof = np.asarray(r[u] @ data.content)
        prof /= np.linalg.norm(prof, axis=1, keepdims=True).clip(1e-9)
        cb = _row_norm(prof @ data.content.T, cand)
        rates = {wh: _row_norm(exposure_rates(data.hourly, data.alive_from, at, wh), cand) for wh in windows}
        for j, (wh, w_cf, w_cb) in enumerate(configs):
            hyb[sl, j] = hits_at_k(blend(rates[wh], cb, cf, w_cf, w_cb) + penalty, t, K)
        if not baselines:
            continue
        single["exposure"][sl] = hits_at_k(rates[configs[0][0]] + penalty, t, K)  # the hybrid without personal parts
        single["collaborative"][sl] = hits_at_k(cf + penalty, t, K)
        single["content"][sl] = hits_at_k(cb + penalty, t, K)
        single["popularity"][sl] = hits_at_k(np.tile(pop, (len(u), 1)) + penalty, t, K)
        recent = recent_popularity(data.all_t, data.all_a, len(arts), at)
        single["recent_popularity"][sl] = hits_at_k(recent + penalty, t, K)
        if sim_truth is not None:
            logits = oracle_scores(eval_users[sl], arts, *sim_truth, at)
            single["oracle"][sl] = hits_at_k(np.nan_to_num(logits, nan=-1e6, neginf=-1e6) + penalty, t, K)
    return eval_users, hyb, single, (r, w, h)


def recommendation(ctx: Context) -> dict[str, Any]:
    seed = ctx.profile.seed
    cons, items, hourly_rows = _load(ctx)
    if cons.empty:
        raise Skipped("no article views, clicks or video plays to learn from")
    train, test = leave_last_n(cons)
    eval_users = sorted(test["user_id"].unique())
    if len(eval_users) < MIN_USERS:
        raise Skipped(
            f"too few users to evaluate: {len(eval_users)} with >= {LEAVE_LAST + MIN_TRAIN} distinct "
            f"articles (needs {MIN_USERS})"
        )
    data = _Data(cons, items, hourly_rows)
    sim_truth = _load_truth(ctx)
    # Validation: the same split once more inside the training reads; the hybrid's config is the
    # best there, and the test split only measures it.
    fit_v, val = leave_last_n(train)
    if val["user_id"].nunique() >= MIN_USERS:
        _, val_hits, _, _ = _score_split(data, fit_v, val, seed, CONFIGS, None, baselines=False)
        means = val_hits.mean(axis=0)
        best = int(max(range(len(CONFIGS)), key=lambda j: (means[j], -CONFIGS[j][1] - CONFIGS[j][2])))
    else:
        best = CONFIGS.index(FALLBACK_CONFIG)
    window_h, w_cf, w_cb = CONFIGS[best]
    eval_users, hyb, single, (r, w, h) = _score_split(data, train, test, seed, [CONFIGS[best]], sim_truth, True)
    users, arts = data.users, data.arts
    hybrid = hyb[:, 0]
    pop = np.asarray(r.sum(axis=0)).ravel()
    n_components = h.shape[0]
    held_n = test.groupby("user_id")["article_id"].nunique().reindex(eval_users)
    n_held = held_n.to_numpy(dtype=float)
    models: dict[str, Any] = {}
    for j, (name, hits) in enumerate({"hybrid": hybrid, **single}.items()):
        models[name] = _metrics(hits, n_held, seed + j)
    diff = hybrid / K - single["popularity"] / K
    diff_ci = bootstrap_ci(diff, seed + 99)
    verdict = "better" if diff_ci[0] > 0 else ("worse" if diff_ci[1] < 0 else "no significant difference")
    best_w = {"cf": w_cf, "content": w_cb, "popularity": 1.0}
    cold_items = float((pop == 0).mean())
    table = comparison(models, f"precision@{K}")
    evaluation = {
        "split": f"leave-last-{LEAVE_LAST}-per-user",
        "k": K,
        "eligible_users": len(eval_users),
        "users": len(eval_users),
        "candidates": "articles alive while the user read the held-out ones, not consumed in training",
        "tuning": "window and weights: the best on a validation split (the same split inside the training reads)",
        "hybrid_config": {"window_hours": window_h, "cf": w_cf, "content": w_cb},
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
        "popularity": {"window_hours": window_h, "floor": POP_FLOOR},
        "content_vocabulary": [str(c) for c in data.onehot.columns],
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
            "users": len(eval_users),
            **{f"{n} precision@{K}": _ci_text(v, f"precision@{K}") for n, v in models.items()},
            "hybrid vs popularity": verdict,
            "ground_truth": "the simulator's (oracle ranking)" if sim_truth is not None else "no ground truth",
            "weights": best_w,
            "cold_start_item_share": round(cold_items, 3),
        },
    }
    write_json(ctx.reports_dir / "recommendation.json", result)
    (ctx.reports_dir / "recommendation.md").write_text(format_comparison(table, len(eval_users)))
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

"""Step 4 (recommendation): hybrid of NMF collaborative filtering and content-based cosine similarity.

Interactions = article views, clicks and video plays. Holdout = the last ``HOLDOUT_DAYS`` days:
for each evaluated user, rank the articles shown in the holdout that the user had not consumed
before, and compare with what they did consume. Articles unseen in training have no CF factors
(new articles, item cold start): the content part (brand + category) scores them. Users without
history (user cold start) get the popularity ranking. The CF/content weight is tuned on half of
the evaluated users and reported on the other half, against a popularity baseline.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from batch_training.context import Context
from batch_training.modeling import data_fingerprint, register, write_json

HOLDOUT_DAYS = 3
K = 10
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _load(ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    inter = ctx.ch.query_df(
        "SELECT user_id, article_id, toUnixTimestamp64Milli(event_time) AS t, event_type FROM {db}.events "
        "WHERE article_id IS NOT NULL AND event_type IN "
        "('article_view', 'article_click', 'video_play', 'article_impression')")
    items = ctx.ch.query_df("SELECT article_id, any(brand) AS brand, any(category) AS category FROM {db}.events "
                            "WHERE article_id IS NOT NULL GROUP BY article_id")
    return inter, items, int(inter["t"].max())


def _precision_recall(scores: np.ndarray, truth: list[set[int]], k: int) -> tuple[float, float]:
    top = np.argsort(-scores, axis=1)[:, :k]
    p = [len(truth[i] & set(top[i].tolist())) / k for i in range(len(truth))]
    r = [len(truth[i] & set(top[i].tolist())) / max(len(truth[i]), 1) for i in range(len(truth))]
    return float(np.mean(p)), float(np.mean(r))


def _norm(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return a / np.where(m > 0, m, 1.0)


def recommendation(ctx: Context) -> dict[str, Any]:
    from scipy import sparse
    from sklearn.decomposition import NMF

    seed = ctx.profile.seed
    inter, items, end = _load(ctx)
    cut = end - HOLDOUT_DAYS * 86_400_000
    shown = inter[(inter["event_type"] == "article_impression") & (inter["t"] > cut)]
    cons = inter[inter["event_type"] != "article_impression"]
    train, test = cons[cons["t"] <= cut], cons[cons["t"] > cut]
    users = pd.Index(sorted(train["user_id"].unique()))
    arts = pd.Index(sorted(items["article_id"].unique()))
    ui = users.get_indexer(train["user_id"])
    ai = arts.get_indexer(train["article_id"])
    r = sparse.csr_matrix((np.log1p(np.ones(len(ui))), (ui, ai)), shape=(len(users), len(arts)))
    r.sum_duplicates()
    nmf = NMF(n_components=16, init="nndsvda", max_iter=150, random_state=seed)
    w = nmf.fit_transform(r)
    h = nmf.components_
    # content vectors: one-hot brand + category, L2-normalised
    content = pd.get_dummies(items.set_index("article_id").reindex(arts)[["brand", "category"]].fillna("?"),
                             dtype=float).to_numpy()
    content /= np.linalg.norm(content, axis=1, keepdims=True).clip(1e-9)
    cand = arts.get_indexer(sorted(shown["article_id"].unique()))
    pop_counts = np.bincount(ai, minlength=len(arts)).astype(float)
    trained_items = pop_counts > 0
    # evaluated users: history in training and consumption in the holdout
    truth_by_user = test.groupby("user_id")["article_id"].agg(set)
    eval_users = [u for u in truth_by_user.index if u in users]
    rng = np.random.default_rng(seed)
    eval_users = sorted(rng.choice(eval_users, min(len(eval_users), 3000), replace=False).tolist())
    uidx = users.get_indexer(eval_users)
    seen = r[uidx][:, cand].toarray() > 0
    cand_pos = {a: i for i, a in enumerate(cand.tolist())}
    truth = []
    for u, row in zip(eval_users, seen, strict=True):
        s = {cand_pos[a] for a in arts.get_indexer(list(truth_by_user[u])) if a in cand_pos}
        truth.append({i for i in s if not row[i]})
    keep = np.array([len(t) > 0 for t in truth])
    uidx, seen = uidx[keep], seen[keep]
    truth = [t for t, k2 in zip(truth, keep, strict=True) if k2]
    cf = _norm(w[uidx] @ h[:, cand])
    prof = np.asarray(r[uidx] @ content)
    prof /= np.linalg.norm(prof, axis=1, keepdims=True).clip(1e-9)
    cb = _norm(prof @ content[cand].T)
    pop = np.tile(pop_counts[cand], (len(uidx), 1))
    penalty = np.where(seen, -1e9, 0.0)
    half = len(uidx) // 2
    val, tst = slice(0, half), slice(half, None)
    tune = {wt: _precision_recall((wt * cf + (1 - wt) * cb + penalty)[val], truth[val], K)[0] for wt in WEIGHTS}
    best_w = max(tune, key=lambda k2: (tune[k2], -abs(k2 - 0.5)))
    hyb = best_w * cf + (1 - best_w) * cb + penalty
    res = {
        "hybrid": _precision_recall(hyb[tst], truth[tst], K),
        "collaborative": _precision_recall((cf + penalty)[tst], truth[tst], K),
        "content": _precision_recall((cb + penalty)[tst], truth[tst], K),
        "popularity": _precision_recall((pop + penalty)[tst], truth[tst], K),
    }
    metrics = {f"{n}_{m}@{K}": v[j] for n, v in res.items() for j, m in enumerate(("precision", "recall"))}
    cold_items = float((~trained_items[cand]).mean())
    params = {"weight_cf": best_w, "k": K, "n_components": 16, "holdout_days": HOLDOUT_DAYS,
              "item_ids": arts.tolist(), "item_factors": h.T.round(5).tolist()}

    def write(path: Any) -> None:
        path.write_text(json.dumps(params))
        np.savez_compressed(path.parent / "user_factors.npz", user_ids=np.array(users.tolist()), factors=w)

    mv = register(ctx.registry, "recommendation", "json", write, features=None, metrics=metrics,
                  window={"holdout_start_ms": cut, "end_ms": end},
                  rows={"interactions": len(train), "users": len(users), "items": len(arts)},
                  fingerprint=data_fingerprint(train, ["user_id", "article_id", "t"]))
    result = {"metrics": metrics, "weight_cf": best_w, "tuning": tune, "eval_users": len(uidx),
              "candidates": len(cand), "cold_start_item_share": cold_items, "version": mv.version,
              "beats_popularity": bool(res["hybrid"][0] > res["popularity"][0]),
              "summary": {**{k2: round(v, 4) for k2, v in metrics.items()}, "weight_cf": best_w,
                          "cold_start_item_share": round(cold_items, 3)}}
    write_json(ctx.reports_dir / "recommendation.json", result)
    return result

"""A warm start (``fit_xgb(base=...)``): a model of a changed world corrects its base from few new rows.

Seeded synthetic data: the label's logit is a sum of many features' effects (what stays: users,
articles) plus a position effect that the drift weakens (what changed). The base learnt the old
world from many rows; the new world gives few.
"""

from __future__ import annotations

import numpy as np
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from batch_training.modeling import fit_xgb

N_FEATURES = 12


def _world(n: int, position_decay: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, true probability): column 0 is the position (1..12), the others stable effects."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[:, 0] = rng.integers(1, 13, size=n)
    coef = np.linspace(0.8, 0.1, N_FEATURES - 1)
    logit = -1.2 + x[:, 1:] @ coef - position_decay * np.log(x[:, 0])
    p = 1.0 / (1.0 + np.exp(-logit))
    return x, (rng.random(n) < p).astype(int), p


def _fit(x: np.ndarray, y: np.ndarray, base: xgb.Booster | None = None) -> xgb.XGBClassifier:
    cut = int(len(y) * 0.8)
    fitted = fit_xgb(
        x[:cut], y[:cut], x[cut:], y[cut:], objective="binary:logistic", n_iter=2, cv_folds=0,
        n_estimators=150, seed=3, base=base,
    )  # fmt: skip
    return fitted.model


def test_warm_start_beats_scratch_on_a_changed_world_with_few_rows() -> None:
    x_old, y_old, _ = _world(40_000, position_decay=1.0, seed=1)
    x_new, y_new, _ = _world(3_000, position_decay=0.1, seed=2)
    x_test, y_test, p_test = _world(20_000, position_decay=0.1, seed=4)
    champion = _fit(x_old, y_old).get_booster()
    rounds = champion.num_boosted_rounds()
    warm = _fit(x_new, y_new, base=champion)
    scratch = _fit(x_new, y_new)

    def auc(model: xgb.XGBClassifier | xgb.Booster) -> float:
        booster = model if isinstance(model, xgb.Booster) else model.get_booster()
        return float(roc_auc_score(y_test, booster.inplace_predict(x_test)))

    oracle = float(roc_auc_score(y_test, p_test))
    # the champion is left as it was; the challenger holds its trees and some more
    assert champion.num_boosted_rounds() == rounds
    assert warm.get_booster().num_boosted_rounds() > rounds
    assert auc(warm) > auc(scratch) + 0.005
    assert auc(warm) > auc(champion)
    assert auc(warm) > 0.97 * oracle

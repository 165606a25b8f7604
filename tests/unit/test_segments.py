"""Online segments equal scikit-learn's pipeline (the one batch training fits) on the same user rows."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from batch_training.segmentation import PROFILE_COLUMNS
from simulator import SimConfig, generate
from stream.models.registry import ModelRegistry, RegistryError
from stream.models.segments import SegmentModel
from stream.state import USER_FEATURES
from tests.support.models import fit_segmentation, replay_rows


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """User feature rows at every session end of 300 users over 5 days."""
    events = list(generate(SimConfig(n_users=300, days=5, seed=9)).iter_events())
    return np.vstack([r for _, r in replay_rows(events)["churn"]]).astype(np.float64)


def _fit(rows: np.ndarray, k: int) -> tuple[dict[str, Any], StandardScaler, PCA, KMeans, pd.Series]:
    """The batch step's pipeline (batch_training/segmentation.py), fitted with scikit-learn."""
    frame = pd.DataFrame(rows, columns=list(USER_FEATURES.names))[PROFILE_COLUMNS].astype(float)
    return fit_segmentation(frame, k, 0, {i: f"name {i}" for i in range(k)})


def test_online_segments_equal_the_fitted_pipeline(rows: np.ndarray) -> None:
    assert len(rows) > 300
    params, scaler, pca, km, median = _fit(rows, k=4)
    # rows with missing values (NaN: a feature without data, as a new user has)
    probe = rows.copy()
    rng = np.random.default_rng(4)
    probe[rng.random(probe.shape) < 0.1] = np.nan
    frame = pd.DataFrame(probe, columns=list(USER_FEATURES.names))[PROFILE_COLUMNS]
    x = np.log1p(np.clip(frame.fillna(median).fillna(0.0).to_numpy(), 0, None))
    expected = km.predict(pca.transform(scaler.transform(x)))

    model = SegmentModel.from_params("3", json.loads(json.dumps(params)), USER_FEATURES.names)
    got = model.assign(probe)
    assert got.tolist() == expected.tolist()
    assert len(set(got.tolist())) == 4
    assert model.name(int(got[0])) == f"name {int(got[0])}"


def test_a_registered_segmentation_loads_and_a_wrong_one_is_refused(rows: np.ndarray, tmp_path) -> None:
    params, *_ = _fit(rows, k=3)
    registry = ModelRegistry(tmp_path)
    mv = registry.register("segmentation", "json", lambda p: p.write_text(json.dumps(params)), {})
    model = SegmentModel.load(mv, USER_FEATURES.names)
    assert model.version == mv.version and model.columns == tuple(PROFILE_COLUMNS)
    with pytest.raises(RegistryError, match="lack"):
        SegmentModel.from_params("1", params, USER_FEATURES.names[:10])
    with pytest.raises(RegistryError, match="transform"):
        SegmentModel.from_params("1", {**params, "transform": "x"}, USER_FEATURES.names)

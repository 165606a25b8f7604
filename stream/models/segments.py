"""Online segments: the registry's segmentation model applied to user feature rows.

Batch training (``batch_training/segmentation.py``) fits, on one row per user, the pipeline
``fill missing with the training medians -> log1p(clip(x, 0)) -> standard scaling -> PCA -> nearest
K-Means centroid`` and registers its parameters as JSON (no pickle). :class:`SegmentModel` applies
the same arithmetic to a batch of user feature rows with numpy alone, so the worker assigns each
user the segment batch training would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.models.registry import ModelVersion, RegistryError

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SegmentModel:
    """A fitted segmentation: which feature columns it reads and its scaler, PCA and centroids."""

    version: str
    columns: tuple[str, ...]
    #: where each of ``columns`` sits in the rows given to :meth:`assign`
    index: npt.NDArray[np.intp]
    fill: Matrix
    mean: Matrix
    scale: Matrix
    components: Matrix
    pca_mean: Matrix
    centroids: Matrix
    names: Mapping[int, str]

    @classmethod
    def from_params(cls, version: str, params: Mapping[str, Any], row_names: Sequence[str]) -> SegmentModel:
        """The model of a registry version's parameters, for rows whose columns are ``row_names``."""
        if params.get("transform") != "log1p(clip(x, 0))":
            raise RegistryError(f"segmentation v{version}: unknown transform {params.get('transform')!r}")
        columns = tuple(params["columns"])
        missing = [c for c in columns if c not in row_names]
        if missing:
            raise RegistryError(f"segmentation v{version} reads columns the user rows lack: {missing}")
        position = {name: i for i, name in enumerate(row_names)}
        fill = [params["fill"].get(c) for c in columns]
        return cls(
            version=version,
            columns=columns,
            index=np.array([position[c] for c in columns], dtype=np.intp),
            # a column that was missing for every training user has no median: batch training fills 0
            fill=np.array([0.0 if v is None or math.isnan(float(v)) else float(v) for v in fill]),
            mean=np.asarray(params["scaler_mean"], dtype=np.float64),
            scale=np.asarray(params["scaler_scale"], dtype=np.float64),
            components=np.asarray(params["pca_components"], dtype=np.float64),
            pca_mean=np.asarray(params["pca_mean"], dtype=np.float64),
            centroids=np.asarray(params["centroids"], dtype=np.float64),
            names={int(k): str(v) for k, v in params["names"].items()},
        )

    @classmethod
    def load(cls, mv: ModelVersion, row_names: Sequence[str]) -> SegmentModel:
        return cls.from_params(mv.version, json.loads(mv.model_file.read_text()), row_names)

    def assign(self, rows: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """The segment of each row (a 2-D array of user feature rows)."""
        x = np.asarray(rows, dtype=np.float64)[:, self.index]
        x = np.where(np.isfinite(x), x, self.fill)
        x = np.log1p(np.clip(x, 0.0, None))
        projected = ((x - self.mean) / self.scale - self.pca_mean) @ self.components.T
        distances = ((projected[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        return np.asarray(distances.argmin(axis=1), dtype=np.intp)

    def name(self, segment: int) -> str:
        return self.names.get(segment, f"segment {segment}")

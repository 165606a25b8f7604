"""The supervised models' training: which training set, time column, metric and split each one uses.

What a model is (features, label, task, library) comes from the model table, ``stream.models``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from batch_training.modeling import Split, time_split
from stream.models import MODELS, Model
from stream.state import FeatureList


@dataclass(frozen=True)
class ModelSpec:
    model: Model
    table: str  # users | clicks | engagement (Parquet under data_dir/training)
    time_col: str
    primary: str  # metric the promote gate compares
    id_cols: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def features(self) -> FeatureList:
        return self.model.features

    @property
    def label(self) -> str:
        return self.model.label

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def library(self) -> str:
        return self.model.library

    def rows(self, df: pd.DataFrame) -> pd.DataFrame:
        """Rows with a defined label, in time order (stable)."""
        out = df[df[self.label].notna()] if self.task == "binary" else df[np.isfinite(df[self.label])]
        return out.sort_values([self.time_col, *self.id_cols], kind="stable").reset_index(drop=True)

    def xy(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        x = df[list(self.features.names)].to_numpy(dtype=np.float32)
        y = df[self.label].to_numpy(dtype=np.float64)
        return x, (y.astype(int) if self.task == "binary" else y)

    def split(self, df: pd.DataFrame) -> Split:
        return time_split(df[self.time_col].to_numpy())


#: model -> (training set, time column, promote metric, id columns)
_TRAINING: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "churn": ("users", "cutoff_ms", "auc", ("user_id",)),
    "conversion": ("users", "cutoff_ms", "auc", ("user_id",)),
    "click": ("clicks", "event_time_ms", "auc", ("event_id",)),
    "engagement": ("engagement", "event_time_ms", "r2", ("event_id",)),
}

SPECS: dict[str, ModelSpec] = {name: ModelSpec(model, *_TRAINING[name]) for name, model in MODELS.items()}

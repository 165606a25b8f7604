"""The supervised models: which training set, feature list, label and split each one uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from batch_training.modeling import Split, time_split
from stream.state import CHURN_FEATURES, CLICK_FEATURES, CONVERSION_FEATURES, ENGAGEMENT_FEATURES, FeatureList


@dataclass(frozen=True)
class ModelSpec:
    name: str
    table: str  # users | clicks | engagement (Parquet under data_dir/training)
    features: FeatureList
    label: str
    time_col: str
    task: str  # binary | regression
    library: str  # xgboost | lightgbm
    primary: str  # metric the promote gate compares
    id_cols: tuple[str, ...]

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


SPECS: dict[str, ModelSpec] = {
    "churn": ModelSpec("churn", "users", CHURN_FEATURES, "churned", "cutoff_ms", "binary", "xgboost", "auc",
                       ("user_id",)),
    "conversion": ModelSpec("conversion", "users", CONVERSION_FEATURES, "converted", "cutoff_ms", "binary",
                            "lightgbm", "auc", ("user_id",)),
    "click": ModelSpec("click", "clicks", CLICK_FEATURES, "clicked", "event_time_ms", "binary", "xgboost", "auc",
                       ("event_id",)),
    "engagement": ModelSpec("engagement", "engagement", ENGAGEMENT_FEATURES, "engagement", "event_time_ms",
                            "regression", "xgboost", "r2", ("event_id",)),
}

"""The one table of the models: what each predicts from which features, with which library, and when.

Everything else reads it: the worker's triggers and expected feature lists (``stream.models.scoring``,
``stream.worker.processor``), the training specs (``batch_training.specs``), the feature-list file
written by ``batch_training features``.

>>> TRIGGERS["article_impression"], MODELS["click"].label
('click', 'clicked')
>>> sorted(SERVED_FEATURES)
['churn', 'click', 'engagement']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from stream.state import CHURN_FEATURES, CLICK_FEATURES, CONVERSION_FEATURES, ENGAGEMENT_FEATURES, FeatureList


@dataclass(frozen=True)
class Model:
    """One model's identity."""

    name: str
    #: the event type on which the worker scores it; None: trained and reported, not served
    trigger: str | None
    features: FeatureList
    library: Literal["xgboost", "lightgbm"]
    #: the label column of its training set
    label: str
    task: Literal["binary", "regression"]


MODELS: Mapping[str, Model] = {
    m.name: m
    for m in (
        Model("churn", "session_end", CHURN_FEATURES, "xgboost", "churned", "binary"),
        Model("conversion", None, CONVERSION_FEATURES, "lightgbm", "converted", "binary"),
        Model("click", "article_impression", CLICK_FEATURES, "xgboost", "clicked", "binary"),
        Model("engagement", "session_start", ENGAGEMENT_FEATURES, "xgboost", "engagement", "regression"),
    )
}

#: event type -> the model it triggers
TRIGGERS: Mapping[str, str] = {m.trigger: m.name for m in MODELS.values() if m.trigger is not None}

#: the models the worker serves -> the feature list each must have been trained on
SERVED_FEATURES: Mapping[str, FeatureList] = {m.name: m.features for m in MODELS.values() if m.trigger is not None}

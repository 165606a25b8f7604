"""The one table of the models: what each predicts from which features, with which library, and when.

Everything else reads it: the worker's triggers and expected feature lists (``stream.models.scoring``,
``stream.worker.processor``), the training specs (``batch_training.specs``), the feature-list file
written by ``batch_training features``.

>>> TRIGGERS["article_impression"], MODELS["click"].label
(('click',), 'clicked')
>>> TRIGGERS["session_end"]
('churn', 'conversion', 'segment')
>>> sorted(SERVED_FEATURES), REGISTERED_AS["segment"]
(['churn', 'click', 'conversion', 'engagement', 'segment'], 'segmentation')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from stream.state import (
    CHURN_FEATURES,
    CLICK_FEATURES,
    CONVERSION_FEATURES,
    ENGAGEMENT_FEATURES,
    USER_FEATURES,
    FeatureList,
)


@dataclass(frozen=True)
class Model:
    """One model's identity."""

    name: str
    #: the event type on which the worker scores it (several models may share one); None: not served
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
        Model("conversion", "session_end", CONVERSION_FEATURES, "lightgbm", "converted", "binary"),
        Model("click", "article_impression", CLICK_FEATURES, "xgboost", "clicked", "binary"),
        Model("engagement", "session_start", ENGAGEMENT_FEATURES, "xgboost", "engagement", "regression"),
    )
}


@dataclass(frozen=True)
class Segments:
    """The unsupervised segmentation (``batch_training/segmentation.py``), served online.

    Not in :data:`MODELS` (no label, no training spec, no promote gate on a holdout): the worker
    assigns each user the nearest K-Means segment of their feature row and publishes it as model
    ``name``; batch training registers it as ``registered_as`` (JSON parameters, no pickle).
    """

    name: str
    registered_as: str
    trigger: str
    #: the rows it reads: the user feature row, of which it uses some columns
    features: FeatureList


SEGMENTS = Segments("segment", "segmentation", "session_end", USER_FEATURES)

_SERVED: tuple[tuple[str, str | None, FeatureList], ...] = (
    *((m.name, m.trigger, m.features) for m in MODELS.values()),
    (SEGMENTS.name, SEGMENTS.trigger, SEGMENTS.features),
)

#: event type -> the models it triggers, in table order (each scores the same event)
TRIGGERS: Mapping[str, tuple[str, ...]] = {
    t: tuple(name for name, trigger, _ in _SERVED if trigger == t)
    for t in dict.fromkeys(trigger for _, trigger, _ in _SERVED if trigger is not None)
}

#: the models the worker serves -> the feature list each must have been trained on
SERVED_FEATURES: Mapping[str, FeatureList] = {name: fl for name, trigger, fl in _SERVED if trigger is not None}

#: served models registered under another name in the model registry
REGISTERED_AS: Mapping[str, str] = {SEGMENTS.name: SEGMENTS.registered_as}

"""The worker's output records as types: one TypedDict per ``schemas/json/<name>.v1.json``.

They live here, next to the validator of those schemas, because every layer that builds or reads
them sits above ``stream.events``: scoring (``stream.models``) builds predictions, the processor
(``stream.worker``) decisions, :mod:`stream.events.schema` dead letters, and the sink and the
backtest read them. A key is required here exactly when its schema requires it
(``tests/test_schemas.py`` checks the keys against the files). TypedDicts are plain dicts at run
time, so the hot path pays nothing for them.

No ``from __future__ import annotations``: Python 3.11 reads ``NotRequired`` only from evaluated
annotations when it computes a TypedDict's required keys.
"""

from typing import Literal, NotRequired, TypedDict

#: The dead-letter ``error_kind`` values (the schema's enum).
ErrorKind = Literal["malformed", "oversized", "unknown_type", "invalid", "processing_error"]


class PredictionRecord(TypedDict):
    """A ``prediction`` v1 record (the predictions topic and table)."""

    schema_version: int
    prediction_id: str
    model_name: str
    model_version: str
    event_id: str
    user_id: str
    session_id: NotRequired[str]
    article_id: NotRequired[str | None]
    event_time: int
    score: float
    predicted_at: int
    feature_version: NotRequired[str]
    #: the name of a categorical score (model ``segment``: the segment's name); absent otherwise
    label: NotRequired[str]
    #: present (and true) only on a score made from a state that already held the event
    replayed: NotRequired[bool]
    #: present (and true) only on a challenger's score (the predictions-shadow topic and table)
    shadow: NotRequired[bool]


class DecisionRecord(TypedDict):
    """A ``bandit_decision`` v1 record (the decisions topic and the bandit_decisions table)."""

    schema_version: int
    decision_id: str
    request_id: str
    event_id: NotRequired[str]
    user_id: str
    context: str
    placement: str
    propensity: float
    policy: str
    arm_means: NotRequired[dict[str, float]]
    event_time: int
    decided_at: int


class RecommendedArticle(TypedDict):
    """One entry of a ``recommendation`` record, best first."""

    article_id: str
    score: float
    reason: Literal["collaborative", "content", "popular"]


class RecommendationRecord(TypedDict):
    """A ``recommendation`` v1 record: a user's top-k articles at ``session_start`` (the recommendations topic)."""

    schema_version: int
    recommendation_id: str
    user_id: str
    session_id: str
    event_id: str
    event_time: int
    model_version: str | None
    k: int
    reads: int
    recommendations: list[RecommendedArticle]
    recommended_at: int


class DeadLetterRecord(TypedDict):
    """A ``dead_letter`` v1 record: the original bytes (base64) of a rejected input and where they came from.

    The ``value_*``/``key_*`` size, hash and truncation fields are present only on a shrunk one
    (:func:`stream.events.schema.shrink_dead_letter`).
    """

    schema_version: int
    reason: str
    error_kind: ErrorKind
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp: NotRequired[int | None]
    key_b64: NotRequired[str | None]
    value_b64: str
    received_at: int
    value_truncated: NotRequired[Literal[True]]
    value_size: NotRequired[int]
    value_sha256: NotRequired[str]
    key_truncated: NotRequired[Literal[True]]
    key_size: NotRequired[int]
    key_sha256: NotRequired[str]

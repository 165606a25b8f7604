"""Micro-batched scoring with registry models: one vectorized predict per model per batch.

Pure with respect to Kafka: the worker's batch processor calls :func:`score_requests`; tests and
the offline backtest call the same code.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.events.ids import prediction_id
from stream.events.records import PredictionRecord
from stream.models.registry import ModelRegistry, ModelVersion, RegistryError, load_booster
from stream.models.segments import SegmentModel
from stream.models.table import REGISTERED_AS

log = logging.getLogger(__name__)


_xgb = threading.local()  # per thread: a reusable proxy matrix for XGBoost's in-place prediction


def inplace_predict(booster: Any, x: np.ndarray) -> np.ndarray:
    """``booster.inplace_predict(x)`` for a 2-D float32 matrix, without its fixed cost per call.

    XGBoost's ``inplace_predict`` builds a new proxy matrix per call, and each one reads the
    cgroup's CPU quota files (``/sys/fs/cgroup/...``: five file operations, 200 to 400 µs per call
    in a container or VM), which made a predict on a handful of rows cost as much as on 500; a
    batch pays it once per model. This calls the same C function with one proxy per thread
    (``XGBoosterPredictFromDense`` with a proxy handle, as XGBoost itself does when given a base
    margin): the same computation, the same scores. Falls back to ``inplace_predict`` if this
    XGBoost lacks those internals.
    """
    fast = getattr(_xgb, "fast", None)
    if fast is None:
        fast = _xgb.fast = _xgb_fast_path()
    if fast is False:
        return np.asarray(booster.inplace_predict(x))
    lib, check, proxy, args, interface, ulong = fast
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != booster.num_features():
        return np.asarray(booster.inplace_predict(x))  # XGBoost's own error for a wrong shape
    shape = ctypes.POINTER(ulong)()
    dims = ulong()
    preds = ctypes.POINTER(ctypes.c_float)()
    check(
        lib.XGBoosterPredictFromDense(
            booster.handle,
            interface(x),
            args,
            proxy.handle,
            ctypes.byref(shape),
            ctypes.byref(dims),
            ctypes.byref(preds),
        )
    )
    # XGBoost's buffer, valid until the booster's next prediction: copied out, as inplace_predict's
    # own output (built per call from a class it defines per call) costs more than the prediction
    dims_ = tuple(int(shape[i]) for i in range(dims.value))
    return np.ctypeslib.as_array(preds, shape=(int(np.prod(dims_)),)).reshape(dims_).copy()


def _xgb_fast_path() -> Any:
    """What :func:`inplace_predict` needs from XGBoost (this thread's proxy matrix, kept alive by
    the tuple), or ``False`` if this version lacks it."""
    try:
        from xgboost._data_utils import array_interface
        from xgboost.core import _LIB, _check_call, _ProxyDMatrix, c_bst_ulong, make_jcargs

        args = make_jcargs(  # inplace_predict's own arguments for its defaults
            type=0,
            training=False,
            iteration_begin=0,
            iteration_end=0,
            missing=float("nan"),
            strict_shape=False,
            cache_id=0,
        )
        return _LIB, _check_call, _ProxyDMatrix(), args, array_interface, c_bst_ulong
    except Exception:  # another XGBoost: its public call
        return False


class ScoreError(ValueError):
    """A model's output that cannot be published."""


@dataclass
class LoadedModel:
    """A production model ready to score: its booster and the feature list it was trained on.

    ``kind`` "segments": ``booster`` is a :class:`~stream.models.segments.SegmentModel`, whose
    score is the segment id and whose :meth:`label` is the segment's name.
    """

    name: str
    version: str
    kind: str
    booster: Any
    feature_version: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores for a 2-D float32 matrix (probabilities for classifiers, segment ids for segments)."""
        if self.kind == "xgboost":
            return np.asarray(inplace_predict(self.booster, x), dtype=np.float64)
        if self.kind == "segments":
            return np.asarray(self.booster.assign(x), dtype=np.float64)
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)

    def label(self, score: float) -> str | None:
        """The name of a categorical score (a segment's); None for a model whose score is a number."""
        return self.booster.name(int(score)) if self.kind == "segments" else None


class ModelSet:
    """The worker's production models; reloads a model when its alias changes.

    A model whose stored feature list does not match the worker's feature definition is refused
    (logged, counted, and the previous version keeps serving). With ``required=False`` (the
    challengers) a model without the alias is normal: it is not loaded, or unloaded once the alias
    is gone. Either way a model without the alias is not scored and the others are.

    A model is looked up in the registry under its name, or the one :data:`REGISTERED_AS` gives
    (the segmentation's JSON parameters become a :class:`SegmentModel`).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        expected_features: Mapping[str, Any],
        alias: str = "production",
        on_refused: Callable[[str, str, str], None] | None = None,
        on_loaded: Callable[[LoadedModel], None] | None = None,
        *,
        required: bool = True,
        on_unloaded: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.expected = expected_features  # model name -> FeatureList
        self.alias = alias
        self.models: dict[str, LoadedModel] = {}
        self._tokens: dict[str, int | None] = {}
        self._on_refused = on_refused
        self._on_loaded = on_loaded
        self.required = required
        self._on_unloaded = on_unloaded

    def _accept(self, name: str, mv: ModelVersion) -> str | None:
        """None if the model fits the worker's features, else the reason it does not."""
        want = self.expected[name]
        got = mv.features
        if got.get("version") != want.version or list(got.get("names", [])) != list(want.names):
            return (
                f"feature list {got.get('version')!r} ({len(got.get('names', []))} features) does not match "
                f"the worker's {want.version!r} ({len(want.names)} features)"
            )
        return None

    def _load(self, name: str, mv: ModelVersion) -> LoadedModel:
        if mv.kind == "json":  # the segmentation: its parameters, read for the rows it was fitted on
            segments = SegmentModel.load(mv, self.expected[name].names)
            return LoadedModel(name, mv.version, "segments", segments, mv.features["version"])
        return LoadedModel(name, mv.version, mv.kind, load_booster(mv), mv.features["version"])

    def refresh(self) -> list[str]:
        """Load models whose alias changed since the last call. Returns 'name:version' loaded."""
        loaded = []
        for name in self.expected:
            registered = REGISTERED_AS.get(name, name)
            token = self.registry.alias_token(registered)
            if name in self._tokens and token == self._tokens[name]:
                continue
            self._tokens[name] = token
            try:
                mv = self.registry.resolve(registered, self.alias)
            except RegistryError as exc:
                if not self.required:
                    if self.models.pop(name, None) is not None:
                        log.info("stopped scoring %s: no %r version any more", name, self.alias)
                        if self._on_unloaded:
                            self._on_unloaded(name)
                elif name not in self.models:
                    log.warning("no %s model yet: %s", name, exc)
                continue
            current = self.models.get(name)
            if current is not None and current.version == mv.version:
                continue
            reason = self._accept(name, mv)
            model = None
            if reason is None:
                try:
                    model = self._load(name, mv)
                except RegistryError as exc:
                    reason = str(exc)
            if model is None:
                log.error("refusing model %s version %s: %s", name, mv.version, reason)
                if self._on_refused:
                    self._on_refused(name, mv.version, str(reason))
                continue
            self.models[name] = model
            if self._on_loaded:
                self._on_loaded(model)
            log.info("loaded model %s version %s (%s)", name, mv.version, self.alias)
            loaded.append(f"{name}:{mv.version}")
        return loaded


@dataclass
class ScoreRequest:
    """One row to score and the event it belongs to."""

    model: str
    #: feature values in the model's feature order (python floats: one array per model is built
    #: from all rows of a batch, instead of one per row)
    row: Sequence[float]
    event: Mapping[str, Any]
    ingest_ms: int
    #: scored from a state that already held the event (a replay after a crash), not from the
    #: state the model asks for: published with ``"replayed": true`` (docs/worker.md, "Delivery")
    replayed: bool = False


@dataclass(frozen=True)
class Scored:
    """One model's rows of a batch as scored: kept for drift monitoring (stream/worker/monitor.py)."""

    model: str
    version: str
    x: np.ndarray
    scores: np.ndarray
    event_time_ms: np.ndarray


def score_shadow(
    challengers: Mapping[str, LoadedModel],
    production: Mapping[str, LoadedModel],
    requests: Sequence[ScoreRequest],
    now_ms: int,
) -> tuple[list[PredictionRecord], dict[str, str]]:
    """The challengers' scores of the rows production scored, each record marked ``"shadow": true``.

    A challenger that is the production version is not scored twice; one whose scores cannot be
    published (:class:`ScoreError`) is left out and named with its reason in the second result, so
    that a bad challenger never costs a production output.
    """
    out: list[PredictionRecord] = []
    failed: dict[str, str] = {}
    for name, model in challengers.items():
        current = production.get(name)
        if current is None or current.version == model.version:
            continue
        reqs = [r for r in requests if r.model == name]
        if not reqs:
            continue
        try:
            preds = score_requests({name: model}, reqs, now_ms)
        except ScoreError as exc:
            failed[name] = str(exc)
            continue
        for p in preds:
            p["shadow"] = True
        out += preds
    return out, failed


def score_steps(
    models: Mapping[str, LoadedModel],
    requests: Sequence[ScoreRequest],
    now_ms: int,
    scored: list[Scored] | None = None,
) -> Generator[None, None, list[PredictionRecord]]:
    """Score a batch: group rows by model, one predict call per model, build prediction records.

    Requests for a model that is not loaded are skipped (counted by the caller). A replayed request's
    record carries ``"replayed": true``; the field is absent otherwise. A score that is
    not a finite number raises :class:`ScoreError`: JSON has no NaN, and consumers of the
    predictions topic expect a number. A segment's record has its id as ``score`` and its name as
    ``label``. With ``scored``, each model's feature matrix and scores are
    appended to it.

    A generator: it yields after each model but the last (a worker's batch hands its event loop
    back there) and returns the records; :func:`score_requests` runs it through.
    """
    by_model: dict[str, list[ScoreRequest]] = {}
    for req in requests:
        by_model.setdefault(req.model, []).append(req)
    out: list[PredictionRecord] = []
    predicted = False
    for name, reqs in by_model.items():
        model = models.get(name)
        if model is None:
            continue
        if predicted:
            yield
        predicted = True
        x = np.array([r.row for r in reqs], dtype=np.float32)
        scores = model.predict(x)
        if not np.isfinite(scores).all():
            bad = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise ScoreError(
                f"model {name} version {model.version} scored event "
                f"{reqs[bad].event['event_id']!r} as {scores[bad]}, expected a finite number"
            )
        if scored is not None and model.kind != "segments":  # segment ids have no drift profile
            t = np.array([r.event["event_time"] for r in reqs], dtype=np.int64)
            scored.append(Scored(name, model.version, x, scores, t))
        labelled = model.kind == "segments"
        for req, score in zip(reqs, scores, strict=True):
            ev = req.event
            rec: PredictionRecord = {
                "schema_version": 1,
                "prediction_id": prediction_id(name, model.version, ev["user_id"], ev["event_id"]),
                "model_name": name,
                "model_version": model.version,
                "event_id": ev["event_id"],
                "user_id": ev["user_id"],
                # a str in every validated event; None only for the bare events of unit tests
                "session_id": ev.get("session_id"),  # type: ignore[typeddict-item]
                "article_id": ev.get("article_id"),
                "event_time": ev["event_time"],
                "score": float(score),
                "predicted_at": now_ms,
                "feature_version": model.feature_version,
            }
            if labelled:
                rec["label"] = model.booster.name(int(score))
            if req.replayed:
                rec["replayed"] = True
            out.append(rec)
    return out


def score_requests(
    models: Mapping[str, LoadedModel],
    requests: Sequence[ScoreRequest],
    now_ms: int,
    scored: list[Scored] | None = None,
) -> list[PredictionRecord]:
    """:func:`score_steps` at once: one predict call per model, the prediction records."""
    steps = score_steps(models, requests, now_ms, scored)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            records: list[PredictionRecord] = done.value
            return records

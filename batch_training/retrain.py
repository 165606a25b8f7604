"""``retrain`` and ``compare``: challengers trained on the latest window, judged against the champion.

``retrain`` runs the pipeline's own steps (prerequisites, features, the supervised models'
``train_model``) in the ``retrain`` workspace, with training rows limited to the latest
``window_days`` of archived events (the feature states still fold the whole history before them,
as the worker's did). Each model it trains is registered and becomes the ``challenger``; a model
the window cannot train (a single class, too few rows) is skipped with its one-line reason.

``compare`` scores champion (``production``) and challenger on the same held-out events: the rows
after both models' training windows (their validation ends), built from ClickHouse in the
``compare`` workspace. :func:`stream.monitoring.compare.paired_bootstrap` decides; with
``promote`` the challenger becomes production only if the decision is ``promote``.

Every step goes to the registry's history: registration, challenger, skip, compare, promote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from batch_training.context import Context, Skipped
from batch_training.datasets import COLS, click_labels, engagement_labels
from batch_training.features import features, prerequisites
from batch_training.modeling import write_json
from batch_training.promote import predict_version
from batch_training.specs import SPECS
from batch_training.supervised import load_table, train_model
from stream.errors import PrerequisiteError
from stream.models.registry import CHALLENGER, PRODUCTION, ModelVersion, RegistryError
from stream.monitoring.compare import Metric, default_margin, look_evidence, paired_bootstrap
from stream.monitoring.horizon import HORIZON_OUTCOMES, HorizonOutcome, labels, next_event_params, next_event_sql
from stream.state import FeatureList
from stream.state.labels import CLICK_WINDOW_MS, DAY_MS

RETRAIN = "retrain"
COMPARE = "compare"


def events_state(ctx: Context) -> dict[str, int]:
    """The events table's row count and latest event time: what training sets built from it depend on."""
    try:
        df = ctx.ch.query_df("SELECT count() AS n, toUnixTimestamp64Milli(max(event_time)) AS hi FROM {db}.events")
    except Exception as exc:
        raise PrerequisiteError(f"cannot read table {ctx.db}.events ({type(exc).__name__})") from exc
    if int(df["n"].iloc[0]) == 0:
        raise PrerequisiteError(
            f"no events in table {ctx.db}.events: the worker archives them, or `python -m stream ingest`"
        )
    return {"events": int(df["n"].iloc[0]), "latest_ms": int(df["hi"].iloc[0])}


def latest_event_ms(ctx: Context) -> int:
    return events_state(ctx)["latest_ms"]


def held_out_sets(ctx: Context, start: int) -> Context:
    """The ``compare`` workspace with training sets of the rows at or after ``start``.

    Built once and reused while the events table is unchanged and they start early enough: comparing
    every model after one retrain reads the history once, not once per model.
    """
    cctx = ctx.in_workspace(COMPARE, rows_from_ms=start)
    key = {**events_state(ctx), "profile": ctx.profile.name}
    stamp = cctx.data_dir / "held_out.json"
    if stamp.exists():
        old = json.loads(stamp.read_text())
        if old.get("key") == key and old.get("rows_from_ms", start + 1) <= start:
            return cctx
    stamp.unlink(missing_ok=True)
    features(cctx)
    stamp.write_text(json.dumps({"key": key, "rows_from_ms": start}))
    return cctx


def retrain(
    ctx: Context,
    *,
    window_days: int,
    models: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    warm_start: bool = True,
    after_drift: bool = False,
    min_drift_days: float = 0.0,
) -> dict[str, Any]:
    """Train the supervised models on the latest window; register each as the challenger.

    With ``warm_start`` an XGBoost model whose production version was trained on this code's features
    continues boosting from it (:func:`warm_start_base`): the window's few rows correct what changed
    instead of relearning users and articles from them alone.

    With ``after_drift`` the window starts no earlier than the drift the worker reports for the
    models' production versions (:func:`drift_start`): rows of the world before the change would
    teach the challenger what no longer holds. A model without a current drift streak does not
    shorten the window. While the drift began less than ``min_drift_days`` (at most ``window_days``)
    of events ago, nothing is trained: the report says ``waiting``, with the event time from which
    the window will be long enough (``until_ms``); a challenger of a few hours of the changed world
    is worse than one trained a day later (docs/monitoring.md, "How long after the drift").
    """
    names = list(models or SPECS)
    t_all = time.perf_counter()
    latest = latest_event_ms(ctx)
    start = latest - window_days * DAY_MS
    window: dict[str, Any] = {"days": window_days, "from_ms": start, "to_ms": latest}
    if after_drift:
        began = [b for b in (drift_start(ctx, name) for name in names) if b is not None]
        if began and min(began) > start:
            start = min(began)
            window |= {"from_ms": start, "drift_from_ms": start}
            log(f"{'window':<15} from the drift's first alarmed window, {(latest - start) / DAY_MS:.2f} days")
        else:
            log(f"{'window':<15} the latest {window_days} days (no drift streak began after its start)")
    rctx = ctx.in_workspace(RETRAIN, rows_from_ms=start)
    need_days = min(min_drift_days, window_days)
    if "drift_from_ms" in window and latest - start < need_days * DAY_MS:
        reason = (
            f"the drift began {(latest - start) / DAY_MS:.2f} days of events ago; a challenger waits for "
            f"{need_days:g} days of the changed world (STREAM_RETRAIN_MIN_DRIFT_DAYS)"
        )
        log(f"{'window':<15} nothing trained: {reason}")
        waiting = {"until_ms": start + round(need_days * DAY_MS), "reason": reason}
        report = {"window": window, "models": {}, "waiting": waiting, "seconds": time.perf_counter() - t_all}
        write_json(rctx.reports_dir / "retrain.json", report)
        return report
    prerequisites(rctx)
    t = time.perf_counter()
    manifest = features(rctx)
    log(f"{'features':<15} {time.perf_counter() - t:7.1f} s  rows {manifest['rows']}")
    for warning in manifest.get("warnings") or []:
        log(f"{'features':<15} warning: {warning}")
    reg = ctx.registry
    out: dict[str, Any] = {"window": window, "models": {}}
    for name in names:
        t = time.perf_counter()
        base = warm_start_base(ctx, name) if warm_start else None
        try:
            result = train_model(rctx, name, warm_start=base)
        except Skipped as exc:
            out["models"][name] = {"status": "skipped", "reason": str(exc)}
            reg.record(
                name, "skip", reason=f"retrain on the latest {window_days} days: {exc}", evidence={"window": window}
            )
            log(f"{name:<15} skipped: {exc}")
            continue
        version = str(result["version"])
        metrics = {k: v for k, v in result["metrics"].items() if isinstance(v, int | float)}
        reg.set_alias(
            name,
            CHALLENGER,
            version,
            reason=f"retrain on the latest {window_days} days of events",
            evidence={"metrics": metrics, "window": window, "rows": result["rows"]},
        )
        warm = None if base is None else base.version
        out["models"][name] = {"status": "challenger", "version": version, "metrics": metrics, "warm_start_from": warm}
        primary = SPECS[name].primary
        how = "from scratch" if warm is None else f"warm start from v{warm}"
        log(
            f"{name:<15} {time.perf_counter() - t:7.1f} s  challenger v{version} ({how})  "
            f"{primary}={metrics[primary]:.4f}"
        )
    out["seconds"] = time.perf_counter() - t_all
    write_json(rctx.reports_dir / "retrain.json", out)
    return out


def drift_streak_start(windows: pd.DataFrame) -> int | None:
    """Where the newest run of alarmed drift windows began: the start of its first window.

    ``windows``: one row per drift window (``window_start_ms``, ``window_end_ms``, ``drifted`` 0/1).
    None when the newest window did not alarm, or there are none.

    >>> w = pd.DataFrame({"window_start_ms": [30, 0, 10, 20], "window_end_ms": [40, 10, 20, 30]})
    >>> drift_streak_start(w.assign(drifted=[1, 1, 0, 1])), drift_streak_start(w.assign(drifted=[0, 1, 1, 1]))
    (20, None)
    """
    if not len(windows):
        return None
    w = windows.sort_values(["window_end_ms", "window_start_ms"], kind="stable")
    alarmed = w["drifted"].to_numpy() > 0
    if not alarmed[-1]:
        return None
    first = len(alarmed) - 1
    while first > 0 and alarmed[first - 1]:
        first -= 1
    return int(w["window_start_ms"].iloc[first])


def drift_start(ctx: Context, name: str) -> int | None:
    """The event time at which the current drift streak of ``name``'s production version began, from
    the worker's ``feature_drift`` windows (a window alarms if any column drifted); None without one."""
    try:
        champion = ctx.registry.resolve(name, PRODUCTION)
    except RegistryError:
        return None
    windows = ctx.ch.query_df(
        "SELECT toUnixTimestamp64Milli(window_start) AS window_start_ms, "
        "toUnixTimestamp64Milli(window_end) AS window_end_ms, max(drifted) AS drifted "
        "FROM {db}.feature_drift FINAL WHERE model_name = {dr_model:String} AND model_version = {dr_version:String} "
        "GROUP BY window_start_ms, window_end_ms",
        params={"dr_model": name, "dr_version": str(champion.version)},
    )
    return drift_streak_start(windows)


def warm_start_base(ctx: Context, name: str) -> ModelVersion | None:
    """The production version of ``name`` to continue boosting from: an XGBoost model built for this
    code's features; None (train from scratch) otherwise."""
    spec = SPECS[name]
    if spec.library != "xgboost":
        return None
    try:
        champion = ctx.registry.resolve(name, PRODUCTION)
    except RegistryError:
        return None
    stored = champion.features
    if champion.kind != "xgboost" or not stored:
        return None
    return champion if spec.features.matches(FeatureList.from_json(json.dumps(stored))) else None


def _val_end(mv: ModelVersion) -> int:
    """The end of what the model saw in training (its final fit used training + validation)."""
    window = mv.metadata.get("training_window") or {}
    return int(window.get("val_end_ms", window.get("max_ms", 0)))


def compare(
    ctx: Context,
    name: str,
    *,
    metric: Metric | None = None,
    margin: float | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    min_events: int = 100,
    promote: bool = False,
    look: tuple[int, int] = (1, 1),
) -> dict[str, Any]:
    """Champion against challenger on the same held-out events; promotes if asked and the test says so.

    ``look``: (this look, of at most this many) at the same challenger; the confidence is split over them
    (:func:`stream.monitoring.compare.look_confidence`).
    """
    spec = SPECS[name]
    reg = ctx.registry
    challenger = reg.resolve(name, CHALLENGER)
    try:
        champion: ModelVersion | None = reg.resolve(name, PRODUCTION)
    except RegistryError:
        champion = None
    start = max(_val_end(challenger), _val_end(champion) if champion is not None else 0) + 1
    cctx = held_out_sets(ctx, start)
    df = spec.rows(load_table(cctx, spec.table))
    df = df[df[spec.time_col] >= start]
    x, y = spec.xy(df)
    metric = _metric(name, metric)
    p_chal = predict_version(spec, challenger, x)
    if p_chal is None:
        raise PrerequisiteError(
            f"challenger {name} v{challenger.version} was trained on other features than this code's"
        )
    evidence: dict[str, Any] = {
        "champion_version": champion and champion.version,
        "challenger_version": challenger.version,
        "held_out": {"from_ms": start, "rows": len(y), "table": spec.table},
    }
    p_champ = predict_version(spec, champion, x) if champion is not None else None
    return _decide(
        cctx, name, champion, challenger, y, p_champ, p_chal, evidence, promote, min_events,
        metric=metric, margin=margin, confidence=confidence, resamples=resamples, seed=seed, look=look,
    )  # fmt: skip


def _metric(name: str, metric: Metric | None) -> Metric:
    """The compare metric for ``name``: the given one if it fits the model's task, else its default."""
    task = SPECS[name].task
    chosen: Metric = metric or ("auc" if task == "binary" else "mse")
    if (chosen == "mse") != (task == "regression"):
        raise PrerequisiteError(f"metric {chosen!r} does not fit the {task} model {name!r}")
    return chosen


def _decide(
    ctx: Context,
    name: str,
    champion: ModelVersion | None,
    challenger: ModelVersion,
    y: Any,
    p_champ: Any,
    p_chal: Any,
    evidence: dict[str, Any],
    promote: bool,
    min_events: int,
    *,
    metric: Metric,
    margin: float | None,
    confidence: float,
    resamples: int,
    seed: int,
    look: tuple[int, int] = (1, 1),
) -> dict[str, Any]:
    """The paired test on both models' scores of the same events, recorded; promotes if asked and it says so.

    Look ``k`` of ``K`` tests at the look's confidence (Bonferroni over the ``K``); with ``K > 1`` the
    record's evidence has ``looks`` (which look, both confidences, the rule) and its reason begins with it.
    """
    reg = ctx.registry
    looks = look_evidence(*look, confidence)
    if look[1] > 1:
        evidence["looks"] = looks
    said = f"look {look[0]} of {look[1]}: " if look[1] > 1 else ""
    if champion is None or p_champ is None:
        decision = "promote"
        reason = (
            "no production model" if champion is None else f"production v{champion.version} built for other features"
        )
    else:
        used_margin = (default_margin(metric, y) if len(y) else 0.0) if margin is None else margin
        cmp = paired_bootstrap(
            y,
            p_champ,
            p_chal,
            metric=metric,
            margin=used_margin,
            confidence=looks["confidence"],
            resamples=resamples,
            seed=seed,
            min_events=min_events,
        )
        evidence["test"] = cmp.to_dict()
        decision, reason = cmp.decision, said + cmp.reason
    evidence["decision"] = decision
    promoted = promote and decision == "promote"
    if promoted:
        reg.set_alias(name, PRODUCTION, challenger.version, reason=f"compare: {reason}", evidence=evidence)
    else:
        reg.record(
            name,
            "compare",
            from_version=champion.version if champion is not None else None,
            to_version=challenger.version,
            reason=f"{decision}: {reason}",
            evidence=evidence,
        )
    out = {"model": name, "decision": decision, "reason": reason, "promoted": promoted, **evidence}
    write_json(ctx.reports_dir / f"{name}.json", out)
    return out


#: what each served model's outcome is, for :func:`compare_shadow`
_SHADOW_OUTCOMES = {
    "click": "a click of the impression's article within the click window",
    "engagement": "the session's engagement",
    **{name: f"{spec.describe} after the prediction" for name, spec in HORIZON_OUTCOMES.items()},
}

#: the scores of one model's champion and challenger on the same live events (exact scores only)
_SHADOW_PAIRS = (
    "FROM (SELECT event_id, user_id, session_id, event_time, score FROM {db}.predictions FINAL "
    "      WHERE model_name = {m:String} AND model_version = {a:String} AND replayed = 0) AS p "
    "INNER JOIN (SELECT event_id, user_id, score FROM {db}.predictions_shadow FINAL "
    "      WHERE model_name = {m:String} AND model_version = {b:String} AND replayed = 0) AS s "
    "ON p.event_id = s.event_id AND p.user_id = s.user_id"
)


def _horizon_outcomes(
    ctx: Context, spec: HorizonOutcome, params: dict[str, Any], pairs: Any, latest: int
) -> tuple[np.ndarray, np.ndarray]:
    """(known, outcome) of each pair of a horizon model: known once the newest archived event is the horizon
    plus ``STREAM_OUTCOMES_DELAY_S`` past it; the label from the archived events, joined in ClickHouse."""
    cut = latest - round(ctx.settings.outcomes_delay_s * 1000) - spec.horizon_ms
    t = pairs["t"].to_numpy(dtype=np.int64)
    known = t <= cut
    y = np.full(len(t), np.nan)
    if not known.any():
        return known, y
    rows = (
        "SELECT p.event_id AS event_id, p.user_id AS user_id, p.event_time AS ts " + _SHADOW_PAIRS + " "
        "WHERE p.event_time <= fromUnixTimestamp64Milli({cut:Int64})"
    )
    nxt = ctx.ch.query_df(
        next_event_sql(spec, rows),
        params={**params, "cut": cut, **next_event_params(spec, int(t[known].min()), int(t[known].max()))},
    )
    by_event = dict(zip(nxt["event_id"], nxt["next_ms"], strict=True)) if len(nxt) else {}
    y[known] = labels(spec, t[known], [by_event.get(e) for e in pairs["event_id"][known]])
    return known, y


def compare_shadow(
    ctx: Context,
    name: str,
    *,
    metric: Metric | None = None,
    margin: float | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    min_events: int = 100,
    promote: bool = False,
    min_pairs: int = 0,
    look: tuple[int, int] = (1, 1),
) -> dict[str, Any]:
    """Champion against challenger on the live events the worker scored with both (shadow scoring).

    The pairs are ``predictions FINAL`` of the production version and ``predictions_shadow FINAL``
    of the challenger, joined by event (exact scores only: ``replayed = 0``); the outcomes come
    from the archived events with batch training's own label definitions. An event whose outcome
    cannot be known yet is left out: an impression less than the click window before the newest
    archived event, a session without its ``session_end``, a churn or conversion prediction less than
    its horizon plus ``STREAM_OUTCOMES_DELAY_S`` before it (their labels are ``stream outcomes``' own).

    With fewer than ``min_pairs`` labelled pairs the decision is ``wait``: nothing is tested nor
    recorded (``stream monitor`` asks again at its next poll); the report says how many there are.
    ``look`` as in :func:`compare` (``stream monitor`` looks again at a kept challenger as pairs grow).
    """
    if name not in _SHADOW_OUTCOMES:
        raise PrerequisiteError(
            f"{name} has no outcome joinable to its live scores yet; expected one of {sorted(_SHADOW_OUTCOMES)}"
        )
    reg = ctx.registry
    challenger = reg.resolve(name, CHALLENGER)
    champion = reg.resolve(name, PRODUCTION)
    params = {"m": name, "a": champion.version, "b": challenger.version}
    pairs = ctx.ch.query_df(
        "SELECT p.event_id AS event_id, p.session_id AS session_id, toUnixTimestamp64Milli(p.event_time) AS t, "
        "p.score AS champion, s.score AS challenger " + _SHADOW_PAIRS + " ORDER BY t, event_id",
        params=params,
    )
    evidence: dict[str, Any] = {
        "champion_version": champion.version,
        "challenger_version": challenger.version,
        "source": "shadow",
        "outcome": _SHADOW_OUTCOMES[name],
        "scored_pairs": len(pairs),
    }
    y = np.zeros(0)
    keep = np.zeros(0, dtype=bool)
    if len(pairs) and name in HORIZON_OUTCOMES:
        known, y = _horizon_outcomes(ctx, HORIZON_OUTCOMES[name], params, pairs, events_state(ctx)["latest_ms"])
        keep = known & np.isfinite(y)
    elif len(pairs):
        sessions = sorted(set(pairs["session_id"].dropna().tolist()))
        events = ctx.ch.query_df(
            f"SELECT {COLS} FROM {{db}}.events WHERE session_id IN {{s:Array(String)}} "
            "ORDER BY user_id, event_time, event_id LIMIT 1 BY event_id",
            params={"s": sessions},
        )
        latest = events_state(ctx)["latest_ms"]
        if name == "click":
            labels: dict[str, float] = {k: float(v) for k, v in click_labels(events, CLICK_WINDOW_MS).items()}
            known = pairs["t"].to_numpy() + CLICK_WINDOW_MS <= latest
            y = np.array([labels.get(e, np.nan) for e in pairs["event_id"]], dtype=np.float64)
        else:
            ended = set(events.loc[events["event_type"] == "session_end", "session_id"])
            labels = engagement_labels(events)
            known = pairs["session_id"].isin(ended).to_numpy()
            y = np.array([labels.get(s, np.nan) for s in pairs["session_id"]], dtype=np.float64)
        keep = known & np.isfinite(y)
    evidence["held_out"] = {"rows": int(keep.sum()), "outcome_unknown": int(len(keep) - keep.sum())}
    metric = _metric(name, metric)
    if int(keep.sum()) < min_pairs:
        reason = f"{int(keep.sum())} of {min_pairs} labelled pairs in shadow"
        out = {"model": name, "decision": "wait", "reason": reason, "promoted": False, **evidence}
        write_json(ctx.in_workspace(COMPARE).reports_dir / f"{name}.json", out)
        return out
    p_champ = pairs["champion"].to_numpy(dtype=np.float64)[keep] if len(pairs) else np.zeros(0)
    p_chal = pairs["challenger"].to_numpy(dtype=np.float64)[keep] if len(pairs) else np.zeros(0)
    return _decide(
        ctx.in_workspace(COMPARE), name, champion, challenger, y[keep], p_champ, p_chal, evidence, promote, min_events,
        metric=metric, margin=margin, confidence=confidence, resamples=resamples, seed=seed, look=look,
    )  # fmt: skip


def summary(result: dict[str, Any]) -> str:
    """One line of a compare result."""
    test = result.get("test")
    scores = ""
    if test:
        scores = (
            f" {test['metric']}: champion {test['champion']:.4f}, challenger {test['challenger']:.4f} "
            f"on {test['n']} events;"
        )
    verb = "promoted" if result["promoted"] else f"decision {result['decision']}"
    return (
        f"{result['model']}: champion v{result['champion_version']} vs challenger v{result['challenger_version']}:"
        f"{scores} {verb} ({result['reason']})"
    )

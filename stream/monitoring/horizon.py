"""Quality of models whose outcome is known only at a horizon (churn, conversion), from the archived events.

The worker cannot join these outcomes in memory (30 and 14 days). This job does it in ClickHouse:
a prediction scored at ``t`` (``predictions.event_time``) is *settled* once the newest archived
event is at least ``horizon + delay`` past ``t`` (``delay`` covers events still on their way to the
archive: lateness, a partition behind the others). For each settled prediction an ``ASOF LEFT
JOIN`` finds the user's first archived event of the spec's types strictly after ``t``, and the
label is the training label applied to it (:attr:`HorizonOutcome.label`: ``churned`` of
``stream.state.labels`` for churn, :func:`converted` for conversion; batch training's user
snapshots use the same two functions).

Windows are tumbling windows of prediction time (``window``, aligned to the epoch, UTC). One
``model_quality`` row per model, version and window: ``window_start`` is the window's start (the
row's key), ``window_end`` the end of the prediction times it covers (the window's end once all of
it is settled, else the settling cut), ``pairs`` the settled predictions in it. Metrics are
:func:`stream.monitoring.quality.quality` of the settled pairs, as the worker's.

Idempotent and incremental: a window is computed again only if the count of its settled predictions
differs from the ``pairs`` of its row (``model_quality FINAL``); a row written again has the same key and
replaces the earlier one (ReplacingMergeTree). A run with nothing newly settled reads two small
aggregates and writes nothing.

>>> HORIZON_OUTCOMES["churn"].label(None, 0), HORIZON_OUTCOMES["conversion"].label(None, 0)
(True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stream.clickhouse import ClickHouse
from stream.models import MODELS
from stream.monitoring.outputs import QUALITY_METRICS, insert_monitoring, quality_rows
from stream.monitoring.quality import QualitySnapshot, quality
from stream.state.labels import CHURN_HORIZON_MS, CONVERSION_HORIZON_MS, churned

#: the event types that make a conversion (batch training's ``converted`` label)
CONVERSION_EVENTS: tuple[str, ...] = ("newsletter_signup", "subscription")
#: dirty windows read per query (bounds the rows held in memory at once)
WINDOWS_PER_QUERY = 16


def converted(next_conversion_ms: int | None, cutoff_ms: int) -> bool:
    """True if the user's first conversion event after ``cutoff_ms`` is at most 14 days later.

    >>> converted(None, 0), converted(CONVERSION_HORIZON_MS, 0), converted(CONVERSION_HORIZON_MS + 1, 0)
    (False, True, False)
    """
    return next_conversion_ms is not None and next_conversion_ms - cutoff_ms <= CONVERSION_HORIZON_MS


@dataclass(frozen=True)
class HorizonOutcome:
    """How one model's outcome is read from the archived events.

    ``label(next_ms, t)`` gets the time of the user's first event of ``events`` (None: any type)
    strictly after ``t``, or None if there is none; it must depend only on the events in
    ``(t, t + horizon_ms]`` (the job reads no further), which the tests check for each spec.
    """

    model: str
    horizon_ms: int
    events: tuple[str, ...] | None
    label: Callable[[int | None, int], bool]
    describe: str


HORIZON_OUTCOMES: dict[str, HorizonOutcome] = {
    o.model: o
    for o in (
        HorizonOutcome("churn", CHURN_HORIZON_MS, None, churned, "no event of the user within 30 days"),
        HorizonOutcome(
            "conversion",
            CONVERSION_HORIZON_MS,
            CONVERSION_EVENTS,
            converted,
            "a newsletter_signup or subscription of the user within 14 days",
        ),
    )
}


@dataclass
class HorizonResult:
    """One run of :func:`horizon_quality`."""

    #: the newest archived event time (None: no events)
    watermark_ms: int | None
    #: per model: predictions settled at or before this time count
    settled_until_ms: dict[str, int] = field(default_factory=dict)
    #: per model: windows written this run, and windows already up to date
    written: dict[str, int] = field(default_factory=dict)
    up_to_date: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: the latest window of each model version (from model_quality, after this run's writes)
    latest: list[QualitySnapshot] = field(default_factory=list)

    def summary(self) -> str:
        if self.watermark_ms is None:
            return "no archived events: nothing has reached its horizon"
        parts = []
        for model in self.settled_until_ms:
            pairs = sum(r["pairs"] for r in self.rows if r["model_name"] == model)
            parts.append(
                f"{model}: {self.written.get(model, 0)} windows written ({pairs} pairs), "
                f"{self.up_to_date.get(model, 0)} up to date"
            )
        return "; ".join(parts) or "no models"


def _settled(ch: ClickHouse, model: str, cut_ms: int, window_ms: int) -> pd.DataFrame:
    """Settled predictions per version and window: count and latest prediction time."""
    return ch.query_df(
        "SELECT model_version AS version, "
        "intDiv(toUnixTimestamp64Milli(event_time), {w:Int64}) * {w:Int64} AS ws, count() AS n "
        "FROM {db}.predictions FINAL "
        "WHERE model_name = {m:String} AND event_time <= fromUnixTimestamp64Milli({cut:Int64}) "
        "GROUP BY version, ws",
        params={"m": model, "w": window_ms, "cut": cut_ms},
    )


def _written(ch: ClickHouse, model: str) -> dict[tuple[str, int], int]:
    df = ch.query_df(
        "SELECT model_version AS version, toUnixTimestamp64Milli(window_start) AS ws, pairs "
        "FROM {db}.model_quality FINAL WHERE model_name = {m:String}",
        params={"m": model},
    )
    if df.empty:  # an empty result has no columns
        return {}
    return {(str(v), int(w)): int(n) for v, w, n in zip(df["version"], df["ws"], df["pairs"], strict=True)}


def next_event_sql(spec: HorizonOutcome, rows: str) -> str:
    """SQL: the rows of the query ``rows`` and ``next_ms``, the time of the user's first archived event of the
    spec's types strictly after the row's ``ts`` (NULL: none), by an ``ASOF LEFT JOIN`` that ClickHouse runs.

    ``rows`` needs columns ``user_id`` and ``ts`` (DateTime64); bind :func:`next_event_params` with bounds
    of its ``ts``. Events later than the horizon after the last ``ts`` are not read: the label does not
    look at them.
    """
    types = "AND event_type IN {hz_types:Array(String)} " if spec.events is not None else ""
    return (
        "SELECT q.*, toUnixTimestamp64Milli(e.event_time) AS next_ms FROM (" + rows + ") AS q "
        "ASOF LEFT JOIN (SELECT user_id, event_time FROM {db}.events "
        "WHERE event_time > fromUnixTimestamp64Milli({hz_lo:Int64}) "
        "AND event_time <= fromUnixTimestamp64Milli({hz_hi:Int64} + {hz_h:Int64}) " + types + ""
        "AND user_id IN (SELECT user_id FROM (" + rows + "))) AS e "
        "ON q.user_id = e.user_id AND e.event_time > q.ts "
        "SETTINGS join_use_nulls = 1"
    )


def next_event_params(spec: HorizonOutcome, lo_ms: int, hi_ms: int) -> dict[str, Any]:
    """The parameters of :func:`next_event_sql` for rows with ``ts`` in ``[lo_ms, hi_ms]``."""
    return {"hz_lo": int(lo_ms), "hz_hi": int(hi_ms), "hz_h": spec.horizon_ms, "hz_types": list(spec.events or ())}


def _pairs(
    ch: ClickHouse, spec: HorizonOutcome, cut_ms: int, window_ms: int, versions: Sequence[str], starts: Sequence[int]
) -> pd.DataFrame:
    """(version, ws, t, score, next_ms) of the settled predictions in the given windows; the join runs in ClickHouse."""
    lo, hi = min(starts), min(max(starts) + window_ms - 1, cut_ms)
    rows = (
        "SELECT model_version AS version, user_id, event_time AS ts, toUnixTimestamp64Milli(event_time) AS t, score, "
        "intDiv(toUnixTimestamp64Milli(event_time), {w:Int64}) * {w:Int64} AS ws "
        "FROM {db}.predictions FINAL "
        "WHERE model_name = {m:String} AND event_time >= fromUnixTimestamp64Milli({lo:Int64}) "
        "AND event_time <= fromUnixTimestamp64Milli({hi:Int64}) "
        "AND model_version IN {v:Array(String)} AND ws IN {s:Array(Int64)}"
    )
    params = {"m": spec.model, "w": window_ms, "lo": lo, "hi": hi, "v": list(versions), "s": [int(s) for s in starts]}
    return ch.query_df(next_event_sql(spec, rows), params={**params, **next_event_params(spec, lo, hi)})


def labels(spec: HorizonOutcome, t: Iterable[int], next_ms: Iterable[Any]) -> np.ndarray:
    """The spec's label of each prediction time and next event time (missing: no such event)."""
    return np.array(
        [float(spec.label(None if pd.isna(n) else int(n), int(ti))) for ti, n in zip(t, next_ms, strict=True)],
        dtype=np.float64,
    )


def _latest(ch: ClickHouse, models: Sequence[str]) -> list[QualitySnapshot]:
    """The latest window of each model version in ``model_quality``."""
    df = ch.query_df(
        "SELECT model_name, model_version, toUnixTimestamp64Milli(window_start) AS ws, "
        "toUnixTimestamp64Milli(window_end) AS we, pairs, " + ", ".join(QUALITY_METRICS) + " "
        "FROM {db}.model_quality FINAL WHERE model_name IN {m:Array(String)} "
        "ORDER BY window_start DESC LIMIT 1 BY model_name, model_version",
        params={"m": list(models)},
    )
    out = []
    for r in df.to_dict("records") if len(df) else []:
        metrics = {k: float(r[k]) for k in QUALITY_METRICS if not pd.isna(r[k])}
        task = MODELS[r["model_name"]].task
        out.append(
            QualitySnapshot(r["model_name"], str(r["model_version"]), task, int(r["pairs"]), r["ws"], r["we"], metrics)
        )
    return sorted(out, key=lambda s: (s.model, s.version))


def horizon_quality(
    ch: ClickHouse,
    outcomes: Iterable[HorizonOutcome] = HORIZON_OUTCOMES.values(),
    *,
    window_ms: int,
    delay_ms: int,
    computed_at_ms: int,
) -> HorizonResult:
    """Write the ``model_quality`` rows of every window with newly settled predictions (module docstring)."""
    if window_ms <= 0 or delay_ms < 0:
        raise ValueError(f"window {window_ms} ms must be positive and delay {delay_ms} ms not negative")
    specs = list(outcomes)
    hi = ch.query_df("SELECT count() AS n, toUnixTimestamp64Milli(max(event_time)) AS hi FROM {db}.events")
    result = HorizonResult(None if int(hi["n"].iloc[0]) == 0 else int(hi["hi"].iloc[0]))
    if result.watermark_ms is None:
        return result
    for spec in specs:
        task = MODELS[spec.model].task
        cut = result.watermark_ms - delay_ms - spec.horizon_ms
        result.settled_until_ms[spec.model] = cut
        settled = _settled(ch, spec.model, cut, window_ms)
        done = _written(ch, spec.model)
        dirty = (
            [
                (str(v), int(w))
                for v, w, n in zip(settled["version"], settled["ws"], settled["n"], strict=True)
                if done.get((str(v), int(w))) != int(n)
            ]
            if len(settled)
            else []
        )
        result.up_to_date[spec.model] = len(settled) - len(dirty)
        result.written[spec.model] = 0
        starts = sorted({w for _, w in dirty})
        for k in range(0, len(starts), WINDOWS_PER_QUERY):
            chunk = starts[k : k + WINDOWS_PER_QUERY]
            keys = {d for d in dirty if d[1] in set(chunk)}
            df = _pairs(ch, spec, cut, window_ms, sorted({v for v, _ in keys}), chunk)
            if df.empty:  # the predictions were counted a moment ago: only a dropped partition empties them
                continue
            df["y"] = labels(spec, df["t"], df["next_ms"])
            snaps = []
            for key, g in df.groupby(["version", "ws"], sort=True):
                version, start = str(key[0]), int(key[1])  # type: ignore[call-overload]
                if (version, start) not in keys:
                    continue
                end = min(start + window_ms, cut)
                y, p = g["y"].to_numpy(), g["score"].to_numpy(dtype=np.float64)
                snaps.append(QualitySnapshot(spec.model, version, task, len(g), start, end, quality(task, y, p)))
            rows = quality_rows(snaps, computed_at_ms)
            insert_monitoring(ch, rows, [])
            result.rows += rows
            result.written[spec.model] += len(rows)
    result.latest = _latest(ch, [s.model for s in specs])
    return result

"""The oracle ceiling: the simulator's true probabilities / expectations on the same test rows.

Only when the data came from the simulator (``truth_*`` tables present and matching).
Returns an array aligned with the given rows, NaN where the truth has no row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stream.clickhouse import ClickHouse

_CHUNK = 4_000


def _in_list(values: list[str]) -> str:
    return ",".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)


def _by_ids(ch: ClickHouse, sql: str, ids: list[str]) -> pd.DataFrame:
    parts = [ch.query_df(sql.format(ids=_in_list(ids[i : i + _CHUNK]), db="{db}")) for i in range(0, len(ids), _CHUNK)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def oracle_predictions(ch: ClickHouse, name: str, rows: pd.DataFrame) -> np.ndarray:
    """True P(label) (or expected engagement) for each test row of model ``name``."""
    if name in ("churn", "conversion", "high_value"):
        col = {"churn": "p_churn_30d", "conversion": "p_convert_14d", "high_value": "p_high_value_14d"}[name]
        users = sorted(set(rows["user_id"].astype(str)))
        truth = _by_ids(
            ch,
            f"SELECT user_id, toUnixTimestamp64Milli(cutoff_time) AS cutoff_ms, {col} AS p "
            "FROM {db}.truth_user_daily WHERE user_id IN ({ids})",
            users,
        )
        if truth.empty:
            return np.full(len(rows), np.nan)
        m = rows[["user_id", "cutoff_ms"]].merge(truth, on=["user_id", "cutoff_ms"], how="left")
        return m["p"].to_numpy(dtype=float)
    if name == "click":
        truth = _by_ids(
            ch,
            "SELECT event_id, p_click AS p FROM {db}.truth_article_impressions WHERE event_id IN ({ids})",
            rows["event_id"].astype(str).tolist(),
        )
        if truth.empty:
            return np.full(len(rows), np.nan)
        return rows[["event_id"]].merge(truth, on="event_id", how="left")["p"].to_numpy(dtype=float)
    if name == "engagement":
        truth = _by_ids(
            ch,
            "SELECT session_id, expected_engagement AS p FROM {db}.truth_sessions WHERE session_id IN ({ids})",
            sorted(set(rows["session_id"].astype(str))),
        )
        if truth.empty:
            return np.full(len(rows), np.nan)
        return rows[["session_id"]].merge(truth, on="session_id", how="left")["p"].to_numpy(dtype=float)
    msg = f"no oracle for model {name!r}"
    raise KeyError(msg)

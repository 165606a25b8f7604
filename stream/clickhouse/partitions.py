"""Inserts into day-partitioned tables, cut to respect ClickHouse's partitions-per-insert limit.

ClickHouse refuses an INSERT whose block touches more than ``max_partitions_per_insert_block``
partitions (default 100; error TOO_MANY_PARTS). ``{db}.events`` is partitioned by
``toDate(event_time)`` (UTC), so any history longer than 100 days must be inserted in groups
of at most 100 days. Raising the setting instead would hide the cost it guards against (one
new part per partition per insert), and a ClickHouse server may not let a client change it.

>>> import pandas as pd
>>> t = pd.to_datetime([0, 86_400_000, 2 * 86_400_000, 86_400_000], unit="ms", utc=True)
>>> [g.tolist() for g in day_groups(pd.Series(t), limit=2)]
[[0, 1, 3], [2]]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stream.clickhouse.base import ClickHouse

#: ClickHouse's default ``max_partitions_per_insert_block``.
MAX_PARTITIONS_PER_INSERT = 100
DAY_MS = 86_400_000


def _days(times: pd.Series) -> np.ndarray:
    """UTC day numbers of a datetime (tz-aware or naive UTC) or epoch-ms column."""
    if pd.api.types.is_datetime64_any_dtype(times):
        t = times.dt.tz_convert("UTC") if times.dt.tz is not None else times
        ms = t.astype("datetime64[ms, UTC]" if times.dt.tz is not None else "datetime64[ms]").astype("int64")
        return np.asarray(ms, dtype=np.int64) // DAY_MS
    return np.asarray(times, dtype=np.int64) // DAY_MS


def day_groups(times: pd.Series, limit: int = MAX_PARTITIONS_PER_INSERT) -> list[np.ndarray]:
    """Row positions grouped so that each group spans at most ``limit`` distinct UTC days."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    days = _days(times)
    if len(days) == 0:
        return []
    distinct, inverse = np.unique(days, return_inverse=True)
    group_of_row = inverse // limit  # consecutive days, ``limit`` per group
    order = np.argsort(group_of_row, kind="stable")
    bounds = np.searchsorted(group_of_row[order], np.arange(1, (len(distinct) - 1) // limit + 1))
    return np.split(order, bounds)


def insert_by_day(
    ch: ClickHouse, table: str, df: pd.DataFrame, column: str = "event_time", limit: int = MAX_PARTITIONS_PER_INSERT
) -> int:
    """Insert ``df`` into a table partitioned by ``toDate(column)``, at most ``limit`` days per INSERT.

    Returns the row count. One group (the usual case) inserts the frame as it is.
    """
    if df.empty:
        return 0
    groups = day_groups(df[column], limit)
    if len(groups) == 1:
        return ch.insert_df(table, df)
    return sum(ch.insert_df(table, df.iloc[g].reset_index(drop=True)) for g in groups)

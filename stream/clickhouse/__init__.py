"""ClickHouse access: :func:`connect` picks the backend from settings; helpers convert records.

>>> from stream.clickhouse import events_to_frame, frame_to_events
>>> ev = {"schema_version": 1, "event_id": "e1", "event_type": "page_view", "user_id": "u1",
...       "session_id": "s1", "event_time": 1700000000123, "device": {"type": "mobile"}}
>>> frame_to_events(events_to_frame([ev])) == [ev]
True
"""

from __future__ import annotations

import datetime as dt
import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pandas as pd

from stream.clickhouse.base import DDL_DIR, ClickHouse, apply_ddl, warn_old_engines
from stream.clickhouse.partitions import DAY_MS, MAX_PARTITIONS_PER_INSERT, insert_by_day
from stream.config import Settings

__all__ = [
    "DDL_DIR",
    "EVENT_COLUMNS",
    "INSERT_EVENTS_SQL",
    "ClickHouse",
    "apply_ddl",
    "connect",
    "event_day_groups",
    "events_to_frame",
    "frame_to_events",
    "insert_by_day",
    "insert_events",
    "insert_records",
    "warn_old_engines",
]

#: Flat event columns in table order; nested ``device``/``geo`` are flattened.
EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "user_id",
    "session_id",
    "event_time",
    "article_id",
    "brand",
    "category",
    "position",
    "placement",
    "request_id",
    "revenue",
    "duration_ms",
    "device_type",
    "device_os",
    "device_browser",
    "country",
    "city",
    "timezone",
    "schema_version",
)
_TOP_OPTIONAL = ("article_id", "brand", "category", "position", "placement", "request_id", "revenue", "duration_ms")
_NESTED = {
    "device_type": ("device", "type"),
    "device_os": ("device", "os"),
    "device_browser": ("device", "browser"),
    "country": ("geo", "country"),
    "city": ("geo", "city"),
    "timezone": ("geo", "timezone"),
}
_INT_COLUMNS = ("position", "duration_ms")
#: Optional boolean fields of output records, present only when true (e.g. a prediction's ``replayed``).
_FLAG_COLUMNS = ("replayed",)
#: Optional text fields of output records, absent when empty (a prediction's ``label``).
_TEXT_COLUMNS = ("label",)


def connect(settings: Settings, *, apply_schema: bool = True) -> ClickHouse:
    """Open the configured ClickHouse: the server at ``clickhouse_url`` if set, else the embedded one.

    The embedded ClickHouse is the host-local server of ``chdb_path`` (chdb behind ClickHouse's
    HTTP protocol, started by whichever process needs it first: ``stream/clickhouse/local_server.py``),
    so any number of processes can use one directory at once.
    """
    ch: ClickHouse
    if settings.clickhouse_url:
        from stream.clickhouse.server_backend import ServerClickHouse

        ch = ServerClickHouse(
            settings.clickhouse_database,
            dsn=settings.clickhouse_url,
            username=settings.clickhouse_user,
            password=settings.clickhouse_password.get_secret_value(),
        )
    else:
        from stream.clickhouse.local_server import connect_local

        ch = connect_local(settings.ensure_dir("chdb_path"), settings.clickhouse_database, settings.chdb_server_idle_s)
    if apply_schema:
        apply_ddl(ch)
        warn_old_engines(ch)
    return ch


def _ms_to_datetime(ms: Sequence[int]) -> pd.DatetimeIndex:
    return pd.to_datetime(np.asarray(ms, dtype="int64"), unit="ms", utc=True)


def events_to_frame(events: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Flatten session events (dicts following ``session_event`` v1) into table columns."""
    cols: dict[str, list[Any]] = {c: [] for c in EVENT_COLUMNS}
    for ev in events:
        for c in ("event_id", "event_type", "user_id", "session_id", "event_time"):
            cols[c].append(ev[c])
        for c in _TOP_OPTIONAL:
            cols[c].append(ev.get(c))
        for c, (outer, inner) in _NESTED.items():
            cols[c].append((ev.get(outer) or {}).get(inner))
        cols["schema_version"].append(ev.get("schema_version", 1))
    df = pd.DataFrame(cols, columns=list(EVENT_COLUMNS))
    df["event_time"] = _ms_to_datetime(cols["event_time"])
    for c in _INT_COLUMNS:
        df[c] = pd.array(cols[c], dtype="Int64")
    df["revenue"] = pd.array(cols["revenue"], dtype="Float64")
    df["schema_version"] = df["schema_version"].astype("uint8")
    return df


def _present(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return False
    return not (isinstance(v, float) and math.isnan(v))


def frame_to_events(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Inverse of :func:`events_to_frame`: rebuild ``session_event`` dicts (missing = absent)."""
    times = df["event_time"]
    if pd.api.types.is_datetime64_any_dtype(times):
        ms = times.dt.tz_convert("UTC") if times.dt.tz is not None else times.dt.tz_localize("UTC")
        ms_values = ms.astype("datetime64[ms, UTC]").astype("int64").tolist()
    else:
        ms_values = times.astype("int64").tolist()
    records = df.to_dict("records")
    out: list[dict[str, Any]] = []
    for rec, t in zip(records, ms_values, strict=True):
        ev: dict[str, Any] = {
            "schema_version": int(rec.get("schema_version", 1) or 1),
            "event_id": rec["event_id"],
            "event_type": rec["event_type"],
            "user_id": rec["user_id"],
            "session_id": rec["session_id"],
            "event_time": int(t),
        }
        for c in _TOP_OPTIONAL:
            v: Any = rec.get(c)
            if _present(v):
                ev[c] = int(v) if c in _INT_COLUMNS else (float(v) if c == "revenue" else v)
        for c, (outer, inner) in _NESTED.items():
            v = rec.get(c)
            if _present(v):
                ev.setdefault(outer, {})[inner] = v
        out.append(ev)
    return out


#: How ClickHouse reads a session event (``session_event`` v1 as JSON): the types of the table,
#: nested ``device``/``geo`` as named tuples (a missing member or object is NULL), times as epoch ms.
_EVENT_INPUT = (
    "event_id String, event_type String, user_id String, session_id String, event_time Int64, "
    "article_id Nullable(String), brand Nullable(String), category Nullable(String), position Nullable(UInt8), "
    "placement Nullable(String), request_id Nullable(String), revenue Nullable(Float64), "
    "duration_ms Nullable(UInt32), device Tuple(type Nullable(String), os Nullable(String), "
    "browser Nullable(String)), geo Tuple(country Nullable(String), city Nullable(String), "
    "timezone Nullable(String)), schema_version Nullable(UInt8)"
)
#: The flattening of :func:`events_to_frame`, done by ClickHouse on the JSON the worker already has.
_EVENT_SELECT = {
    **{c: c for c in EVENT_COLUMNS},
    "event_time": "fromUnixTimestamp64Milli(event_time, 'UTC')",
    **{c: f"tupleElement({outer}, '{inner}')" for c, (outer, inner) in _NESTED.items()},
    "schema_version": "ifNull(schema_version, 1)",
}
INSERT_EVENTS_SQL = (
    f"INSERT INTO {{db}}.events ({', '.join(EVENT_COLUMNS)}) "
    f"SELECT {', '.join(_EVENT_SELECT[c] for c in EVENT_COLUMNS)} "
    f"FROM input('{_EVENT_INPUT}') FORMAT JSONEachRow"
)
#: precise_float_parsing: the default parser may round a Float64 one unit off (revenue must round-trip)
INSERT_EVENTS_SETTINGS = {
    "precise_float_parsing": 1,
    "input_format_skip_unknown_fields": 1,
    "input_format_null_as_default": 1,
    "input_format_json_named_tuples_as_objects": 1,
    "input_format_json_defaults_for_missing_elements_in_named_tuple": 1,
}


def event_day_groups(events: Sequence[Mapping[str, Any]], limit: int = MAX_PARTITIONS_PER_INSERT) -> list[list[Any]]:
    """``events`` cut into groups of at most ``limit`` UTC days each (one group, as it is, if they span fewer).

    >>> [len(g) for g in event_day_groups([{"event_time": d * DAY_MS} for d in (0, 1, 2, 1)], limit=2)]
    [3, 1]
    """
    days = {ev["event_time"] // DAY_MS for ev in events}
    if len(days) <= limit:
        return [list(events)] if events else []
    group_of = {day: i // limit for i, day in enumerate(sorted(days))}
    groups: list[list[Any]] = [[] for _ in range((len(days) + limit - 1) // limit)]
    for ev in events:
        groups[group_of[ev["event_time"] // DAY_MS]].append(ev)
    return groups


def insert_events(ch: ClickHouse, events: Iterable[Mapping[str, Any]]) -> int:
    """Insert session events (dicts following ``session_event`` v1); returns the row count.

    They go as JSON (orjson, one array per INSERT), and ClickHouse flattens them into the table's
    columns (:data:`INSERT_EVENTS_SQL`): the rows are those of ``events_to_frame``, for about a
    tenth of the client's CPU of a DataFrame in Native format. At most 100 days per INSERT
    (:mod:`stream.clickhouse.partitions`). The events are serialized again rather than sent as the
    bytes they came in: JSON with a repeated key is valid to orjson, which keeps the last value, where
    ClickHouse keeps the first; and ``1.0`` for an integer is valid (parse_event makes it ``1``),
    which ClickHouse would not read as one.
    """
    events = events if isinstance(events, list) else list(events)
    for group in event_day_groups(events):
        data = orjson.dumps(group, default=dict, option=orjson.OPT_SERIALIZE_NUMPY)  # default: other Mappings
        ch.insert_data(INSERT_EVENTS_SQL, data, INSERT_EVENTS_SETTINGS)
    return len(events)


def insert_records(ch: ClickHouse, table: str, records: Sequence[Mapping[str, Any]]) -> int:
    """Insert prediction / decision / monitoring records (flat dicts); times are epoch ms (or datetimes).

    They go as JSON, as :func:`insert_events` does, through ``input()`` with the table's own column
    types (:func:`records_insert_sql`, asked once per connection): a fraction of the client's CPU of
    a DataFrame, and no ``DESCRIBE`` per insert. Keys that are not columns (``schema_version``, a
    decision's ``arm_means``, ``shadow``) are skipped; a column no record has gets the table's
    default. A record with a non-finite float (which JSON cannot carry) goes as a DataFrame instead.
    """
    if not records:
        return 0
    records = records if isinstance(records, list) else list(records)
    keys: set[str] = set()
    finite = True
    for rec in records:
        keys.update(rec)
        if finite:
            finite = all(math.isfinite(v) for v in rec.values() if type(v) is float)
    columns = _table_columns(ch, table)
    if not finite:
        return _insert_records_df(ch, table, records, columns)
    sql = records_insert_sql(table, columns, frozenset(keys))
    data = orjson.dumps(records, default=_epoch_ms, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATETIME)
    ch.insert_data(sql, data, INSERT_RECORDS_SETTINGS)
    return len(records)


#: precise_float_parsing: scores round-trip exactly (the tests compare them with offline scoring)
INSERT_RECORDS_SETTINGS = {
    "precise_float_parsing": 1,
    "input_format_skip_unknown_fields": 1,
    "input_format_null_as_default": 1,
}

_COLUMNS_CACHE: weakref.WeakKeyDictionary[Any, dict[str, tuple[tuple[str, str], ...]]] = weakref.WeakKeyDictionary()


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _epoch_ms(value: Any) -> int:
    """A datetime (a pandas ``Timestamp`` too) as epoch ms; a naive one is UTC."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return (value - _EPOCH) // dt.timedelta(milliseconds=1)  # exact: no float seconds
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _table_columns(ch: ClickHouse, table: str) -> tuple[tuple[str, str], ...]:
    """``table``'s insertable columns and types, asked once per connection (a table may be of an older version)."""
    per_table = _COLUMNS_CACHE.setdefault(ch, {})
    got = per_table.get(table)
    if got is None:
        df = ch.query_df(f"DESCRIBE TABLE {{db}}.{table}")
        got = per_table[table] = tuple(
            (str(r.name), str(r.type))
            for r in df.itertuples()
            if str(r.default_type) not in ("MATERIALIZED", "ALIAS", "EPHEMERAL")
        )
    return got


def _base_type(ctype: str) -> tuple[str, bool]:
    """A column type without ``Nullable`` and ``LowCardinality``, and whether it was nullable."""
    nullable = ctype.startswith("Nullable(")
    if nullable:
        ctype = ctype[len("Nullable(") : -1]
    if ctype.startswith("LowCardinality("):
        ctype = ctype[len("LowCardinality(") : -1]
    if ctype.startswith("Nullable("):  # LowCardinality(Nullable(String))
        ctype, nullable = ctype[len("Nullable(") : -1], True
    return ctype, nullable


def records_insert_sql(table: str, columns: Sequence[tuple[str, str]], keys: frozenset[str]) -> str:
    """The INSERT of records with ``keys`` into ``table`` of ``columns``: JSONEachRow through ``input()``.

    ``DateTime64(3)`` columns come as epoch ms; flags (``replayed``) as JSON booleans.

    >>> cols = [("id", "String"), ("at", "DateTime64(3, 'UTC')"), ("on", "UInt8"), ("kind", "LowCardinality(String)")]
    >>> insert, select = records_insert_sql("t", cols, frozenset({"id", "at", "kind", "extra"})).split(" SELECT ")
    >>> insert
    'INSERT INTO {db}.t (id, at, kind)'
    >>> select
    "id, fromUnixTimestamp64Milli(at, 'UTC'), kind FROM input('id String, at Int64, kind String') FORMAT JSONEachRow"
    """
    names, selects, inputs = [], [], []
    for name, ctype in columns:
        if name not in keys:
            continue
        base, nullable = _base_type(ctype)
        if base.startswith("DateTime64(3"):
            in_type, select = "Int64", f"fromUnixTimestamp64Milli({name}, 'UTC')"
        elif name in _FLAG_COLUMNS:
            in_type, select = "Bool", f"toUInt8({name})"
        else:
            in_type, select = base, name
        names.append(name)
        selects.append(select)
        inputs.append(f"{name} Nullable({in_type})" if nullable else f"{name} {in_type}")
    return (
        f"INSERT INTO {{db}}.{table} ({', '.join(names)}) SELECT {', '.join(selects)} "
        f"FROM input('{', '.join(inputs)}') FORMAT JSONEachRow"
    )


def _insert_records_df(
    ch: ClickHouse, table: str, records: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]
) -> int:
    types = dict(columns)
    df = pd.DataFrame.from_records(list(records))
    df = df.drop(columns=[c for c in df.columns if c not in types])  # not stored: schema_version, arm_means, ...
    for c in df.columns:
        if _base_type(types[c])[0].startswith("DateTime64(3"):
            ms = [_epoch_ms(v) if isinstance(v, dt.datetime) else v for v in df[c]]
            df[c] = _ms_to_datetime(ms)
    for c in _FLAG_COLUMNS:
        if c in df.columns:  # absent from some records: NaN there
            df[c] = df[c].eq(True).astype("uint8")
    for c in _TEXT_COLUMNS:
        if c in df.columns:  # absent from some records: NaN there, '' in the table
            df[c] = df[c].fillna("").astype(str)
    return ch.insert_df(table, df)

"""Messy reality, each switch off by default: missing fields, late and duplicate deliveries,
malformed records. All of it changes delivery, never the truth (which is keyed by event_id)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from simulator.config import SimConfig
from simulator.records import batch_to_dicts

#: Optional columns that may go missing one by one (schema stays satisfied).
DROPPABLE = ("brand", "category", "duration_ms", "device_os", "device_browser", "city", "timezone")
MALFORMED_KINDS = (
    "truncated",
    "not_utf8",
    "no_event_id",
    "time_as_string",
    "unknown_type",
    "extra_field",
    "not_an_object",
    "bad_device_type",
)


def _null_where(col: Any, mask: np.ndarray) -> Any:
    return pc.if_else(pa.array(mask), pa.scalar(None, col.type), col)


def drop_fields(table: pa.Table, share: float, rng: np.random.Generator) -> pa.Table:
    """Null each optional field with probability ``share``; whole device / geo with ``share``/2."""
    n = table.num_rows
    cols = {name: table[name] for name in table.column_names}
    for name in DROPPABLE:
        cols[name] = _null_where(cols[name], rng.random(n) < share)
    no_device = rng.random(n) < share / 2
    no_geo = rng.random(n) < share / 2
    for name in ("device_type", "device_os", "device_browser"):
        cols[name] = _null_where(cols[name], no_device)
    for name in ("country", "city", "timezone"):
        cols[name] = _null_where(cols[name], no_geo)
    return pa.table(cols, schema=table.schema)


def delivery_order(
    times: np.ndarray, late_share: float, late_max_ms: int, dup_share: float, dup_max_ms: int, rng: np.random.Generator
) -> np.ndarray:
    """Row indices in delivery order: late rows are delayed by up to ``late_max_ms``; duplicated
    rows appear a second time up to ``dup_max_ms`` after their first delivery."""
    n = len(times)
    delivered = times.copy()
    late = rng.random(n) < late_share
    delivered[late] += rng.integers(1, late_max_ms + 1, size=int(late.sum()))
    dup = np.flatnonzero(rng.random(n) < dup_share)
    rows = np.concatenate([np.arange(n), dup])
    at = np.concatenate([delivered, delivered[dup] + rng.integers(0, dup_max_ms + 1, size=len(dup))])
    copy = np.concatenate([np.zeros(n, np.int8), np.ones(len(dup), np.int8)])
    return rows[np.lexsort((copy, rows, at))]


def malformed_record(event: dict[str, Any], kind: str) -> bytes:
    """One broken record made from a valid event: not JSON, or JSON that fails the schema."""
    ev = dict(event)
    raw = orjson.dumps(ev)
    if kind == "truncated":
        return raw[: max(1, len(raw) // 2)]
    if kind == "not_utf8":
        return b"\xff\xfe" + raw[2:]
    if kind == "no_event_id":
        ev.pop("event_id")
    elif kind == "time_as_string":
        ev["event_time"] = str(ev["event_time"])
    elif kind == "unknown_type":
        ev["event_type"] = "page_veiw"
    elif kind == "extra_field":
        ev["tracking_pixel"] = True
    elif kind == "not_an_object":
        return b"[" + raw + b"]"
    elif kind == "bad_device_type":
        ev["device"] = {"type": "smart_fridge"}
    return orjson.dumps(ev)


def apply(cfg: SimConfig, table: pa.Table, rng: np.random.Generator) -> tuple[pa.Table, list[bytes], np.ndarray]:
    """Apply the enabled switches; returns (events in delivery order, malformed, their positions)."""
    if cfg.missing_share > 0:
        table = drop_fields(table, cfg.missing_share, rng)
    if cfg.late_share > 0 or cfg.duplicate_share > 0:
        times = table["event_time"].to_numpy()
        order = delivery_order(
            times, cfg.late_share, cfg.late_max_ms, cfg.duplicate_share, cfg.duplicate_max_delay_ms, rng
        )
        table = table.take(pa.array(order))
    malformed: list[bytes] = []
    positions = np.zeros(0, np.int64)
    if cfg.malformed_share > 0 and table.num_rows:
        k = max(1, round(cfg.malformed_share * table.num_rows))
        src = np.sort(rng.integers(0, table.num_rows, size=k))
        sample = list(batch_to_dicts(table.take(pa.array(src)).combine_chunks().to_batches()[0]))
        kinds = rng.integers(0, len(MALFORMED_KINDS), size=k)
        malformed = [malformed_record(ev, MALFORMED_KINDS[c]) for ev, c in zip(sample, kinds, strict=True)]
        positions = np.sort(rng.integers(0, table.num_rows + 1, size=k))
    return table, malformed, positions

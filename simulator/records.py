"""Flat event columns back to ``session_event`` dicts (used by the dataset and the messy-data step)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa


def batch_to_dicts(batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
    """The ``session_event`` dicts of a batch of flat event columns (absent values left out)."""
    cols = batch.to_pydict()
    top = ("article_id", "brand", "category", "position", "placement", "request_id", "revenue", "duration_ms")
    for i in range(batch.num_rows):
        ev: dict[str, Any] = {
            "schema_version": cols["schema_version"][i],
            "event_id": cols["event_id"][i],
            "event_type": cols["event_type"][i],
            "user_id": cols["user_id"][i],
            "session_id": cols["session_id"][i],
            "event_time": cols["event_time"][i],
        }
        for c in top:
            v = cols[c][i]
            if v is not None:
                ev[c] = v
        if cols["device_type"][i] is not None:
            dev = {"type": cols["device_type"][i]}
            for k, c in (("os", "device_os"), ("browser", "device_browser")):
                if cols[c][i] is not None:
                    dev[k] = cols[c][i]
            ev["device"] = dev
        if cols["country"][i] is not None:
            geo = {"country": cols["country"][i]}
            for k, c in (("city", "city"), ("timezone", "timezone")):
                if cols[c][i] is not None:
                    geo[k] = cols[c][i]
            ev["geo"] = geo
        yield ev

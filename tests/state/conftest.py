"""Seeded synthetic history shared by the state tests."""

from __future__ import annotations

import pandas as pd
import pytest

from stream.state.synthetic import generate_events


@pytest.fixture(scope="session")
def history() -> list[dict]:
    """40 users over 40 days, sorted by time (about 15k events)."""
    return generate_events(n_users=40, days=40, seed=7)


@pytest.fixture(scope="session")
def history_df(history: list[dict]) -> pd.DataFrame:
    rows = []
    for e in history:
        dev, geo = e.get("device") or {}, e.get("geo") or {}
        rows.append(
            {
                **{k: v for k, v in e.items() if k not in ("device", "geo")},
                "device_type": dev.get("type"),
                "device_os": dev.get("os"),
                "country": geo.get("country"),
                "city": geo.get("city"),
                "timezone": geo.get("timezone"),
            }
        )
    return pd.DataFrame(rows)

"""A chdb database of its own for a test, a module or a session (the session shares one chdb directory)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def fresh_database(prefix: str = "t") -> Iterator[Any]:
    """A ClickHouse (embedded chdb) with the product's DDL applied, in a new database, dropped at the end."""
    from stream.clickhouse import connect
    from stream.config import load_settings

    store = connect(load_settings(clickhouse_database=f"{prefix}_{uuid.uuid4().hex[:10]}"))
    try:
        yield store
    finally:
        store.command("DROP DATABASE IF EXISTS {db}")
        store.close()

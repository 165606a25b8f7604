"""The ClickHouse contract: six methods, two real backends (embedded chdb, a server)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

log = logging.getLogger(__name__)

DDL_DIR = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"


class ClickHouse(Protocol):
    """What the rest of the code may ask of ClickHouse.

    SQL may contain ``{db}``, replaced by the configured database name, and ``{name:Type}``
    server-side parameters bound from ``params``.
    """

    database: str

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... SELECT, OPTIMIZE)."""

    def query_df(self, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Run a query and return a pandas DataFrame."""

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        """Run a query and return an Arrow table."""

    def insert_df(self, table: str, df: pd.DataFrame) -> int:
        """Insert a DataFrame (column names = table columns) in one columnar batch."""

    def insert_data(self, sql: str, data: bytes, settings: dict[str, Any] | None = None) -> None:
        """Run ``sql``, an ``INSERT ... FORMAT <format>`` (whose SELECT may read ``input('<structure>')``),
        with ``data`` in that format as its input; ``settings`` are ClickHouse settings for it."""

    def close(self) -> None:
        """Release the connection."""


def render(sql: str, database: str) -> str:
    """Substitute the database name; ``{db}`` is the only template variable we own."""
    return sql.replace("{db}", f"`{database}`")


def apply_ddl(ch: ClickHouse, ddl_dir: Path = DDL_DIR) -> list[str]:
    """Create the database and every table in ``schemas/clickhouse/*.sql`` (idempotent).

    Returns the names of the files applied, in order.
    """
    ch.command("CREATE DATABASE IF NOT EXISTS {db}")
    applied = []
    for path in sorted(ddl_dir.glob("*.sql")):
        for statement in path.read_text().split(";"):
            body = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--")).strip()
            if body:
                ch.command(body)
        applied.append(path.name)
    return applied


#: table -> (what its current engine declares, what an older table lacks and what that costs)
_ENGINES = {
    "predictions": (
        "row_version",
        "was created by an older version (ReplacingMergeTree(predicted_at)): after "
        "a crash its FINAL may keep a replayed score over the exact one",
    ),
    "events": (
        "ReplacingMergeTree",
        "was created by an older version (MergeTree): events the worker archives again after a crash stay there twice",
    ),
}


def warn_old_engines(ch: ClickHouse) -> list[str]:
    """Log a warning for each table created by an older schema (schemas/clickhouse/); returns their names.

    CREATE TABLE IF NOT EXISTS leaves such a table as it is, and ClickHouse cannot change a table's
    engine or a ReplacingMergeTree's version column in place.
    """
    tables = ch.query_df(
        "SELECT name, engine_full FROM system.tables WHERE database = {d:String} AND name IN {names:Array(String)}",
        params={"d": ch.database, "names": list(_ENGINES)},
    )
    old = []
    for name, engine in zip(tables["name"], tables["engine_full"], strict=True):
        needle, cost = _ENGINES[name]
        if needle not in str(engine):
            log.warning('table %s.%s %s; recreate it as docs/worker.md ("Delivery") describes', ch.database, name, cost)
            old.append(name)
    return sorted(old)

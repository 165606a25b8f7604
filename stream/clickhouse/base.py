"""The ClickHouse contract: five methods, two real backends (embedded chdb, a server)."""

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
            body = "\n".join(
                line for line in statement.splitlines() if not line.strip().startswith("--")
            ).strip()
            if body:
                ch.command(body)
        applied.append(path.name)
    return applied


def warn_old_predictions_engine(ch: ClickHouse) -> bool:
    """Log a warning if ``predictions`` predates ``row_version`` (schemas/clickhouse/002_predictions.sql).

    CREATE TABLE IF NOT EXISTS leaves such a table as it is, and ClickHouse cannot change a
    ReplacingMergeTree's version column in place: its FINAL keeps the latest row even when that
    row is a replayed score. Returns whether it warned.
    """
    engine = ch.query_df(
        "SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = 'predictions'",
        params={"d": ch.database})
    if engine.empty or "row_version" in str(engine["engine_full"].iloc[0]):
        return False
    log.warning("table %s.predictions was created by an older version (ReplacingMergeTree(predicted_at)): after "
                "a crash its FINAL may keep a replayed score over the exact one; recreate it as docs/worker.md "
                "(\"Delivery\") describes", ch.database)
    return True

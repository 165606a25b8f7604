"""A ClickHouse server reached through clickhouse-connect (HTTP)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from stream.clickhouse.base import render
from stream.errors import InfraError


class ServerClickHouse:
    """A :class:`~stream.clickhouse.base.ClickHouse` backed by a ClickHouse server."""

    def __init__(self, url: str, user: str, password: str, database: str) -> None:
        import clickhouse_connect

        self.database = database
        try:
            self._client = clickhouse_connect.get_client(dsn=url, username=user, password=password)
        except Exception as exc:
            # The DSN may carry credentials: never echo it whole.
            raise InfraError(f"cannot reach the ClickHouse server configured by STREAM_CLICKHOUSE_URL: {exc}") from exc

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._client.command(render(sql, self.database), parameters=params)

    def query_df(self, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self._client.query_df(render(sql, self.database), parameters=params)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self._client.query_arrow(render(sql, self.database), parameters=params)

    def insert_df(self, table: str, df: pd.DataFrame) -> int:
        if df.empty:
            return 0
        self._client.insert_df(table=table, df=df, database=self.database)
        return len(df)

    def close(self) -> None:
        self._client.close()

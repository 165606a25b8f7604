"""A ClickHouse server reached through clickhouse-connect (HTTP): a remote one, or the embedded one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pyarrow as pa

from stream.clickhouse.base import render
from stream.errors import InfraError


class ServerClickHouse:
    """A :class:`~stream.clickhouse.base.ClickHouse` backed by a ClickHouse server.

    ``client_kwargs`` go to ``clickhouse_connect.get_client``; ``where`` names the server in
    errors (never its DSN, which may carry credentials); ``on_close`` runs after the client closes.
    ``compress_data``: :meth:`insert_data` sends its data lz4-compressed where the client compresses
    its inserts (JSON is several times larger than compressed Native); not to a server on this host.
    """

    def __init__(
        self,
        database: str,
        *,
        where: str = "the ClickHouse server configured by STREAM_CLICKHOUSE_URL",
        on_close: Callable[[], None] | None = None,
        compress_data: bool = True,
        **client_kwargs: Any,
    ) -> None:
        import clickhouse_connect

        self.database = database
        self._on_close = on_close
        self._compress_data = compress_data
        try:
            # tz_mode: DateTime64(3, 'UTC') columns come back UTC-aware, as from chdb (every column is UTC)
            self._client = clickhouse_connect.get_client(**{"tz_mode": "aware", **client_kwargs})
        except Exception as exc:
            raise InfraError(f"cannot reach {where}: {exc}") from exc

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with _errors("query"):
            self._client.command(render(sql, self.database), parameters=params)

    def query_df(self, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        with _errors("query"):
            return self._client.query_df(render(sql, self.database), parameters=params)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        with _errors("query"):
            return self._client.query_arrow(render(sql, self.database), parameters=params)

    def insert_df(self, table: str, df: pd.DataFrame) -> int:
        if df.empty:
            return 0
        with _errors(f"insert into {table!r}"):
            self._client.insert_df(table=table, df=df, database=self.database)
        return len(df)

    def insert_data(self, sql: str, data: bytes, settings: dict[str, Any] | None = None) -> None:
        # The statement goes in the URL and the data is the body, as ClickHouse's HTTP interface
        # reads an INSERT; a SELECT ... FROM input() in it transforms the rows on the server.
        headers = None
        if self._compress_data and self._client.write_compression == "lz4":
            import lz4.frame

            data, headers = lz4.frame.compress(data), {"Content-Encoding": "lz4"}
        with _errors("insert"):
            self._client.command(render(sql, self.database), data=data, settings=settings, transport_settings=headers)

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            if self._on_close is not None:
                self._on_close()
                self._on_close = None


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """clickhouse-connect's errors as :class:`InfraError` (the CLI prints those as one line)."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        yield
    except ClickHouseError as exc:
        raise InfraError(f"ClickHouse {what} failed: {exc}") from exc

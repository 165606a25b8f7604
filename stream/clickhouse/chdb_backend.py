"""chdb opened in this process: the real engine in-process, data in a directory.

Not what :func:`stream.clickhouse.connect` opens: chdb admits one *process* per directory, so the
embedded ClickHouse is served by one process per directory (``local_server.py``) to every other.
Kept for single-process use on a directory no server holds (e.g. comparing insert costs). chdb
also allows one data directory per process at a time, so sessions are shared per path and a
second path while the first is open is refused with a clear error.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa

from stream.clickhouse.base import render
from stream.errors import InfraError


class ChdbClickHouse:
    """A :class:`~stream.clickhouse.base.ClickHouse` backed by an embedded chdb session."""

    _shared: ClassVar[dict[str, tuple[Any, int]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path, database: str) -> None:
        from chdb import session as chdb_session

        self.path = str(Path(path).resolve())
        self.database = database
        Path(self.path).mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self.path in self._shared:
                sess, refs = self._shared[self.path]
                self._shared[self.path] = (sess, refs + 1)
            else:
                if self._shared:
                    other = next(iter(self._shared))
                    raise InfraError(
                        f"chdb is already open on {other!r} in this process; cannot also open "
                        f"{self.path!r} (close the first store, or use one STREAM_CHDB_PATH)"
                    )
                sess = chdb_session.Session(self.path)
                self._shared[self.path] = (sess, 1)
        self._session = sess
        self._closed = False
        self._qlock = threading.Lock()

    def _run(self, sql: str, fmt: str, params: dict[str, Any] | None) -> Any:
        sql = render(sql, self.database)
        with self._qlock:
            try:
                if params:
                    return self._session.query(sql, fmt, params=params)
                return self._session.query(sql, fmt)
            except Exception as exc:  # chdb raises bare RuntimeError subclasses
                raise InfraError(f"ClickHouse (chdb) query failed: {exc}") from exc

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._run(sql, "CSV", params)

    def query_df(self, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        out = self._run(sql, "DataFrame", params)
        return out if isinstance(out, pd.DataFrame) else pd.DataFrame(out)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        out = self._run(sql, "ArrowTable", params)
        return out if isinstance(out, pa.Table) else pa.table(out)

    def insert_df(self, table: str, df: pd.DataFrame) -> int:
        if df.empty:
            return 0
        cols = ", ".join(f"`{c}`" for c in df.columns)
        sql = render(f"INSERT INTO {{db}}.`{table}` ({cols}) SELECT {cols} FROM Python(chdb_insert_frame)",
                     self.database)
        # chdb resolves Python(chdb_insert_frame) in the frame that calls query(), so call it right here.
        chdb_insert_frame = df  # noqa: F841
        with self._qlock:
            try:
                self._session.query(sql, "CSV")
            except Exception as exc:
                raise InfraError(f"ClickHouse (chdb) insert into {table!r} failed: {exc}") from exc
        return len(df)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            sess, refs = self._shared[self.path]
            if refs <= 1:
                del self._shared[self.path]
                sess.close()
            else:
                self._shared[self.path] = (sess, refs - 1)

"""The dict-like stores the processor reads and writes: faust tables in the worker, dicts offline."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import NamedTuple

from stream.errors import InfraError


class Stores(NamedTuple):
    """Dict-like views the processor reads and writes (faust tables in the worker)."""

    users: MutableMapping[str, bytes]
    ad_pending: MutableMapping[str, bytes]
    articles: Mapping[str, bytes]
    bandit: MutableMapping[str, bytes]


class StoreUnavailable(InfraError):
    """A table read or write failed: the stores, not a record, are at fault."""


def read(store: Mapping[str, bytes], key: str) -> bytes | None:
    """``store.get(key)``; a failure of the store raises :class:`StoreUnavailable`."""
    try:
        return store.get(key)
    except Exception as exc:
        raise StoreUnavailable(f"cannot read the worker's tables: {type(exc).__name__}: {exc}") from exc


def unavailable(exc: Exception, what: str = "write the worker's tables") -> StoreUnavailable:
    """The error for a store that failed to ``what``."""
    return StoreUnavailable(f"cannot {what}: {type(exc).__name__}: {exc}")

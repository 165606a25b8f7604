"""Kafka's default key partitioning (Java clients, librdkafka's ``murmur2_random``), in Python.

The one home of murmur2 in this project. The events agent forwards article events to the
partition the Java producer would pick for their ``article_id``, but many per message: it needs
the partition number itself. The replay (and so the offline backtest) passes each record's
partition explicitly: :func:`record_partition`.
"""

from __future__ import annotations

from functools import lru_cache

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (seed 0x9747b28c) as an unsigned 32-bit int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n4 = length - length % 4
    for i in range(0, n4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[n4 + 2] << 16
    if rest >= 2:
        h ^= data[n4 + 1] << 8
    if rest >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@lru_cache(maxsize=200_000)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: ``toPositive(murmur2(key)) % partitions``.

    >>> partition_for(b"article-1", 1)
    0
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def record_partition(key: bytes | None, value: bytes, partitions: int) -> int:
    """The partition of a record: by its key as :func:`partition_for`; a keyless one by its value's hash.

    (The Java client spreads keyless records sticky-randomly; the replay wants a deterministic
    choice, so that a resumed run and the backtest partition alike.)

    >>> record_partition(b"user-1", b"{}", 4) == partition_for(b"user-1", 4)
    True
    """
    if key:
        return partition_for(key, partitions)
    return (murmur2(value) & 0x7FFFFFFF) % partitions

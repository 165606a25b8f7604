"""stream.kafka.partitioner against the Java client's values.

The vectors are those of Kafka's ``UtilsTest.testMurmur2`` (clients/src/test/java/org/apache/kafka/
common/utils/UtilsTest.java): key bytes -> ``Utils.murmur2`` as a Java (signed 32-bit) int.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from stream.kafka.partitioner import murmur2, partition_for, record_partition

ROOT = Path(__file__).resolve().parents[2]

JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


def as_signed32(x: int) -> int:
    assert 0 <= x < 2**32, f"murmur2 must return an unsigned 32-bit value, got {x}"
    return x - 2**32 if x >= 2**31 else x


@pytest.mark.parametrize("key,expected", JAVA_MURMUR2.items(), ids=JAVA_MURMUR2.keys())
def test_murmur2_matches_java(key: str, expected: int) -> None:
    assert as_signed32(murmur2(key.encode())) == expected


@pytest.mark.parametrize("key,expected", JAVA_MURMUR2.items(), ids=JAVA_MURMUR2.keys())
@pytest.mark.parametrize("partitions", [1, 3, 4, 7, 12, 1024])
def test_partition_for_is_java_to_positive_mod(key: str, expected: int, partitions: int) -> None:
    # Java: Utils.toPositive(Utils.murmur2(keyBytes)) % numPartitions, toPositive(x) = x & 0x7fffffff
    java_partition = (expected & 0x7FFFFFFF) % partitions
    assert partition_for(key.encode(), partitions) == java_partition


def test_murmur2_of_every_tail_length_matches_an_independent_implementation() -> None:
    """aiokafka's DefaultPartitioner murmur2 (a separate port of the Java code) on seeded random keys.

    Lengths 0..64 cover every tail (length % 4 in 0..3) and several 4-byte blocks.
    """
    rng = random.Random(20240611)
    for length in range(65):
        for _ in range(20):
            key = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(key) == aiokafka_murmur2(key) & 0xFFFFFFFF, key


def test_murmur2_handles_bytes_with_the_high_bit_set() -> None:
    # Java reads bytes as signed; the result must still equal the unsigned-byte computation.
    for key in (b"\xff", b"\x80\x81", b"\xfe\xff\x00", b"\xff\xff\xff\xff", b"\x80" * 9):
        assert murmur2(key) == aiokafka_murmur2(key) & 0xFFFFFFFF


def test_partition_for_stays_in_range_and_spreads_keys() -> None:
    counts = [0] * 8
    for i in range(4000):
        p = partition_for(f"article-{i}".encode(), 8)
        assert 0 <= p < 8
        counts[p] += 1
    # 500 expected per partition; a hash that ignores part of the key would be far off.
    assert min(counts) > 400
    assert max(counts) < 600


def test_record_partition_matches_kafkas_hash_by_key_or_else_by_value() -> None:
    """The replay's choice, against aiokafka's murmur2: keyed records by key, keyless ones by value."""
    rng = random.Random(7)
    for _ in range(200):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24)))
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        n = rng.choice([1, 3, 4, 12])
        assert record_partition(key, value, n) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % n
        for no_key in (None, b""):
            assert record_partition(no_key, value, n) == (aiokafka_murmur2(value) & 0x7FFFFFFF) % n


def test_murmur2_has_one_home() -> None:
    """Only stream/kafka/partitioner.py implements murmur2 (its multiplier is the tell)."""
    roots = [ROOT / d for d in ("stream", "simulator", "batch_training", "bench", "scripts")]
    homes = sorted(
        str(p.relative_to(ROOT)) for r in roots for p in r.rglob("*.py") if "5BD1E995" in p.read_text().upper()
    )
    assert homes == ["stream/kafka/partitioner.py"]

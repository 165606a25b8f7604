"""observe_many gives the same histogram samples as one observe() per value."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram

from stream.metrics import observe_many

BUCKETS = (0.005, 0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() for s in metric.samples if not s.name.endswith("_created")}


def test_same_samples_as_observe_one_by_one() -> None:
    rng = random.Random(5)
    values = [0.0, 0.005, 0.0050001, 1.0, 10.0, 10.5, 1e9, -0.1] + [rng.expovariate(2.0) for _ in range(500)]
    one, many = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("lat_seconds", "x", buckets=BUCKETS, registry=one)
    h_many = Histogram("lat_seconds", "x", buckets=BUCKETS, registry=many)
    for v in values:
        h_one.observe(v)
    observe_many(h_many, values[:100])
    observe_many(h_many, [])
    observe_many(h_many, values[100:])
    expected = _samples(one)
    assert expected[("lat_seconds_count", ())] == len(values)
    # buckets are cumulative and include their bound
    assert expected[("lat_seconds_bucket", (("le", "0.005"),))] == sum(v <= 0.005 for v in values)
    got = _samples(many)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key

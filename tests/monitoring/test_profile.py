"""Reference profiles: bins and counts checked against direct counts, the stored form, and loading from the registry."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest

from stream.errors import SchemaError
from stream.models.registry import ModelRegistry
from stream.monitoring.profile import METADATA_KEY, ReferenceProfile, build_profile, column_profile, load_profile
from tests.monitoring.streams import NAMES, rows


def test_numeric_bins_are_training_deciles_with_their_counts() -> None:
    v = np.random.default_rng(1).normal(size=5000)
    prof = column_profile(v, bins=10)
    deciles = np.quantile(v, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert prof.kind == "numeric"
    np.testing.assert_allclose(prof.edges, deciles)
    bounds = [-np.inf, *deciles, np.inf]
    direct = [int(((v > lo) & (v <= hi)).sum()) for lo, hi in pairwise(bounds)]
    assert prof.counts.tolist() == [*direct, 0]
    assert prof.bin_counts(v).tolist() == prof.counts.tolist()


def test_a_point_mass_is_one_bin_with_its_share() -> None:
    rng = np.random.default_rng(2)
    v = np.where(rng.random(10_000) < 0.6, 0.0, rng.exponential(3, 10_000))
    prof = column_profile(v, bins=10)
    assert prof.edges[0] == 0.0 and len(np.unique(prof.edges)) == len(prof.edges)
    assert prof.counts[0] == int((v == 0).sum())  # (-inf, 0]: all the zeros, no empty bins after it
    assert (prof.counts[:-1] > 0).all()


def test_discrete_and_constant_columns_get_a_bin_per_value_and_an_outside_bin_each_side() -> None:
    v = np.array([0.0] * 70 + [1.0] * 20 + [2.0] * 10)
    prof = column_profile(v, bins=10)
    assert prof.kind == "discrete"
    assert prof.counts.tolist() == [0, 70, 20, 10, 0, 0]  # below, 0, 1, 2, above, missing
    assert prof.bin_counts(np.array([-1.0, 0.0, 2.0, 7.0])).tolist() == [1, 1, 0, 1, 1, 0]
    const = column_profile(np.ones(50), bins=10)
    assert const.counts.tolist() == [0, 50, 0, 0]
    assert const.bin_counts(np.array([0.5, 1.0, 1.5])).tolist() == [1, 1, 1, 0]


def test_missing_values_have_their_own_bin_and_the_cdf_ignores_them() -> None:
    v = np.random.default_rng(3).normal(10, 2, 1000)
    v[::10] = np.nan
    v[5] = np.inf
    prof = column_profile(v, bins=10)
    assert prof.counts[-1] == 101 and prof.missing_share == pytest.approx(0.101)
    finite = v[np.isfinite(v)]
    expected = [float(np.mean(finite <= x)) for x in prof.cdf_x]
    np.testing.assert_allclose(prof.cdf_p, expected)
    assert prof.cdf_x[0] == finite.min() and prof.cdf_x[-1] == finite.max()


def test_profile_survives_json_and_loads_from_the_registry(tmp_path) -> None:
    x, p = rows(3000, np.random.default_rng(4))
    prof = build_profile(NAMES, x, p)  # NAMES are not in alphabetical order
    assert prof.features == NAMES and list(prof.columns)[-1] == "prediction"
    reg = ModelRegistry(tmp_path)
    mv = reg.register("click", "json", lambda path: path.write_text("{}"), {METADATA_KEY: prof.to_dict()})
    loaded = load_profile(reg.get("click", mv.version))
    assert loaded == prof
    assert list(loaded.columns) == [*NAMES, "prediction"]  # feature order, though metadata.json sorts its keys
    bare = reg.register("click", "json", lambda path: path.write_text("{}"), {})
    assert load_profile(bare) is None
    assert ReferenceProfile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof


def test_bad_profiles_and_inputs_say_what_was_expected() -> None:
    x, p = rows(100, np.random.default_rng(5))
    d = build_profile(NAMES, x, p).to_dict()
    with pytest.raises(SchemaError, match="expected 1"):
        ReferenceProfile.from_dict({**d, "profile_version": 9})
    with pytest.raises(ValueError, match=r"expected \(rows, 2\)"):
        build_profile(["a", "b"], x, p)
    with pytest.raises(ValueError, match="reserved"):
        build_profile([*NAMES[:-1], "prediction"], x, p)

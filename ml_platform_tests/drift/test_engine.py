"""The drift engine against the real Evidently 0.7 ``DataDriftPreset``, plus PSI and the HTML report.

Every comparison runs Evidently itself on the same frames. Scores must match
Evidently's within ``rel_tol=1e-9`` (``abs_tol=1e-12`` for p-values near 0): the
engine applies the same statistics, so differences are floating-point rounding
(summation order) only. Decisions and method names must be identical.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_platform.drift import engine
from ml_platform.drift.engine import (
    CHI_SQUARE,
    JENSEN_SHANNON,
    KS,
    WASSERSTEIN,
    Z_TEST,
    DriftResult,
    compute_drift,
    wasserstein_1_sorted,
)
from ml_platform.drift.evidently_report import build_evidently_report, run_evidently_drift
from ml_platform.drift.psi import (
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    population_stability_index,
    psi_band,
    psi_categorical,
)

REL_TOL = 1e-9
ABS_TOL = 1e-12

NUMERIC = [
    "n_same",
    "n_shift",
    "n_scale",
    "n_subtle",
    "n_nan_inf",
    "n_ties",
    "n_disc_same",
    "n_disc_shift",
    "n_bin_same",
    "n_bin_shift",
]
CATEGORICAL = ["c_same", "c_shift", "c_new_level", "c_bin_same", "c_bin_shift", "c_category_dtype", "c_missing"]
LEVELS = np.array(["ant", "bee", "cat", "dog"], dtype=object)


def make_frame(rows: int, seed: int, current: bool) -> pd.DataFrame:
    """Columns whose current distribution is unchanged or shifted, with NaN/inf, ties and dtypes."""
    rng = np.random.default_rng([seed, int(current)])
    shift = 1.0 if current else 0.0
    n_nan_inf = rng.normal(size=rows)
    if current:
        n_nan_inf[rng.random(rows) < 0.1] = np.nan
        n_nan_inf[:3] = [np.inf, -np.inf, np.inf]
    cat_probs = np.array([0.1, 0.2, 0.3, 0.4] if current else [0.4, 0.3, 0.2, 0.1])
    new_level = rng.choice(4, size=rows, p=[0.3, 0.3, 0.2, 0.2] if current else [0.4, 0.3, 0.3, 0.0])
    c_missing = LEVELS[rng.choice(3, size=rows)].copy()
    if current:
        c_missing[rng.random(rows) < 0.2] = None
    frame = pd.DataFrame(
        {
            "n_same": rng.normal(size=rows),
            "n_shift": rng.normal(size=rows) + 0.6 * shift,
            "n_scale": rng.normal(size=rows) * (1.6 if current else 1.0),
            "n_subtle": rng.normal(size=rows) + 0.03 * shift,
            "n_nan_inf": n_nan_inf,
            "n_ties": rng.integers(0, 12, size=rows) + (2 if current else 0),
            "n_disc_same": rng.choice([1.5, 2.5, 3.5, 4.5], size=rows),
            "n_disc_shift": rng.choice([1.5, 2.5, 3.5, 4.5], size=rows, p=cat_probs),
            "n_bin_same": rng.integers(0, 2, size=rows),
            "n_bin_shift": (rng.random(rows) < (0.7 if current else 0.4)).astype(np.int64),
            "c_same": LEVELS[rng.choice(4, size=rows)],
            "c_shift": LEVELS[rng.choice(4, size=rows, p=cat_probs)],
            "c_new_level": LEVELS[new_level],
            "c_bin_same": LEVELS[rng.integers(0, 2, size=rows)],
            "c_bin_shift": LEVELS[(rng.random(rows) < (0.7 if current else 0.4)).astype(np.intp)],
            "c_category_dtype": pd.Categorical(
                LEVELS[rng.choice(3, size=rows, p=cat_probs[:3] / np.sum(cat_probs[:3]))],
                categories=["ant", "bee", "cat", "unused"],
            ),
            "c_missing": c_missing,
        }
    )
    return frame


def assert_matches_evidently(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> DriftResult:
    result = compute_drift(reference, current, numeric, categorical)
    evidently = run_evidently_drift(reference, current, numeric, categorical)
    assert len(result.features) == len(evidently["columns"]) == len(numeric) + len(categorical)
    for feature in result.features:
        expected = evidently["columns"][feature.feature]
        where = f"{feature.feature}: engine {feature}, evidently {expected}"
        assert feature.method == expected["method"], where
        assert feature.threshold == expected["threshold"], where
        assert feature.drifted == expected["drifted"], where
        assert math.isclose(feature.score, expected["score"], rel_tol=REL_TOL, abs_tol=ABS_TOL), where
    assert result.drifted_count == evidently["drifted_count"]
    assert result.drift_share == pytest.approx(evidently["drift_share"])
    assert result.dataset_drift == evidently["dataset_drift"]
    return result


def _kinds_and_decisions(result: DriftResult) -> set[tuple[str, bool]]:
    return {(f.kind, f.drifted) for f in result.features}


# ----------------------------------------------------------------------------- parity with Evidently


def test_small_reference_uses_tests_and_matches_evidently() -> None:
    """<= 1,000 reference rows: K-S, chi-square and Z-test, as Evidently picks them."""
    reference, current = make_frame(600, seed=1, current=False), make_frame(750, seed=1, current=True)
    # Evidently spends ~0.5 s per column building plots: skip the near-duplicate distance-regime columns.
    numeric = [c for c in NUMERIC if c not in ("n_scale", "n_subtle", "n_ties")]
    result = assert_matches_evidently(reference, current, numeric, CATEGORICAL)

    assert {f.method for f in result.features} == {KS, CHI_SQUARE, Z_TEST}
    assert result.feature("n_same").method == KS
    assert result.feature("n_disc_shift").method == CHI_SQUARE
    assert result.feature("n_bin_shift").method == Z_TEST
    assert result.feature("c_shift").method == CHI_SQUARE
    assert result.feature("c_bin_shift").method == Z_TEST
    assert _kinds_and_decisions(result) == {(k, d) for k in ("numeric", "categorical") for d in (True, False)}
    for name in ("n_shift", "n_disc_shift", "n_bin_shift", "c_shift", "c_new_level", "c_bin_shift"):
        assert result.feature(name).drifted, name
    assert result.feature("c_new_level").score == 0.0  # unseen in reference: infinite chi-square


def test_large_reference_uses_distances_and_matches_evidently() -> None:
    """> 1,000 reference rows: normed Wasserstein and Jensen-Shannon, as Evidently picks them.

    Equal row counts, so most Wasserstein columns take the equal-size path and ``n_nan_inf``
    (NaN/inf dropped from current) the general merge path.
    """
    reference, current = make_frame(3000, seed=2, current=False), make_frame(3000, seed=2, current=True)
    result = assert_matches_evidently(reference, current, NUMERIC, CATEGORICAL)

    assert {f.method for f in result.features} == {WASSERSTEIN, JENSEN_SHANNON}
    assert result.feature("n_ties").method == WASSERSTEIN
    assert result.feature("n_disc_same").method == JENSEN_SHANNON  # numeric with <= 5 values
    assert result.feature("c_same").method == JENSEN_SHANNON
    assert _kinds_and_decisions(result) == {(k, d) for k in ("numeric", "categorical") for d in (True, False)}
    for name in ("n_same", "n_subtle", "n_nan_inf", "c_same", "c_bin_same", "c_missing"):
        assert not result.feature(name).drifted, name
    for name in ("n_shift", "n_scale", "n_ties", "c_shift", "c_new_level", "c_bin_shift"):
        assert result.feature(name).drifted, name


@pytest.mark.parametrize(
    ("reference_rows", "nan_rows", "method", "categorical_method"),
    [(1000, 0, KS, CHI_SQUARE), (1001, 0, WASSERSTEIN, JENSEN_SHANNON), (1010, 20, KS, JENSEN_SHANNON)],
    ids=["1000-rows", "1001-rows", "1010-rows-20-nan"],
)
def test_regime_switch_counts_non_missing_reference_rows(
    reference_rows: int, nan_rows: int, method: str, categorical_method: str
) -> None:
    """The switch is per column, on the reference values left after dropping NaN."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=reference_rows)
    values[:nan_rows] = np.nan
    reference = pd.DataFrame({"x": values, "c": LEVELS[rng.choice(3, size=reference_rows)]})
    current = pd.DataFrame({"x": rng.normal(0.2, size=900), "c": LEVELS[rng.choice(3, size=900)]})
    result = assert_matches_evidently(reference, current, ["x"], ["c"])
    assert result.feature("x").method == method
    assert result.feature("c").method == categorical_method  # "c" has no NaN: all rows count


@pytest.mark.parametrize("reference_rows", [500, 2000], ids=["small", "large"])
def test_constant_reference_column_matches_evidently(reference_rows: int) -> None:
    rng = np.random.default_rng(4)
    reference = pd.DataFrame(
        {"same_constant": np.full(reference_rows, 5.0), "varies_now": np.full(reference_rows, 5.0)}
    )
    current = pd.DataFrame({"same_constant": np.full(800, 5.0), "varies_now": rng.normal(5.0, 0.01, size=800)})
    result = assert_matches_evidently(reference, current, ["same_constant", "varies_now"], [])

    assert not result.feature("same_constant").drifted
    assert result.feature("varies_now").drifted
    if reference_rows > 1000:  # std(reference) = 0 is floored at 0.001 before normalising
        assert result.feature("varies_now").method == WASSERSTEIN
        assert result.feature("varies_now").score > 1.0


def test_dataset_drift_when_share_reaches_threshold() -> None:
    rng = np.random.default_rng(5)
    reference = pd.DataFrame({name: rng.normal(size=2000) for name in "abcd"})
    current = pd.DataFrame({name: rng.normal(size=2000) + (1.0 if name in "ab" else 0.0) for name in "abcd"})

    at_threshold = compute_drift(reference, current, list("abcd"), [], share_threshold=0.5)
    assert (at_threshold.drifted_count, at_threshold.drift_share, at_threshold.dataset_drift) == (2, 0.5, True)
    above = compute_drift(reference, current, list("abcd"), [], share_threshold=0.6)
    assert not above.dataset_drift
    assert above.drifted_features == ["a", "b"]


# ----------------------------------------------------------------------------- exactness and edge cases


@pytest.mark.parametrize(
    ("n", "m", "chunk"),
    [(1, 1, 1 << 20), (5, 9, 1 << 20), (2000, 2000, 1 << 20), (3000, 1777, 1 << 20), (3000, 1777, 100), (40, 41, 1)],
)
def test_wasserstein_matches_scipy(n: int, m: int, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy import stats

    monkeypatch.setattr(engine, "_CHUNK", chunk)
    rng = np.random.default_rng(n * 7919 + m)
    u = np.sort(rng.integers(0, 30, size=n).astype(np.float64))  # many ties across and within samples
    v = np.sort(rng.integers(5, 40, size=m).astype(np.float64) + rng.random(m) * (m % 2))
    assert wasserstein_1_sorted(u, v) == pytest.approx(stats.wasserstein_distance(u, v), rel=1e-12, abs=1e-15)


def test_nans_and_infinities_in_current_are_ignored() -> None:
    rng = np.random.default_rng(6)
    reference = pd.DataFrame({"x": rng.normal(size=3000)})
    clean = rng.normal(size=3000)
    dirty = np.concatenate([clean, [np.nan] * 500, [np.inf, -np.inf]])
    on_clean = compute_drift(reference, pd.DataFrame({"x": clean}), ["x"], [])
    on_dirty = compute_drift(reference, pd.DataFrame({"x": dirty}), ["x"], [])
    assert on_dirty.features == on_clean.features
    assert on_dirty.current_rows == 3502


def test_nullable_and_integer_dtypes() -> None:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 50, size=2500)
    reference = pd.DataFrame({"x": pd.array(values, dtype="Int64")})
    current = pd.DataFrame({"x": pd.array(np.append(values[:2000], [None] * 10), dtype="Int64")})
    result = compute_drift(reference, current, ["x"], [])
    as_float = compute_drift(
        pd.DataFrame({"x": values.astype(float)}), pd.DataFrame({"x": values[:2000].astype(float)}), ["x"], []
    )
    assert result.features == as_float.features


def test_empty_current_raises_clear_error() -> None:
    reference = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]})
    with pytest.raises(ValueError, match="current dataset is empty"):
        compute_drift(reference, reference.iloc[:0], ["x"], ["c"])
    with pytest.raises(ValueError, match="reference dataset is empty"):
        compute_drift(reference.iloc[:0], reference, ["x"], ["c"])


@pytest.mark.parametrize(
    ("current", "numeric", "categorical", "message"),
    [
        (
            pd.DataFrame({"x": [np.nan, np.inf], "c": ["a", "b"]}),
            ["x"],
            ["c"],
            "'x' has no finite value in the current",
        ),
        (
            pd.DataFrame({"x": [1.0, 2.0], "c": [None, np.nan]}),
            ["x"],
            ["c"],
            "'c' has no non-missing value in the current",
        ),
        (pd.DataFrame({"x": [1.0, 2.0]}), ["x"], ["c"], r"missing from the current dataset: \['c'\]"),
        (pd.DataFrame({"x": ["a", "b"], "c": ["a", "b"]}), ["x"], ["c"], "should contain numerical values only"),
        (pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]}), ["x"], ["x"], "more than once"),
        (pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]}), [], [], "no columns to analyse"),
    ],
    ids=["all-nan-numeric", "all-missing-categorical", "missing-column", "non-numeric", "duplicate", "no-columns"],
)
def test_invalid_inputs_raise(current: pd.DataFrame, numeric: list, categorical: list, message: str) -> None:
    reference = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]})
    with pytest.raises(ValueError, match=message):
        compute_drift(reference, current, numeric, categorical)


def test_share_threshold_must_be_a_share() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="share_threshold"):
        compute_drift(frame, frame, ["x"], [], share_threshold=1.5)


def test_result_serialises_and_renders() -> None:
    reference, current = make_frame(1500, seed=8, current=False), make_frame(1500, seed=8, current=True)
    result = compute_drift(reference, current, NUMERIC, CATEGORICAL, workers=1)
    assert compute_drift(reference, current, NUMERIC, CATEGORICAL, workers=3) == result
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["column_count"] == len(NUMERIC) + len(CATEGORICAL)
    assert payload["drifted_count"] == result.drifted_count
    assert {f["feature"] for f in payload["features"]} == set(NUMERIC) | set(CATEGORICAL)
    table = result.to_markdown()
    assert table.count("\n") == len(result.features) + 1
    assert "| n_shift | numeric | Wasserstein distance (normed) |" in table


# ----------------------------------------------------------------------------- PSI


def test_psi_numeric_same_distribution_is_near_zero() -> None:
    rng = np.random.default_rng(9)
    value = population_stability_index(rng.normal(size=50_000), rng.normal(size=50_000))
    assert 0 <= value < 0.01
    assert psi_band(value) == "stable"


def test_psi_numeric_strong_shift_is_significant() -> None:
    rng = np.random.default_rng(10)
    value = population_stability_index(rng.normal(size=50_000), rng.normal(1.0, size=50_000))
    assert value > PSI_SIGNIFICANT
    assert psi_band(value) == "significant"


def test_psi_numeric_values_beyond_reference_range_land_in_outer_bins() -> None:
    reference = np.arange(1000, dtype=float)
    far_away = np.full(1000, 1e9)  # all current values above the reference maximum: last decile only
    value = population_stability_index(reference, far_away)
    # 9 bins go 0.1 -> 1e-4 and the last goes 0.1 -> 1.0
    expected = 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1) + (1.0 - 0.1) * math.log(1.0 / 0.1)
    assert value == pytest.approx(expected)


def test_psi_handles_nan_constant_and_bad_input() -> None:
    assert population_stability_index([1.0, 1.0, 1.0, np.nan], [1.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="current sample has no finite value"):
        population_stability_index([1.0, 2.0], [np.nan])
    with pytest.raises(ValueError, match="bins"):
        population_stability_index([1.0, 2.0], [1.0], bins=1)


def test_psi_categorical() -> None:
    rng = np.random.default_rng(11)
    labels = np.array(["setosa", "versicolor", "virginica"], dtype=object)
    same = psi_categorical(labels[rng.choice(3, size=20_000)], labels[rng.choice(3, size=20_000)])
    shifted = psi_categorical(
        pd.Series(labels[rng.choice(3, size=20_000)]), list(labels[rng.choice(3, size=20_000, p=[0.7, 0.2, 0.1])])
    )
    assert same < 0.01 and psi_band(same) == "stable"
    assert shifted > PSI_SIGNIFICANT
    new_label = psi_categorical(["a"] * 95 + ["b"] * 5, ["a"] * 90 + ["b"] * 5 + ["c"] * 5)
    # "c" is absent from the reference: its share is clipped at 1e-4 instead of giving an infinite PSI.
    assert new_label == pytest.approx(-0.05 * math.log(0.90 / 0.95) + (0.05 - 1e-4) * math.log(0.05 / 1e-4))
    assert psi_band(new_label) == "significant"
    assert psi_band(PSI_MODERATE) == "moderate"
    assert psi_categorical([0, 1, 1, None], [1, 0, 1]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="reference sample has no non-missing label"):
        psi_categorical([None], ["a"])


# ----------------------------------------------------------------------------- Evidently HTML report


def test_evidently_report_is_sampled_and_saved(tmp_path: Path) -> None:
    reference, current = make_frame(3000, seed=12, current=False), make_frame(2500, seed=12, current=True)
    html = tmp_path / "reports" / "drift.html"
    summary = build_evidently_report(reference, current, ["n_same", "n_shift"], ["c_shift"], html, max_rows=1200)

    assert html.is_file() and html.stat().st_size > 10_000
    assert summary["sampled"] is True
    assert (summary["reference_rows_used"], summary["current_rows_used"]) == (1200, 1200)
    assert (summary["reference_rows"], summary["current_rows"]) == (3000, 2500)
    assert "sample" in summary["note"]
    assert set(summary["columns"]) == {"n_same", "n_shift", "c_shift"}
    assert summary["columns"]["n_shift"]["method"] == WASSERSTEIN
    assert summary["columns"]["n_shift"]["drifted"] is True
    assert summary["columns"]["c_shift"]["method"] == JENSEN_SHANNON
    json.dumps(summary)


def test_evidently_report_unsampled_matches_engine(tmp_path: Path) -> None:
    reference, current = make_frame(1100, seed=13, current=False), make_frame(900, seed=13, current=True)
    summary = build_evidently_report(reference, current, ["n_shift", "n_same"], ["c_same"], tmp_path / "r.html")
    assert summary["sampled"] is False
    result = compute_drift(reference, current, ["n_shift", "n_same"], ["c_same"])
    for feature in result.features:
        assert summary["columns"][feature.feature]["drifted"] == feature.drifted
        assert summary["columns"][feature.feature]["score"] == pytest.approx(feature.score, rel=REL_TOL)

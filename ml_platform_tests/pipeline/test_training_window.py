"""The training window and the evaluation-set rules (plain functions over real frames, no mocks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_platform.catalog import get_model
from ml_platform.ml.datasets import (
    Batch,
    build_training_rows,
    key_of_stored,
    row_hashes,
    seed_size,
    select_seed,
)
from ml_platform.spec import DatasetSpec, SpecError, TrainingWindow, load_spec

IRIS_CSV = Path(__file__).resolve().parents[2] / "ml_platform/data/iris.csv"
DAY = 86_400.0
NOW = 1_800_000_000.0


def _spec(**window: object) -> DatasetSpec:
    spec = get_model("iris").spec
    training = dataclasses.replace(spec.training, window=TrainingWindow(**window))  # type: ignore[arg-type]
    return dataclasses.replace(spec, training=training)


def _batches(frames: dict[str, tuple[pd.DataFrame, float]]) -> tuple[list[Batch], object]:
    """Batches named by key, with their acceptance age in days; the reader serves their rows."""
    batches = [
        Batch(Path(f"{name}@{i:064x}.csv"), f"{name}.csv@{i:064x}", f"{i:064x}", NOW - age * DAY)
        for i, (name, (_, age)) in enumerate(frames.items())
    ]
    by_key = {b.key: frames[b.key.split(".csv@")[0]][0] for b in batches}

    def read(batch: Batch, nrows: int | None) -> pd.DataFrame:
        frame = by_key[batch.key]
        return frame if nrows is None else frame.iloc[:nrows]

    return batches, read


def _iris() -> pd.DataFrame:
    return pd.read_csv(
        IRIS_CSV,
        dtype={
            "sepal_length": "float64",
            "sepal_width": "float64",
            "petal_length": "float64",
            "petal_width": "float64",
        },
    )


def test_row_hash_identifies_rows_whatever_the_file() -> None:
    spec = load_spec("iris")
    iris = _iris()
    again = iris.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert set(row_hashes(iris, spec)) == set(row_hashes(again, spec))
    relabelled = iris.assign(target=(iris["target"] + 1) % 3)
    assert not set(row_hashes(relabelled, spec)) & set(row_hashes(iris, spec))  # the label is part of a row


def test_evaluation_seed_is_deterministic_and_bounded() -> None:
    spec = load_spec("iris")
    iris = _iris()
    seed = select_seed(iris, spec)
    assert len(seed) == 30 == seed_size(150, spec)
    shuffled = iris.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert sorted(row_hashes(select_seed(shuffled, spec), spec)) == sorted(row_hashes(seed, spec))
    assert seed_size(3, spec) == 1 and seed_size(10_000_000, spec) == spec.evaluation.max_seed_rows


def test_evaluation_rows_never_train_even_when_landed_again() -> None:
    spec = _spec(max_rows=None)
    iris = _iris()
    evaluation = select_seed(iris, spec)
    batches, read = _batches({"first": (iris, 2), "again": (iris.copy(), 1)})
    rows = build_training_rows(batches, read, spec, np.unique(row_hashes(evaluation, spec)), "e1", now=NOW)
    assert not set(row_hashes(rows.frame, spec)) & set(row_hashes(evaluation, spec))
    assert rows.excluded_evaluation_rows >= 60  # the seed rows, in both copies
    assert [u["key"].split(".csv@")[0] for u in rows.used] == ["again", "first"]  # newest first


def test_max_rows_newest_first_cuts_the_oldest_batch_and_versions_exactly_the_rows_used() -> None:
    spec = _spec(max_rows=200, sampling="newest_first")
    iris = _iris()
    batches, read = _batches({"old": (iris, 3), "mid": (iris, 2), "new": (iris, 1)})
    empty = np.array([], dtype=np.uint64)
    rows = build_training_rows(batches, read, spec, empty, "e1", now=NOW)
    assert len(rows.frame) == 200
    assert [(u["key"].split(".csv@")[0], u["rows"]) for u in rows.used] == [("new", 150), ("mid", 50)]
    same = build_training_rows(batches, read, spec, empty, "e1", now=NOW)
    assert same.data_version == rows.data_version
    more = build_training_rows(batches, read, _spec(max_rows=201), empty, "e1", now=NOW)
    assert more.data_version != rows.data_version  # one more row: another data version
    other_evaluation = build_training_rows(batches, read, spec, empty, "e2", now=NOW)
    assert other_evaluation.data_version != rows.data_version


def test_max_age_days_leaves_old_landings_out() -> None:
    spec = _spec(max_age_days=7, max_rows=None)
    iris = _iris()
    batches, read = _batches({"ancient": (iris, 30), "recent": (iris, 2)})
    rows = build_training_rows(batches, read, spec, np.array([], dtype=np.uint64), "e1", now=NOW)
    assert [u["key"].split(".csv@")[0] for u in rows.used] == ["recent"]
    assert [k.split(".csv@")[0] for k in rows.skipped_old] == ["ancient"]
    assert len(rows.frame) == 150


def test_hash_sample_is_a_deterministic_sample_across_batches() -> None:
    spec = _spec(max_rows=100, sampling="hash_sample")
    iris = _iris()
    noisy = iris.assign(sepal_length=iris["sepal_length"] + 0.01)
    batches, read = _batches({"a": (iris, 2), "b": (noisy, 1)})
    rows = build_training_rows(batches, read, spec, np.array([], dtype=np.uint64), "e1", now=NOW)
    assert len(rows.frame) == 100
    assert sum(u["rows"] for u in rows.used) == 100 and len(rows.used) == 2
    again = build_training_rows(list(reversed(batches)), read, spec, np.array([], dtype=np.uint64), "e1", now=NOW)
    assert again.data_version == rows.data_version


def test_stored_name_maps_back_to_its_partition_key() -> None:
    digest = "ab" * 32
    assert key_of_stored(Path(f"iris@{digest}.csv"), digest) == f"iris.csv@{digest}"


def test_spec_rejects_more_predicted_classes_than_exist() -> None:
    from ml_platform.spec import parse_spec

    raw = {
        "name": "x",
        "features": [{"name": "a"}],
        "target": {"name": "y", "classes": [0, 1]},
        "model": {"name": "x", "estimator": "sklearn.tree.DecisionTreeClassifier"},
        "thresholds": {"min_predicted_classes": 3},
    }
    with pytest.raises(SpecError, match="min_predicted_classes"):
        parse_spec(raw)
    with pytest.raises(SpecError, match=r"training\.n_jobs"):
        parse_spec({**raw, "thresholds": {}, "training": {"n_jobs": 0}})


def test_fit_uses_every_core_but_registers_a_single_threaded_model() -> None:
    from ml_platform.ml.training import fit_model, split_dataset

    spec = load_spec("iris")
    assert "n_jobs" not in spec.model.params and spec.training.n_jobs == -1
    fitted = fit_model(split_dataset(_iris(), spec), spec)
    assert fitted.n_jobs == 1  # serving predicts single-threaded; fitting ran with n_jobs=-1
    pinned = dataclasses.replace(spec, model=dataclasses.replace(spec.model, params={**spec.model.params, "n_jobs": 2}))
    assert fit_model(split_dataset(_iris(), pinned), pinned).n_jobs == 2  # the spec's own value wins
    churn = load_spec("churn")
    churn_frame = pd.read_csv(Path(__file__).resolve().parents[2] / "ml_platform/data/churn.csv")
    assert fit_model(split_dataset(churn_frame, churn), churn).get_params()["estimator__n_jobs"] == 1

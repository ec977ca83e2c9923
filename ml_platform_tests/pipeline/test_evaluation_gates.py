"""Model gates judge candidate and champion on the model's evaluation set (real Dagster instance, real
sqlite MLflow store): an exact re-landing passes, a mostly mislabelled batch is refused before any
canary, a single-class model never becomes a challenger, and a retrain identical to a rejected
version is skipped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from ml_platform.ml.datasets import row_hashes
from ml_platform.ml.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
from ml_platform_tests.pipeline.helpers import (
    age,
    check_outcomes,
    defs_for_entry,
    landing_zone,
    materialized,
    model_versions,
    registry_client,
    run_training,
    spec_of,
)

pytestmark = pytest.mark.slow

IRIS_CSV = Path(__file__).resolve().parents[2] / "ml_platform/data/iris.csv"
NAME = "iris-random-forest"


def _land(frame: pd.DataFrame, name: str, folder: Path | None = None) -> Path:
    target = (folder or landing_zone().incoming_dir) / name
    frame.to_csv(target, index=False)
    age(target)
    return target


def _check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


def _train_champion(instance: dg.DagsterInstance) -> None:
    assert run_training(instance).success
    registry_client().set_registered_model_alias(NAME, CHAMPION_ALIAS, "1")


def test_exact_relanding_of_accepted_data_passes_the_regression_gate(platform_home: Path) -> None:
    iris = pd.read_csv(IRIS_CSV)
    # 15 new labelled rows of all three classes (no model trained on them)
    curated = iris.iloc[[*range(0, 5), *range(50, 55), *range(100, 105)]].assign(
        sepal_width=lambda f: (f["sepal_width"] + 0.05).round(2)
    )
    evaluation_dir = platform_home / "data/iris/evaluation"
    with dg.instance_for_test() as instance:
        _train_champion(instance)
        first_version = registry_client().get_model_version(NAME, "1").tags["evaluation_set_version"]
        target = landing_zone().incoming_dir / "iris_again.csv"
        target.write_bytes(IRIS_CSV.read_bytes())  # the very same bytes, landed again
        age(target)
        # the evaluation set grows by landing files into its own folder, gated like training data
        _land(curated, "curated.csv", evaluation_dir / "incoming")
        _land(curated.assign(target=7), "bad_labels.csv", evaluation_dir / "incoming")
        _land(curated, "curated_copy.csv")  # the same rows landed as training data: they must not train
        result = run_training(instance)

    assert result.success, check_outcomes(result)
    quarantined = [p.name for p in (evaluation_dir / "quarantine").iterdir()]
    assert any(n.startswith("bad_labels@") and n.endswith(".csv.report.md") for n in quarantined)
    assert any(n.startswith("curated@") for n in (p.name for p in (evaluation_dir / "accepted").iterdir()))
    curated_hashes = set(row_hashes(curated, spec_of()))
    training = pd.read_parquet(result.output_for_node("iris__training_dataset")["path"])
    assert not curated_hashes & set(row_hashes(training, spec_of()))  # evaluation rows never train
    regression = _check(result, "no_regression_against_champion")
    assert regression.passed
    metadata = regression.metadata
    assert metadata["champion_version"].value == 1
    # both scored on the same evaluation rows (30 seeded + 15 curated), which neither trained on
    assert metadata["evaluation_rows"].value == 45
    assert abs(metadata["candidate_accuracy"].value - metadata["champion_accuracy"].value) <= 0.02
    table = metadata["candidate_vs_champion"].value
    assert "| recall versicolor |" in table and "| metric | candidate | champion | threshold |" in table
    version = registry_client().get_model_version(NAME, "2")
    assert version.tags["validation_status"] == "passed"
    assert version.tags["evaluation_set_version"][:16] == metadata["evaluation_set_version"].value
    assert version.tags["evaluation_set_version"] != first_version  # a new evaluation-set version
    assert version.tags["training_batches_count"] == "2"


def test_mostly_mislabelled_batch_is_refused_by_the_model_gates_before_any_canary(platform_home: Path) -> None:
    iris = pd.read_csv(IRIS_CSV)
    rotated = pd.concat([iris] * 10, ignore_index=True)
    rotated["target"] = (rotated["target"] + 1) % 3  # 1,500 rows, every label wrong
    with dg.instance_for_test() as instance:
        _train_champion(instance)
        _land(rotated, "rotated.csv")
        result = run_training(instance)

    assert not result.success
    outcomes = check_outcomes(result)
    assert outcomes["batch_passes_expectation_suite"] is True  # the batch itself looks valid
    assert outcomes["meets_metric_thresholds"] is False
    assert outcomes["no_regression_against_champion"] is False
    assert "reference_snapshot" not in materialized(result)
    regression = _check(result, "no_regression_against_champion").metadata
    assert regression["champion_accuracy"].value >= 0.9  # the champion still scores on clean rows
    assert regression["candidate_accuracy"].value < 0.5
    client = registry_client()
    rejected = client.get_model_version(NAME, "2")
    assert rejected.tags["validation_status"] == "failed"  # the model-version sensor never deploys it
    assert rejected.tags["rejected_by"] in ("metric_thresholds", "no_regression")
    assert CHALLENGER_ALIAS not in client.get_registered_model(NAME).aliases
    assert str(client.get_model_version_by_alias(NAME, CHAMPION_ALIAS).version) == "1"


def test_single_class_data_never_yields_a_challenger(platform_home: Path, tmp_path: Path) -> None:
    from ml_platform.catalog import get_model
    from ml_platform.spec import load_spec_file

    iris = get_model("iris")
    raw = yaml.safe_load((iris.source.parent / "spec.yaml").read_text())
    raw["validation"]["min_classes"] = 1  # let a one-class batch through the batch gate: the model gates must stop it
    raw.pop("bootstrap_file")
    path = tmp_path / "iris_one_class.yaml"
    path.write_text(yaml.safe_dump(raw))
    entry = dataclasses.replace(iris, spec=load_spec_file(path))
    one_class = pd.read_csv(IRIS_CSV)
    _land(one_class[one_class["target"] == 0], "setosa_only.csv")
    with dg.instance_for_test() as instance:
        result = run_training(instance, defs=defs_for_entry(entry))

    assert not result.success
    thresholds = _check(result, "meets_metric_thresholds")
    assert not thresholds.passed
    assert "predicts 1 distinct class(es)" in (thresholds.description or "")
    assert _check(result, "evaluation_set_covers_every_class").passed is False  # WARN: classes missing
    assert CHALLENGER_ALIAS not in registry_client().get_registered_model(NAME).aliases
    assert model_versions(NAME)[0].tags["validation_status"] == "failed"


def test_retrain_identical_to_a_rejected_version_is_skipped(
    platform_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dg.instance_for_test() as instance:
        monkeypatch.setenv("MODEL_MIN_ACCURACY", "1.01")
        assert not run_training(instance).success  # v1 rejected by a gate

        skipped = run_training(instance)  # same data, same code and spec: not trained again
        assert skipped.success
        assert not {"candidate_model", "reference_snapshot"} & materialized(skipped)
        assert "training_dataset" in materialized(skipped)
        tags = instance.get_run_by_id(skipped.run_id).tags
        assert tags["ml_platform/skipped"] == "rejected_twin"
        assert "version 1" in tags["ml_platform/skip_reason"] and "rejected" in tags["ml_platform/skip_reason"]
        assert [str(v.version) for v in model_versions(NAME)] == ["1"]

        monkeypatch.delenv("MODEL_MIN_ACCURACY")  # the gate configuration changed: a new code version
        assert run_training(instance).success
        client = registry_client()
        client.set_model_version_tag(NAME, "2", "deployment_status", "rejected")  # as a canary rejection does
        again = run_training(instance)
        assert again.success and "candidate_model" not in materialized(again)
        assert "canary rejected it" in instance.get_run_by_id(again.run_id).tags["ml_platform/skip_reason"]
        assert [str(v.version) for v in model_versions(NAME)] == ["1", "2"]

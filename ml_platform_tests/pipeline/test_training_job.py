"""training_job end to end on a real Dagster instance and a real (sqlite) MLflow store."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from ml_platform.ml.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
from ml_platform_tests.pipeline.helpers import (
    check_outcomes,
    defs_for_entry,
    materialized,
    model_versions,
    registry_client,
    run_training,
)

pytestmark = pytest.mark.slow

ALL_CHECKS = {
    "batch_passes_expectation_suite",
    "evaluation_set_covers_every_class",
    "every_landed_file_accepted",
    "meets_metric_thresholds",
    "no_regression_against_champion",
    "serving_smoke_test",
}


def test_fresh_home_trains_a_gated_challenger_with_full_lineage(platform_home: Path) -> None:
    with dg.instance_for_test() as instance:
        result = run_training(instance)
        assert result.success
        assert check_outcomes(result) == dict.fromkeys(ALL_CHECKS, True)
        assert materialized(result) == {
            "raw_batch",
            "evaluation_set",
            "training_dataset",
            "candidate_model",
            "reference_snapshot",
            "landing_report",
        }

    # the bundled iris file was landed, validated and accepted
    accepted = list((platform_home / "data/iris/accepted").iterdir())
    assert [p.name for p in accepted] and accepted[0].name.startswith("iris@")
    assert not any((platform_home / "data/iris/incoming").iterdir())

    client = registry_client()
    version = client.get_model_version_by_alias("iris-random-forest", CHALLENGER_ALIAS)
    assert str(version.version) == "1"
    tags = version.tags
    for key in ("data_version", "code_version", "git_commit", "dagster_run_id"):
        assert tags.get(key), key
    assert tags["dagster_run_id"] == result.run_id
    assert tags["validation_status"] == "passed"
    assert tags["onnx"] == "verified"
    assert tags["gate.metric_thresholds"] == tags["gate.serving_smoke_test"] == "passed"

    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.metrics["accuracy"] >= 0.9
    for metric in ("macro_f1", "precision_setosa", "recall_virginica"):
        assert metric in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.json" in artifacts

    # the reference snapshot is the train split with labels and predictions, tied to the version
    snapshot_uri = tags["reference_snapshot_uri"]
    assert snapshot_uri.startswith(str(platform_home)) and "/iris-random-forest/v1/" in snapshot_uri
    snapshot = pd.read_parquet(snapshot_uri)
    assert {"target", "prediction", "proba_setosa", "model_version"} <= set(snapshot.columns)
    assert len(snapshot) == int(run.data.params["train_rows"])  # 75% of the rows outside the evaluation set
    assert (snapshot["model_version"] == "1").all()

    # the evaluation set (30 = 20% of 150 rows) never trains, and every gate judged on it
    evaluation_version = tags["evaluation_set_version"]
    evaluation_files = list((platform_home / "data/iris/evaluation/sets").glob("*.parquet"))
    assert [p.name for p in evaluation_files] == [f"{evaluation_version[:16]}.parquet"]
    evaluation = pd.read_parquet(evaluation_files[0])
    assert len(evaluation) == 30
    merged = snapshot.merge(evaluation, on=[*evaluation.columns])
    assert merged.empty, "a row of the evaluation set was trained on"
    assert int(run.data.params["evaluation_rows"]) == 30
    for check in ("meets_metric_thresholds", "no_regression_against_champion"):
        evaluation_event = next(e for e in result.get_asset_check_evaluations() if e.check_name == check)
        assert evaluation_event.metadata["evaluation_set_version"].value == evaluation_version[:16]
        assert "| recall setosa |" in evaluation_event.metadata["candidate_vs_champion"].value
    # the version's training batches: the bundled file, readable by the plain reader
    from ml_platform.ml.registry import training_batches

    digest = accepted[0].name.split("@")[1].removesuffix(".csv")
    assert training_batches(client, "iris-random-forest", "1") == [f"iris.csv@{digest}"]
    assert tags["training_batches_count"] == "1"


def test_reference_snapshot_respects_uri_and_row_cap(platform_home: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REFERENCE_DATASET_URI", str(tmp_path / "refs"))
    monkeypatch.setenv("REFERENCE_DATASET_MAX_ROWS", "40")
    with dg.instance_for_test() as instance:
        assert run_training(instance).success
    snapshot = pd.read_parquet(tmp_path / "refs/iris-random-forest/v1/reference.parquet")
    assert len(snapshot) == 40


def test_failed_accuracy_gate_rejects_the_version_and_leaves_production_untouched(
    platform_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dg.instance_for_test() as instance:
        assert run_training(instance).success
        client = registry_client()
        client.set_registered_model_alias("iris-random-forest", CHAMPION_ALIAS, "1")

        monkeypatch.setenv("MODEL_MIN_ACCURACY", "1.01")
        result = run_training(instance)
        assert not result.success
        outcomes = check_outcomes(result)
        assert outcomes["meets_metric_thresholds"] is False
        assert "reference_snapshot" not in materialized(result)

    versions = model_versions("iris-random-forest")
    assert [str(v.version) for v in versions] == ["1", "2"]
    rejected = client.get_model_version("iris-random-forest", "2")
    assert rejected.tags["validation_status"] == "failed"
    assert rejected.tags["rejected_by"] == "metric_thresholds"
    assert "1.0100" in rejected.tags["rejection_reason"]
    assert "reference_snapshot_uri" not in rejected.tags
    # production untouched: champion stays on v1; a rejected candidate is not a challenger
    assert str(client.get_model_version_by_alias("iris-random-forest", CHAMPION_ALIAS).version) == "1"
    assert CHALLENGER_ALIAS not in client.get_registered_model("iris-random-forest").aliases


def test_regression_against_champion_blocks_a_weaker_candidate(platform_home: Path, tmp_path: Path) -> None:
    import dataclasses

    import yaml

    from ml_platform.catalog import get_model
    from ml_platform.spec import load_spec_file

    iris = get_model("iris")
    with dg.instance_for_test() as instance:
        assert run_training(instance).success
        client = registry_client()
        client.set_registered_model_alias("iris-random-forest", CHAMPION_ALIAS, "1")

        # Same dataset and model name, but a trivial estimator and no absolute thresholds:
        # only the comparison with the champion can stop it.
        raw = yaml.safe_load((iris.source.parent / "spec.yaml").read_text())
        raw["model"].update(estimator="sklearn.dummy.DummyClassifier", params={"strategy": "most_frequent"})
        raw["thresholds"] = {
            "min_accuracy": 0.0,
            "regression_tolerance": 0.02,
            "min_class_recall": None,
            "min_predicted_classes": 1,
        }
        weak_spec = tmp_path / "iris_weak.yaml"
        weak_spec.write_text(yaml.safe_dump(raw))
        weak = dataclasses.replace(iris, spec=load_spec_file(weak_spec))
        result = run_training(instance, defs=defs_for_entry(weak))

    outcomes = check_outcomes(result)
    assert outcomes["meets_metric_thresholds"] is True
    assert outcomes["no_regression_against_champion"] is False
    assert not result.success
    evaluation = next(
        e for e in result.get_asset_check_evaluations() if e.check_name == "no_regression_against_champion"
    )
    assert evaluation.metadata["champion_accuracy"].value > evaluation.metadata["candidate_accuracy"].value + 0.3
    assert client.get_model_version("iris-random-forest", "2").tags["rejected_by"] == "no_regression"
    assert str(client.get_model_version_by_alias("iris-random-forest", CHAMPION_ALIAS).version) == "1"


def test_second_model_trains_end_to_end_by_its_own_job(platform_home: Path) -> None:
    with dg.instance_for_test() as instance:
        result = run_training(instance, model="wine")
    assert result.success, check_outcomes(result)
    assert materialized(result, "wine") == {
        "raw_batch",
        "evaluation_set",
        "training_dataset",
        "candidate_model",
        "reference_snapshot",
        "landing_report",
    }
    assert result.dagster_run.tags["ml_platform/model"] == "wine"
    assert not (platform_home / "data/iris").exists()
    version = registry_client().get_model_version_by_alias("wine-gradient-boosting", CHALLENGER_ALIAS)
    assert version.tags["dataset"] == "wine"
    assert version.tags["validation_status"] == "passed"
    assert any((platform_home / "data/wine/accepted").iterdir())
    snapshot = pd.read_parquet(version.tags["reference_snapshot_uri"])
    assert {"alcohol", "proline", "target", "prediction"} <= set(snapshot.columns)

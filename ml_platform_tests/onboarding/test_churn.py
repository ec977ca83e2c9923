"""The churn model (categorical features) end to end: data, batch gate, training job, registry, serving path."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from ml_platform import settings
from ml_platform.catalog import get_model
from ml_platform.spec import BUNDLED_DATA_DIR
from ml_platform.synthetic import churn_csv

CHURN_CSV = BUNDLED_DATA_DIR / "churn.csv"


def test_the_bundled_churn_csv_is_the_seeded_generator_output() -> None:
    assert CHURN_CSV.read_text() == churn_csv()
    lines = CHURN_CSV.read_text().splitlines()
    assert lines[0] == "tenure_months,monthly_charges,contract,payment_method,support_calls,churned"
    assert len(lines) == 601
    churned = [line.rsplit(",", 1)[1] for line in lines[1:]]
    assert 0.3 < churned.count("yes") / len(churned) < 0.6  # both classes well represented


def test_the_churn_spec_has_categorical_features() -> None:
    spec = get_model("churn").spec
    assert spec.categorical_features == ["contract", "payment_method"]
    assert spec.numeric_features == ["tenure_months", "monthly_charges", "support_calls"]
    assert spec.target.classes == ("no", "yes")
    assert spec.feature("contract").categories == ("month-to-month", "one-year", "two-year")
    assert spec.bootstrap_path() == CHURN_CSV


def test_the_batch_gate_checks_categories_and_types(tmp_path: Path) -> None:
    from ml_platform.validation.expectations import validate_batch
    from ml_platform.validation.reader import read_batch

    spec = get_model("churn").spec
    assert validate_batch(read_batch(CHURN_CSV, spec), spec).success
    lines = CHURN_CSV.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([*lines[:50], "12,70.00,three-year,mailed-check,1,no"]) + "\n")
    report = validate_batch(read_batch(bad, spec), spec)
    assert not report.success
    assert any("contract" in problem and "three-year" in problem for problem in report.problems), report.problems
    bad.write_text("\n".join([*lines[:50], "12,70.00,one-year,mailed-check,1,maybe"]) + "\n")
    report = validate_batch(read_batch(bad, spec), spec)
    assert not report.success and any("churned" in problem for problem in report.problems), report.problems


def test_a_random_forest_learns_churn_through_the_one_hot_pipeline() -> None:
    import pandas as pd

    from ml_platform.ml.training import evaluate_model, fit_model, split_dataset

    spec = get_model("churn").spec
    split = split_dataset(pd.read_csv(CHURN_CSV), spec)
    model = fit_model(split, spec)
    assert [name for name, _ in model.steps] == ["encode", "estimator"]
    evaluation = evaluate_model(model, split, spec)
    assert evaluation.accuracy >= 0.75, evaluation
    assert evaluation.class_labels == ["no", "yes"]


@pytest.mark.slow
def test_churn_training_job_trains_gates_registers_and_serves(platform_home: Path, tmp_path: Path) -> None:
    """churn_training_job on a real Dagster instance and sqlite MLflow store; then the serving load path."""
    from ml_platform.ml.registry import CHALLENGER_ALIAS
    from ml_platform_tests.pipeline.helpers import check_outcomes, materialized, registry_client, run_training
    from serving.registry import RegistryClient, load_bundle_spec, load_input_example, parse_model_uri
    from serving.runtime import load_runtime
    from serving.schema import RequestError, RequestSchema

    with dg.instance_for_test() as instance:
        result = run_training(instance, model="churn")
        assert result.success, [e.message for e in result.get_step_failure_events()]
        outcomes = check_outcomes(result)
        assert outcomes and all(outcomes.values()), outcomes
        assert {"raw_batch", "training_dataset", "candidate_model", "reference_snapshot"} <= materialized(
            result, "churn"
        )
    assert list((platform_home / "data/churn/accepted").iterdir())

    client = registry_client()
    version = client.get_model_version_by_alias("churn-random-forest", CHALLENGER_ALIAS)
    tags = version.tags
    assert tags["validation_status"] == "passed" and tags["dataset"] == "churn"
    assert tags["onnx"].startswith("unavailable: categorical features"), tags["onnx"]  # served by sklearn
    assert client.get_run(version.run_id).data.metrics["accuracy"] >= 0.75
    assert not client.search_model_versions("name='iris-random-forest'")  # nothing of another model

    # the serving path: fetch through the verified download, schema from the registered spec, sklearn runtime
    registry = RegistryClient(settings.mlflow_tracking_uri(), tmp_path / "cache")
    bundle = registry.fetch(parse_model_uri("models:/churn-random-forest@challenger"))
    spec = load_bundle_spec(bundle)
    assert spec.categorical_features == ["contract", "payment_method"]
    runtime = load_runtime(bundle, spec)
    assert runtime.kind == "sklearn"
    schema = RequestSchema(spec, max_rows=10, example=load_input_example(bundle))
    assert "examples" in schema.predict_json_schema()  # the registered input example validates
    body = {
        "records": [
            {
                "tenure_months": 1,
                "monthly_charges": 110.0,
                "contract": "month-to-month",
                "payment_method": "electronic-check",
                "support_calls": 6,
            },
            {
                "tenure_months": 70,
                "monthly_charges": 20.0,
                "contract": "two-year",
                "payment_method": "credit-card",
                "support_calls": 0,
            },
        ]
    }
    prediction = runtime.predict(schema.parse_predict(json.dumps(body).encode()))
    assert [spec.target.classes[i] for i in prediction.class_index] == ["yes", "no"]
    body["records"][0]["contract"] = "three-year"
    with pytest.raises(RequestError) as refused:
        schema.parse_predict(json.dumps(body).encode())
    assert refused.value.status == 422 and "contract" in json.dumps(refused.value.detail)

"""The model gates: metric thresholds, no regression, and a serving smoke test.

All three are blocking with ERROR severity: if any fails, the reference
snapshot is not written, the version is tagged rejected, and
``dagster job execute`` exits non-zero. Production (``champion``) is never
touched here.
"""

from typing import Any

import dagster as dg

from ml_platform.assets.training import candidate_model
from ml_platform.resources.mlflow_resources import MlflowRegistry
from ml_platform.spec import load_spec


def _gate_result(
    registry: MlflowRegistry,
    candidate: dict[str, Any],
    gate: str,
    passed: bool,
    description: str,
    metadata: dict[str, Any],
) -> dg.AssetCheckResult:
    from ml_platform.ml.gates import record_gate

    record_gate(registry.client(), candidate["name"], candidate["version"], gate, passed, description)
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"model_version": dg.MetadataValue.int(int(candidate["version"])), **metadata},
    )


@dg.asset_check(
    asset=candidate_model,
    blocking=True,
    description=(
        "Held-out accuracy (and macro F1 where the spec sets one) meets the spec's thresholds. "
        "MODEL_MIN_ACCURACY overrides the accuracy threshold."
    ),
)
def meets_metric_thresholds(candidate_model: dict[str, Any], mlflow_registry: MlflowRegistry) -> dg.AssetCheckResult:
    """Compare observed metrics with the spec's thresholds."""
    spec = load_spec()
    metrics = candidate_model["metrics"]
    accuracy, macro_f1 = float(metrics["accuracy"]), float(metrics["macro_f1"])
    failures = []
    if accuracy < spec.min_accuracy:
        failures.append(f"accuracy {accuracy:.4f} < {spec.min_accuracy:.4f}")
    min_f1 = spec.thresholds.min_macro_f1
    if min_f1 is not None and macro_f1 < min_f1:
        failures.append(f"macro F1 {macro_f1:.4f} < {min_f1:.4f}")
    description = (
        "; ".join(failures)
        if failures
        else f"accuracy {accuracy:.4f} >= {spec.min_accuracy:.4f}"
        + (f", macro F1 {macro_f1:.4f} >= {min_f1:.4f}" if min_f1 is not None else "")
    )
    table = "\n".join(
        [
            "| metric | observed | threshold | result |",
            "|---|---|---|---|",
            f"| accuracy | {accuracy:.4f} | >= {spec.min_accuracy:.4f} | "
            f"{'pass' if accuracy >= spec.min_accuracy else 'FAIL'} |",
            f"| macro_f1 | {macro_f1:.4f} | {f'>= {min_f1:.4f}' if min_f1 is not None else 'n/a'} | "
            f"{'pass' if min_f1 is None or macro_f1 >= min_f1 else 'FAIL'} |",
        ]
    )
    return _gate_result(
        mlflow_registry,
        candidate_model,
        "metric_thresholds",
        not failures,
        description,
        {
            "accuracy": dg.MetadataValue.float(accuracy),
            "min_accuracy": dg.MetadataValue.float(spec.min_accuracy),
            "macro_f1": dg.MetadataValue.float(macro_f1),
            "min_macro_f1": dg.MetadataValue.float(min_f1) if min_f1 is not None else "not set",
            "thresholds": dg.MetadataValue.md(table),
        },
    )


def _evaluate_champion(client: Any, champion: Any, candidate: dict[str, Any], spec: Any) -> tuple[float | None, str]:
    """Accuracy of the champion on the candidate's held-out split, or None with the reason.

    The champion loads only through the safe path (gates passed, hashes match, skops with the fixed
    type allowlist): a champion alias pointing at a pickle or a tampered file is refused, never run.
    """
    import pandas as pd

    from ml_platform.ml.safe_load import ModelRefused, load_verified_version
    from ml_platform.ml.training import evaluate_model, split_dataset

    tags = champion.tags or {}
    if tags.get("dataset") not in (None, spec.name):
        return None, f"champion was trained on dataset {tags.get('dataset')!r}"
    try:
        model = load_verified_version(client, champion.name, str(champion.version), require_gates=True).model
    except ModelRefused as exc:
        return None, f"champion {exc}"
    try:
        split = split_dataset(pd.read_parquet(candidate["dataset_path"]), spec)
        return evaluate_model(model, split, spec).accuracy, "evaluated on the candidate's held-out split"
    except Exception as exc:  # a champion that cannot be scored cannot be compared on fresh data
        return None, f"could not evaluate the champion on the candidate's split ({type(exc).__name__}: {exc})"


@dg.asset_check(
    asset=candidate_model,
    blocking=True,
    description=(
        "The candidate is not worse than the current `champion` by more than the spec's tolerance, both "
        "scored on the candidate's held-out split. Passes when there is no champion yet."
    ),
)
def no_regression_against_champion(
    candidate_model: dict[str, Any], mlflow_registry: MlflowRegistry
) -> dg.AssetCheckResult:
    """Score the champion on the same held-out rows and compare accuracies."""
    from ml_platform.ml.registry import CHAMPION_ALIAS, alias_version, version_metric

    spec = load_spec()
    client = mlflow_registry.client()
    tolerance = spec.thresholds.regression_tolerance
    candidate_accuracy = float(candidate_model["metrics"]["accuracy"])
    champion = alias_version(client, candidate_model["name"], CHAMPION_ALIAS)
    if champion is None:
        return _gate_result(
            mlflow_registry,
            candidate_model,
            "no_regression",
            True,
            "no champion yet: nothing to regress against",
            {"candidate_accuracy": dg.MetadataValue.float(candidate_accuracy), "champion_version": "none"},
        )
    champion_accuracy, how = _evaluate_champion(client, champion, candidate_model, spec)
    if champion_accuracy is None:
        recorded = version_metric(client, champion, "accuracy")
        champion_accuracy, how = (
            (recorded, f"{how}; used its recorded accuracy") if recorded is not None else (None, how)
        )
    if champion_accuracy is None:
        return _gate_result(
            mlflow_registry,
            candidate_model,
            "no_regression",
            True,
            f"champion v{champion.version} has no comparable accuracy ({how}); not a regression",
            {"candidate_accuracy": dg.MetadataValue.float(candidate_accuracy), "champion_version": champion.version},
        )
    floor = champion_accuracy - tolerance
    passed = candidate_accuracy >= floor
    description = (
        f"candidate accuracy {candidate_accuracy:.4f} {'>=' if passed else '<'} champion v{champion.version} "
        f"{champion_accuracy:.4f} - tolerance {tolerance:.4f} ({how})"
    )
    return _gate_result(
        mlflow_registry,
        candidate_model,
        "no_regression",
        passed,
        description,
        {
            "candidate_accuracy": dg.MetadataValue.float(candidate_accuracy),
            "champion_accuracy": dg.MetadataValue.float(champion_accuracy),
            "champion_version": dg.MetadataValue.int(int(champion.version)),
            "tolerance": dg.MetadataValue.float(tolerance),
            "minimum_allowed_accuracy": dg.MetadataValue.float(floor),
        },
    )


@dg.asset_check(
    asset=candidate_model,
    blocking=True,
    description=(
        "Serving smoke test: the registered version loads from the registry in a fresh Python process "
        "and predicts its stored input example; where an ONNX graph is stored it must agree."
    ),
)
def serving_smoke_test(candidate_model: dict[str, Any], mlflow_registry: MlflowRegistry) -> dg.AssetCheckResult:
    """Load the version in a clean interpreter, exactly as the serving process will."""
    from ml_platform.ml.gates import serving_smoke_test as run_smoke_test

    result = run_smoke_test(candidate_model["model_uri"], mlflow_registry.resolved_uri())
    metadata: dict[str, Any] = {
        "model_uri": candidate_model["model_uri"],
        "predictions": dg.MetadataValue.json({"predictions": result.predictions}),
        "onnx_agrees": str(result.onnx_agrees),
    }
    if result.load_seconds is not None:
        metadata["load_seconds"] = dg.MetadataValue.float(result.load_seconds)
    return _gate_result(mlflow_registry, candidate_model, "serving_smoke_test", result.passed, result.detail, metadata)

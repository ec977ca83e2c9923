"""Training of one model: ``<model>/candidate_model`` and its gates (metric thresholds, no regression
against the champion, serving smoke test).

The gates are blocking with ERROR severity: if any fails, the reference snapshot is not written,
the version is tagged rejected, and ``dagster job execute`` exits non-zero. Production
(``champion``) is never touched here.
"""

from typing import Any

import dagster as dg

from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import MlflowRegistryResource


def _gate_result(
    registry: MlflowRegistryResource,
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


def build_training_defs(model: ModelContext) -> dg.Definitions:
    """``<model>/candidate_model`` (MLflow run + registered version, alias challenger) and the model gates."""
    spec = model.spec

    @dg.asset(
        **model.asset_kwargs("candidate_model"),
        ins={"training_dataset": dg.AssetIn(key=model.key("training_dataset"))},
        kinds={"sklearn", "mlflow"},
        io_manager_key="json_io_manager",
        required_resource_keys={"mlflow"},
        description=(
            f"Trains the {model.name} spec's estimator on a seeded, stratified split; logs params, metrics "
            "(accuracy, macro F1, per-class precision/recall) and the confusion matrix to one MLflow run per "
            f"Dagster run; registers a version of `{model.registered_name}` (signature, skops, explicit pip "
            "requirements, verified ONNX where possible) tagged with data and code versions, and points the "
            "`challenger` alias at it."
        ),
    )
    def candidate_model(
        context: dg.AssetExecutionContext, training_dataset: dict[str, Any]
    ) -> dg.Output[dict[str, Any]]:
        """Fit, evaluate, log and register a candidate model version."""
        import pandas as pd

        from ml_platform.ml.registry import code_version, git_commit, log_and_register_model
        from ml_platform.ml.training import confusion_matrix_markdown, evaluate_model, fit_model, split_dataset

        frame = pd.read_parquet(training_dataset["path"])
        split = split_dataset(frame, spec)
        estimator = fit_model(split, spec)
        evaluation = evaluate_model(estimator, split, spec)
        metrics = evaluation.flat_metrics()

        mlflow = context.resources.mlflow
        run_id = mlflow.active_run().info.run_id
        try:
            mlflow.set_tags(
                {
                    "dataset": spec.name,
                    "ml_platform/model": model.name,
                    "data_version": training_dataset["data_version"],
                    "code_version": code_version(),
                    "git_commit": git_commit(),
                }
            )
            mlflow.log_params(
                {
                    "estimator": spec.model.estimator,
                    "test_size": spec.model.test_size,
                    "split_random_state": spec.model.random_state,
                    "train_rows": len(split.y_train),
                    "test_rows": len(split.y_test),
                    **{f"model__{k}": v for k, v in spec.model.params.items()},
                }
            )
            mlflow.log_metrics(metrics)
            mlflow.log_dict(
                {"labels": evaluation.class_labels, "matrix": evaluation.confusion_matrix},
                "evaluation/confusion_matrix.json",
            )
            mlflow.log_text(confusion_matrix_markdown(evaluation), "evaluation/confusion_matrix.md")
            registered, onnx_export = log_and_register_model(
                estimator,
                spec,
                split.x_train,
                run_id=run_id,
                data_version=training_dataset["data_version"],
                metrics=metrics,
                extra_tags={"dagster_run_id": context.run_id, "ml_platform/model": model.name},
            )
        except Exception:
            mlflow.end_run(status="FAILED")
            raise
        # The MLflow run covers training and registration; gates annotate the version afterwards.
        mlflow.end_run()

        context.log.info(f"registered {registered.name} version {registered.version} (challenger)")
        value = registered.to_dict() | {"dataset_path": training_dataset["path"], "dataset": spec.name}
        return dg.Output(
            value,
            metadata={
                "model_name": registered.name,
                "model_version": dg.MetadataValue.int(int(registered.version)),
                "model_uri": registered.model_uri,
                "mlflow_run_id": run_id,
                "mlflow_tracking_uri": registered.tracking_uri,
                "accuracy": dg.MetadataValue.float(evaluation.accuracy),
                "macro_f1": dg.MetadataValue.float(evaluation.macro_f1),
                "min_accuracy": dg.MetadataValue.float(spec.min_accuracy),
                "train_rows": len(split.y_train),
                "test_rows": len(split.y_test),
                "data_version": training_dataset["data_version"][:16],
                "onnx": "verified identical on training data" if onnx_export.verified else onnx_export.reason,
                "confusion_matrix": dg.MetadataValue.md(confusion_matrix_markdown(evaluation)),
            },
        )

    @dg.asset_check(
        asset=candidate_model,
        blocking=True,
        description=(
            "Held-out accuracy (and macro F1 where the spec sets one) meets the spec's thresholds. "
            "MODEL_MIN_ACCURACY overrides the accuracy threshold."
        ),
    )
    def meets_metric_thresholds(
        candidate_model: dict[str, Any], mlflow_registry: MlflowRegistryResource
    ) -> dg.AssetCheckResult:
        """Compare observed metrics with the spec's thresholds."""
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

    @dg.asset_check(
        asset=candidate_model,
        blocking=True,
        description=(
            "The candidate is not worse than the current `champion` by more than the spec's tolerance, both "
            "scored on the candidate's held-out split. Passes when there is no champion yet."
        ),
    )
    def no_regression_against_champion(
        candidate_model: dict[str, Any], mlflow_registry: MlflowRegistryResource
    ) -> dg.AssetCheckResult:
        """Score the champion on the same held-out rows and compare accuracies."""
        from ml_platform.ml.registry import CHAMPION_ALIAS, alias_version, version_metric

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
                {
                    "candidate_accuracy": dg.MetadataValue.float(candidate_accuracy),
                    "champion_version": champion.version,
                },
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
    def serving_smoke_test(
        candidate_model: dict[str, Any], mlflow_registry: MlflowRegistryResource
    ) -> dg.AssetCheckResult:
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
        return _gate_result(
            mlflow_registry, candidate_model, "serving_smoke_test", result.passed, result.detail, metadata
        )

    return dg.Definitions(
        assets=[candidate_model],
        asset_checks=[meets_metric_thresholds, no_regression_against_champion, serving_smoke_test],
    )

"""Training of one model: ``<model>/candidate_model`` and its gates (metric thresholds, no regression
against the champion, serving smoke test).

Every model gate judges on the model's evaluation set (``<model>/evaluation_set``), never on a split of
the candidate's own training data: the candidate and the champion are scored on the same rows, and the
check metadata shows both, per class, with the evaluation-set version.

The gates are blocking with ERROR severity: if any fails, the reference snapshot is not written,
the version is tagged rejected, and ``dagster job execute`` exits non-zero. Production
(``champion``) is never touched here.

A run whose (data_version, code_version) equals that of a version already rejected (by a gate or by
a canary) does not train again: ``candidate_model`` is not materialised, the run is tagged
``ml_platform/skipped=rejected_twin`` with the reason, and the run succeeds.
"""

from typing import Any

import dagster as dg

from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import MlflowRegistryResource

SKIPPED_TAG = "ml_platform/skipped"
SKIP_REASON_TAG = "ml_platform/skip_reason"


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


def _evaluate_champion(client: Any, name: str, evaluation_frame: Any, spec: Any) -> dict[str, Any]:
    """The champion scored on the evaluation set: ``{"version", "evaluation" (or None), "note"}``.

    The champion loads only through the safe path (gates passed, hashes match, skops with the fixed
    type allowlist): a champion alias pointing at a pickle or a tampered file is refused, never run.
    """
    from dataclasses import asdict

    from ml_platform.ml.registry import CHAMPION_ALIAS, alias_version
    from ml_platform.ml.safe_load import ModelRefused, load_verified_version
    from ml_platform.ml.training import evaluate_on_frame

    champion = alias_version(client, name, CHAMPION_ALIAS)
    if champion is None:
        return {"version": None, "evaluation": None, "note": "no champion yet"}
    version = str(champion.version)
    tags = champion.tags or {}
    if tags.get("dataset") not in (None, spec.name):
        return {"version": version, "evaluation": None, "note": f"trained on dataset {tags.get('dataset')!r}"}
    try:
        model = load_verified_version(client, champion.name, version, require_gates=True).model
    except ModelRefused as exc:
        return {"version": version, "evaluation": None, "note": f"champion {exc}"}
    try:
        evaluation = asdict(evaluate_on_frame(model, evaluation_frame, spec))
    except Exception as exc:  # a champion that cannot be scored cannot be compared
        note = f"could not score the champion on the evaluation set ({type(exc).__name__}: {exc})"
        return {"version": version, "evaluation": None, "note": note}
    return {"version": version, "evaluation": evaluation, "note": "scored on the evaluation set"}


def _judged_metadata(candidate: dict[str, Any], spec: Any) -> dict[str, Any]:
    """Metadata every model gate shows: evaluation-set version, both models' scores per class."""
    from ml_platform.ml.gates import comparison_table

    judged = candidate["judged_on"]
    champion = judged["champion"]
    metadata: dict[str, Any] = {
        "evaluation_set_version": judged["evaluation_set_version"][:16],
        "evaluation_rows": judged["rows"],
        "candidate_accuracy": dg.MetadataValue.float(judged["candidate"]["accuracy"]),
        "champion_version": champion["version"] or "none",
        "champion_note": champion["note"],
        "candidate_vs_champion": dg.MetadataValue.md(
            comparison_table(judged["candidate"], champion["evaluation"], spec)
        ),
    }
    if champion["evaluation"] is not None:
        metadata["champion_accuracy"] = dg.MetadataValue.float(champion["evaluation"]["accuracy"])
    return metadata


def build_training_defs(model: ModelContext) -> dg.Definitions:
    """``<model>/candidate_model`` (MLflow run + registered version, alias challenger) and the model gates."""
    spec = model.spec

    @dg.asset(
        **model.asset_kwargs("candidate_model"),
        ins={
            "training_dataset": dg.AssetIn(key=model.key("training_dataset")),
            "evaluation_set": dg.AssetIn(key=model.key("evaluation_set")),
        },
        kinds={"sklearn", "mlflow"},
        io_manager_key="json_io_manager",
        required_resource_keys={"mlflow", "mlflow_registry"},
        output_required=False,
        description=(
            f"Trains the {model.name} spec's estimator (every core unless the spec sets `n_jobs`) on the windowed "
            "training dataset; scores it and the current champion on the evaluation set; logs params, metrics "
            "(evaluation-set accuracy, macro F1, per-class precision/recall; `split_*` on a held-out split of the "
            "training rows), the confusion matrix and `training_batches.json` to one MLflow run per Dagster run; "
            f"registers a version of `{model.registered_name}` tagged with data, code and evaluation-set versions, "
            "and points the `challenger` alias at it. Not materialised (run tagged `ml_platform/skipped`) when a "
            "version with the same data and code versions was already rejected."
        ),
    )
    def candidate_model(
        context: dg.AssetExecutionContext,
        training_dataset: dict[str, Any],
        evaluation_set: dict[str, Any],
    ) -> Any:
        """Fit, evaluate on the evaluation set, log and register a candidate model version (or skip a known reject)."""
        import json
        from dataclasses import asdict

        import pandas as pd

        from ml_platform.ml.registry import (
            CHAMPION_ALIAS,
            EVALUATION_SET_VERSION_TAG,
            JUDGED_AGAINST_TAG,
            TRAINING_BATCHES_ARTIFACT,
            TRAINING_BATCHES_COUNT_TAG,
            TRAINING_WINDOW_TAG,
            alias_version,
            code_version,
            git_commit,
            log_and_register_model,
            rejected_twin,
        )
        from ml_platform.ml.training import (
            confusion_matrix_markdown,
            evaluate_model,
            evaluate_on_frame,
            fit_model,
            split_dataset,
        )

        data_version = training_dataset["data_version"]
        code = code_version(spec)
        client = context.resources.mlflow_registry.client()
        current = alias_version(client, model.registered_name, CHAMPION_ALIAS)
        champion_now = None if current is None else str(current.version)
        twin = rejected_twin(client, model.registered_name, data_version, code, champion_now)
        if twin is not None:
            found, why = twin
            reason = (
                f"not retrained: version {found.version} of {model.registered_name} was trained on the same data "
                f"version {data_version[:16]} with the same code version {code} and was rejected ({why})"
            )[:1000]
            context.instance.add_run_tags(
                context.run_id,
                {
                    SKIPPED_TAG: "rejected_twin",
                    SKIP_REASON_TAG: reason,
                    "ml_platform/rejected_version": str(found.version),
                },
            )
            context.log.warning(reason + ". Retract the bad batches, land new data or change the code or spec.")
            return

        frame = pd.read_parquet(training_dataset["path"])
        split = split_dataset(frame, spec)
        estimator = fit_model(split, spec)
        split_evaluation = evaluate_model(estimator, split, spec)
        evaluation_frame = pd.read_parquet(evaluation_set["path"])
        evaluation = evaluate_on_frame(estimator, evaluation_frame, spec)
        champion = _evaluate_champion(client, model.registered_name, evaluation_frame, spec)
        metrics = evaluation.flat_metrics() | {f"split_{k}": v for k, v in split_evaluation.flat_metrics().items()}
        batches = training_dataset["batches"]
        window = json.dumps(training_dataset.get("window", {}), sort_keys=True)

        mlflow = context.resources.mlflow
        run_id = mlflow.active_run().info.run_id
        evaluation_tags = {
            EVALUATION_SET_VERSION_TAG: evaluation_set["version"],
            TRAINING_BATCHES_COUNT_TAG: str(len(batches)),
            TRAINING_WINDOW_TAG: window[:250],
            JUDGED_AGAINST_TAG: champion["version"] or "none",
        }
        try:
            mlflow.set_tags(
                {
                    "dataset": spec.name,
                    "ml_platform/model": model.name,
                    "data_version": data_version,
                    "code_version": code,
                    "git_commit": git_commit(),
                    **evaluation_tags,
                }
            )
            mlflow.log_params(
                {
                    "estimator": spec.model.estimator,
                    "test_size": spec.model.test_size,
                    "split_random_state": spec.model.random_state,
                    "train_rows": len(split.y_train),
                    "test_rows": len(split.y_test),
                    "evaluation_rows": evaluation.test_rows,
                    "training_n_jobs": spec.training.n_jobs,
                    **{f"model__{k}": v for k, v in spec.model.params.items()},
                }
            )
            mlflow.log_metrics(metrics)
            mlflow.log_dict(
                {"labels": evaluation.class_labels, "matrix": evaluation.confusion_matrix},
                "evaluation/confusion_matrix.json",
            )
            mlflow.log_text(confusion_matrix_markdown(evaluation), "evaluation/confusion_matrix.md")
            mlflow.log_dict(batches, TRAINING_BATCHES_ARTIFACT)
            registered, onnx_export = log_and_register_model(
                estimator,
                spec,
                split.x_train,
                run_id=run_id,
                data_version=data_version,
                metrics=metrics,
                extra_tags={"dagster_run_id": context.run_id, "ml_platform/model": model.name, **evaluation_tags},
            )
        except Exception:
            mlflow.end_run(status="FAILED")
            raise
        # The MLflow run covers training and registration; gates annotate the version afterwards.
        mlflow.end_run()

        context.log.info(f"registered {registered.name} version {registered.version} (challenger)")
        judged_on = {
            "evaluation_set_version": evaluation_set["version"],
            "rows": evaluation.test_rows,
            "candidate": asdict(evaluation),
            "champion": champion,
        }
        value = registered.to_dict() | {
            "dataset_path": training_dataset["path"],
            "dataset": spec.name,
            "judged_on": judged_on,
        }
        yield dg.Output(
            value,
            metadata={
                "model_name": registered.name,
                "model_version": dg.MetadataValue.int(int(registered.version)),
                "model_uri": registered.model_uri,
                "mlflow_run_id": run_id,
                "mlflow_tracking_uri": registered.tracking_uri,
                "accuracy": dg.MetadataValue.float(evaluation.accuracy),
                "macro_f1": dg.MetadataValue.float(evaluation.macro_f1),
                "split_accuracy": dg.MetadataValue.float(split_evaluation.accuracy),
                "min_accuracy": dg.MetadataValue.float(spec.min_accuracy),
                "train_rows": len(split.y_train),
                "evaluation_rows": evaluation.test_rows,
                "evaluation_set_version": evaluation_set["version"][:16],
                "data_version": data_version[:16],
                "code_version": code,
                "training_batches": len(batches),
                "onnx": "verified identical on training data" if onnx_export.verified else onnx_export.reason,
                "confusion_matrix": dg.MetadataValue.md(confusion_matrix_markdown(evaluation)),
            },
        )

    @dg.asset_check(
        asset=candidate_model,
        blocking=True,
        description=(
            "On the evaluation set: accuracy (and macro F1 where the spec sets one) meets the spec's thresholds, "
            "every class present reaches the per-class recall floor (`thresholds.min_class_recall`), and the "
            "model predicts at least `thresholds.min_predicted_classes` distinct classes. MODEL_MIN_ACCURACY "
            "overrides the accuracy threshold. The champion's scores on the same rows are shown beside."
        ),
    )
    def meets_metric_thresholds(
        candidate_model: dict[str, Any], mlflow_registry: MlflowRegistryResource
    ) -> dg.AssetCheckResult:
        """Compare the candidate's evaluation-set metrics with the spec's thresholds."""
        from ml_platform.ml.gates import threshold_failures

        candidate = candidate_model["judged_on"]["candidate"]
        failures = threshold_failures(candidate, spec)
        min_f1 = spec.thresholds.min_macro_f1
        description = (
            "; ".join(failures)
            if failures
            else f"accuracy {candidate['accuracy']:.4f} >= {spec.min_accuracy:.4f}"
            + (f", macro F1 {candidate['macro_f1']:.4f} >= {min_f1:.4f}" if min_f1 is not None else "")
            + (", every class above the recall floor" if spec.thresholds.min_class_recall is not None else "")
        ) + f" (evaluation set {candidate_model['judged_on']['evaluation_set_version'][:16]})"
        return _gate_result(
            mlflow_registry,
            candidate_model,
            "metric_thresholds",
            not failures,
            description,
            {
                **_judged_metadata(candidate_model, spec),
                "accuracy": dg.MetadataValue.float(candidate["accuracy"]),
                "min_accuracy": dg.MetadataValue.float(spec.min_accuracy),
                "macro_f1": dg.MetadataValue.float(candidate["macro_f1"]),
                "min_macro_f1": dg.MetadataValue.float(min_f1) if min_f1 is not None else "not set",
                "predicted_classes": len(candidate.get("extra", {}).get("predicted_classes", [])),
                "min_predicted_classes": spec.thresholds.min_predicted_classes,
                "failures": len(failures),
            },
        )

    @dg.asset_check(
        asset=candidate_model,
        blocking=True,
        description=(
            "The candidate is not worse than the current `champion` by more than the spec's tolerance, both "
            "scored on the model's evaluation set (rows neither trained on). Passes when there is no champion yet."
        ),
    )
    def no_regression_against_champion(
        candidate_model: dict[str, Any], mlflow_registry: MlflowRegistryResource
    ) -> dg.AssetCheckResult:
        """Compare candidate and champion accuracies on the same evaluation rows."""
        from ml_platform.ml.registry import version_metric

        judged = candidate_model["judged_on"]
        tolerance = spec.thresholds.regression_tolerance
        candidate_accuracy = float(judged["candidate"]["accuracy"])
        champion = judged["champion"]
        metadata = _judged_metadata(candidate_model, spec)
        if champion["version"] is None:
            return _gate_result(
                mlflow_registry,
                candidate_model,
                "no_regression",
                True,
                "no champion yet: nothing to regress against",
                metadata,
            )
        how = champion["note"]
        champion_accuracy = champion["evaluation"]["accuracy"] if champion["evaluation"] else None
        if champion_accuracy is None:
            client = mlflow_registry.client()
            recorded = version_metric(
                client, client.get_model_version(candidate_model["name"], champion["version"]), "accuracy"
            )
            if recorded is not None:
                champion_accuracy, how = recorded, f"{how}; used its recorded accuracy"
        if champion_accuracy is None:
            return _gate_result(
                mlflow_registry,
                candidate_model,
                "no_regression",
                True,
                f"champion v{champion['version']} has no comparable accuracy ({how}); not a regression",
                metadata,
            )
        floor = champion_accuracy - tolerance
        passed = candidate_accuracy >= floor
        description = (
            f"candidate accuracy {candidate_accuracy:.4f} {'>=' if passed else '<'} champion v{champion['version']} "
            f"{champion_accuracy:.4f} - tolerance {tolerance:.4f} ({how}, version "
            f"{judged['evaluation_set_version'][:16]}, {judged['rows']} rows)"
        )
        return _gate_result(
            mlflow_registry,
            candidate_model,
            "no_regression",
            passed,
            description,
            {
                **metadata,
                "champion_accuracy": dg.MetadataValue.float(champion_accuracy),
                "champion_version": dg.MetadataValue.int(int(champion["version"])),
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
            "evaluation_set_version": candidate_model["judged_on"]["evaluation_set_version"][:16],
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

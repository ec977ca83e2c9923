"""The candidate model: trained from the spec, tracked and registered in MLflow."""

from typing import Any

import dagster as dg

from ml_platform.assets.ingestion import training_dataset
from ml_platform.spec import load_spec

TRAINING_GROUP = "training"


@dg.asset(
    ins={"training_dataset": dg.AssetIn(key=training_dataset.key)},
    group_name=TRAINING_GROUP,
    kinds={"sklearn", "mlflow"},
    io_manager_key="json_io_manager",
    required_resource_keys={"mlflow"},
    description=(
        "Trains the spec's estimator on a seeded, stratified split; logs params, metrics (accuracy, "
        "macro F1, per-class precision/recall) and the confusion matrix to one MLflow run per Dagster "
        "run; registers a version (signature, skops, explicit pip requirements, verified ONNX where "
        "possible) tagged with data and code versions, and points the `challenger` alias at it."
    ),
)
def candidate_model(context: dg.AssetExecutionContext, training_dataset: dict[str, Any]) -> dg.Output[dict[str, Any]]:
    """Fit, evaluate, log and register a candidate model version."""
    import pandas as pd

    from ml_platform.ml.registry import code_version, git_commit, log_and_register_model
    from ml_platform.ml.training import confusion_matrix_markdown, evaluate_model, fit_model, split_dataset

    spec = load_spec()
    frame = pd.read_parquet(training_dataset["path"])
    split = split_dataset(frame, spec)
    model = fit_model(split, spec)
    evaluation = evaluate_model(model, split, spec)
    metrics = evaluation.flat_metrics()

    mlflow = context.resources.mlflow
    run_id = mlflow.active_run().info.run_id
    try:
        mlflow.set_tags(
            {
                "dataset": spec.name,
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
            model,
            spec,
            split.x_train,
            run_id=run_id,
            data_version=training_dataset["data_version"],
            metrics=metrics,
            extra_tags={"dagster_run_id": context.run_id},
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

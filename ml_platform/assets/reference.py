"""The reference snapshot: what the model saw in training, tied to its version.

Written only after every model gate passed (the gates are blocking), so its
existence also marks the version ``validation_status=passed``, which is what
the deployment sensor waits for. Drift reports compare production windows
against the snapshot of the version that served them.
"""

import os
from typing import Any

import dagster as dg

from ml_platform import settings
from ml_platform.assets.training import TRAINING_GROUP, candidate_model
from ml_platform.resources.mlflow_resources import MlflowRegistry
from ml_platform.spec import DatasetSpec, load_spec

REFERENCE_FILENAME = "reference.parquet"


def reference_base_uri() -> str:
    """``REFERENCE_DATASET_URI`` (a folder URI: local path, file://, s3://, gs://...) or the platform home."""
    configured = os.environ.get("REFERENCE_DATASET_URI", "").strip()
    return configured or str(settings.platform_paths().snapshots_dir)


def reference_uri(model_name: str, version: str) -> str:
    """Where the snapshot of one model version lives."""
    return f"{reference_base_uri().rstrip('/')}/{model_name}/v{version}/{REFERENCE_FILENAME}"


def reference_max_rows(spec: DatasetSpec) -> int:
    configured = os.environ.get("REFERENCE_DATASET_MAX_ROWS", "").strip()
    return int(configured) if configured else spec.reference_max_rows


@dg.asset(
    ins={"candidate_model": dg.AssetIn(key=candidate_model.key)},
    group_name=TRAINING_GROUP,
    kinds={"parquet", "pandas"},
    io_manager_key="json_io_manager",
    description=(
        "The training split with labels, predictions and class probabilities of the gated model "
        "version, as Parquet at REFERENCE_DATASET_URI (default: the platform home), capped at "
        "REFERENCE_DATASET_MAX_ROWS rows. Marks the version validated."
    ),
)
def reference_snapshot(
    context: dg.AssetExecutionContext, candidate_model: dict[str, Any], mlflow_registry: MlflowRegistry
) -> dg.Output[dict[str, Any]]:
    """Write the snapshot and mark the model version as having passed every gate."""
    import pandas as pd
    from upath import UPath

    from ml_platform.ml.registry import mark_validated
    from ml_platform.ml.safe_load import load_verified_version
    from ml_platform.ml.training import class_label, split_dataset

    spec = load_spec()
    client = mlflow_registry.client()
    name, version = candidate_model["name"], candidate_model["version"]
    model = load_verified_version(client, name, str(version), require_gates=False).model  # gated next
    split = split_dataset(pd.read_parquet(candidate_model["dataset_path"]), spec)
    snapshot = split.x_train.copy()
    snapshot[spec.target.name] = split.y_train.to_numpy()
    snapshot["prediction"] = model.predict(split.x_train)
    if hasattr(model, "predict_proba"):
        probabilities = model.predict_proba(split.x_train)
        for index, cls in enumerate(model.classes_):
            snapshot[f"proba_{class_label(spec, cls)}"] = probabilities[:, index]
    cap = reference_max_rows(spec)
    total_rows = len(snapshot)
    if total_rows > cap:
        snapshot = snapshot.sample(n=cap, random_state=spec.model.random_state)
    snapshot["model_name"], snapshot["model_version"] = name, str(version)

    uri = reference_uri(name, version)
    target = UPath(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as handle:
        snapshot.to_parquet(handle, index=False)

    client.set_model_version_tag(name, version, "reference_snapshot_uri", uri)
    mark_validated(client, name, version)  # refuses unless every blocking gate recorded "passed"
    context.log.info(f"{name} v{version} passed every gate; reference snapshot at {uri}")
    training_accuracy = float((snapshot["prediction"] == snapshot[spec.target.name]).mean())
    return dg.Output(
        {"uri": uri, "model_name": name, "model_version": str(version), "rows": len(snapshot)},
        metadata={
            "uri": uri,
            "model_name": name,
            "model_version": dg.MetadataValue.int(int(version)),
            "dagster/row_count": len(snapshot),
            "train_rows_before_cap": total_rows,
            "max_rows": cap,
            "train_accuracy": dg.MetadataValue.float(training_accuracy),
            "validation_status": "passed",
        },
    )

"""``<model>/reference_snapshot``: what the model saw in training, tied to its version.

Written only after every model gate passed (the gates are blocking), so its existence also marks
the version ``validation_status=passed``, which is what the model-version sensor waits for. Drift
reports compare production windows against the snapshot of the version that served them.
"""

from typing import Any

import dagster as dg

from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import MlflowRegistryResource


def build_reference_defs(model: ModelContext) -> dg.Definitions:
    """``<model>/reference_snapshot`` (downstream of the gated ``<model>/candidate_model``)."""
    spec = model.spec

    @dg.asset(
        **model.asset_kwargs("reference_snapshot"),
        ins={"candidate_model": dg.AssetIn(key=model.key("candidate_model"))},
        kinds={"parquet", "pandas"},
        io_manager_key="json_io_manager",
        description=(
            "The training split with labels, predictions and class probabilities of the gated model "
            "version, as Parquet at REFERENCE_DATASET_URI (default: the platform home), capped at "
            "REFERENCE_DATASET_MAX_ROWS rows. Marks the version validated."
        ),
    )
    def reference_snapshot(
        context: dg.AssetExecutionContext, candidate_model: dict[str, Any], mlflow_registry: MlflowRegistryResource
    ) -> dg.Output[dict[str, Any]]:
        """Write the snapshot and mark the model version as having passed every gate."""
        import pandas as pd
        from upath import UPath

        from ml_platform.ml.reference import reference_max_rows, reference_uri
        from ml_platform.ml.registry import mark_validated
        from ml_platform.ml.safe_load import load_verified_version
        from ml_platform.ml.training import class_label, split_dataset

        client = mlflow_registry.client()
        name, version = candidate_model["name"], candidate_model["version"]
        loaded = load_verified_version(client, name, str(version), require_gates=False).model  # gated next
        split = split_dataset(pd.read_parquet(candidate_model["dataset_path"]), spec)
        snapshot = split.x_train.copy()
        snapshot[spec.target.name] = split.y_train.to_numpy()
        cap = reference_max_rows(spec)
        total_rows = len(snapshot)
        if total_rows > cap:  # sample first: predicting rows that are then dropped costs minutes at millions of rows
            snapshot = snapshot.sample(n=cap, random_state=spec.model.random_state)
        features = snapshot[spec.feature_names]
        snapshot["prediction"] = loaded.predict(features)
        if hasattr(loaded, "predict_proba"):
            probabilities = loaded.predict_proba(features)
            for index, cls in enumerate(loaded.classes_):
                snapshot[f"proba_{class_label(spec, cls)}"] = probabilities[:, index]
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

    return dg.Definitions(assets=[reference_snapshot])

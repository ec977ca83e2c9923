"""The jobs of one model: ``<model>_training_job``, ``<model>_canary_deployment_job``, ``<model>_drift_job``.

The default model also gets the unprefixed ``training_job``, ``canary_deployment_job`` and
``drift_job`` (same selection), so ``dagster job execute -m ml_platform -j training_job`` trains the
default model, as CI always did. Every run carries the tag ``ml_platform/model``. Asset checks of
the selected assets run with them.
"""

import dagster as dg

from ml_platform.defs.model_context import ModelContext


def build_jobs_defs(model: ModelContext) -> dg.Definitions:
    """The model's jobs (and the unprefixed aliases when it is the default model)."""
    training = dg.AssetSelection.assets(
        *(
            model.key(name)
            for name in (
                "raw_batch",
                "evaluation_set",
                "training_dataset",
                "candidate_model",
                "reference_snapshot",
                "landing_report",
            )
        )
    )
    deployment = dg.AssetSelection.assets(model.key("canary_deployment"))
    drift = dg.AssetSelection.assets(model.key("production_window"), model.key("drift_report"))
    specs = [
        (
            "training_job",
            training,
            None,
            "training",
            (
                f"Landed {model.name} data to a gated, registered model: validate the batch (GX gate), combine "
                "accepted batches, train and register a challenger, run the model gates, write the reference "
                "snapshot. `landing_report` fails the run when any landed file was quarantined (after the good "
                f"ones trained). Run with a `{model.landed_files.name}` partition for one file, or without one "
                f"to sweep data/{model.name}/incoming/."
            ),
        ),
        (
            "canary_deployment_job",
            deployment,
            model.model_versions,
            "deployment",
            (
                f"Deploy one validated `{model.registered_name}` version (partition = version): smoke test, "
                "canary traffic steps with live analysis, then promotion (alias `champion` moves) or rollback. "
                f"Requested by `{model.sensor_name('model_version_sensor')}`; run it by hand with a "
                f"`{model.model_versions.name}` partition."
            ),
        ),
        (
            "drift_job",
            drift,
            None,
            "drift",
            (
                f"One UTC day of {model.name} production: read its prediction log into `production_window`, "
                "compare it with the reference snapshot of the serving model version in `drift_report` "
                "(Evidently HTML, scores as metadata, gauges pushed to the Pushgateway), and run the "
                "drift-share, prediction-PSI and live-accuracy checks. Partitioned by day; backfill a range "
                "for history."
            ),
        ),
    ]
    jobs = []
    for base, selection, partitions_def, pipeline, description in specs:
        names = [model.job_name(base)] + ([base] if model.is_default else [])
        for name in names:
            jobs.append(
                dg.define_asset_job(
                    name=name,
                    selection=selection,
                    partitions_def=partitions_def,
                    description=description
                    + ("" if name != base else f" (The default model's `{model.job_name(base)}`.)"),
                    tags={
                        **model.tags,
                        "ml_platform/pipeline": pipeline,
                        "ml_platform/lane": f"{model.name}.{pipeline}",
                    },
                )
            )
    return dg.Definitions(jobs=jobs)

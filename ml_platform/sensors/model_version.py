"""``model_version_sensor``: one ``canary_deployment_job`` run per validated model version.

A version is *waiting* when it passed the training gates (tag
``validation_status=passed``, set by ``reference_snapshot`` or by hand for a
version registered outside Dagster), is newer than the ``champion`` and has
no ``deployment_status`` yet. Each tick:

- while a deployment run is queued or running, nothing is requested (one
  rollout at a time; versions that land meanwhile keep waiting);
- otherwise the newest waiting version newer than the cursor is requested
  (run key ``<model>:<version>``, so never twice) and added as a
  ``model_versions`` partition; older waiting versions are tagged
  ``deployment_status=superseded``.
"""

import time
from typing import Any

import dagster as dg

from ml_platform.assets.deployment import REQUESTED_AT_RUN_TAG, VALIDATED_AT_RUN_TAG
from ml_platform.deployment.jobs import canary_deployment_job
from ml_platform.deployment.partitions import model_versions
from ml_platform.resources.mlflow_resources import MlflowRegistry
from ml_platform.spec import load_spec

DEFAULT_INTERVAL_SECONDS = 30
ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _validated_at(context: dg.SensorEvaluationContext, model_version: Any) -> float:
    """Best known time the version became validated: its tag, its snapshot's materialization, its creation."""
    from ml_platform.deployment.registry_ops import validated_at

    tagged = validated_at(model_version)
    if tagged is not None:
        return tagged
    event = context.instance.get_latest_materialization_event(dg.AssetKey("reference_snapshot"))
    if event is not None and event.asset_materialization is not None:
        entry = event.asset_materialization.metadata.get("model_version")
        if entry is not None and str(entry.value) == str(model_version.version):
            return float(event.timestamp)
    return float(model_version.creation_timestamp) / 1000.0


@dg.sensor(
    job=canary_deployment_job,
    minimum_interval_seconds=DEFAULT_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches the MLflow registry for model versions that passed the training gates "
        "(validation_status=passed, including versions registered outside Dagster) and requests one "
        "`canary_deployment_job` run per version (run key <model>:<version>). Waits while a deployment "
        "runs; of several waiting versions only the newest is deployed, the others are tagged superseded."
    ),
)
def model_version_sensor(context: dg.SensorEvaluationContext, mlflow_registry: MlflowRegistry) -> dg.SensorResult:
    """Request a canary deployment of the newest validated, undeployed model version."""
    from ml_platform.deployment.registry_ops import DEPLOYMENT_STATUS_TAG, set_tags, waiting_versions

    name = load_spec().model.name
    active = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=canary_deployment_job.name, statuses=ACTIVE_STATUSES), limit=1
    )
    if active:
        return dg.SensorResult(skip_reason=f"deployment run {active[0].run_id} is still active", cursor=context.cursor)
    client = mlflow_registry.client()
    cursor = context.cursor or ""
    requested_up_to = int(cursor) if cursor.isdigit() else 0
    waiting = [v for v in waiting_versions(client, name) if int(v.version) > requested_up_to]
    if not waiting:
        return dg.SensorResult(skip_reason=f"no validated, undeployed version of {name}", cursor=context.cursor)
    newest, older = waiting[-1], waiting[:-1]
    version = str(newest.version)
    for skipped in older:
        set_tags(
            client,
            name,
            skipped.version,
            {DEPLOYMENT_STATUS_TAG: "superseded", "deployment.superseded_by": version},
        )
    if older:
        context.log.info(f"superseded by v{version}: {[str(v.version) for v in older]}")
    context.log.info(f"requesting the canary deployment of {name} v{version}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{name}:{version}",
                partition_key=version,
                tags={
                    VALIDATED_AT_RUN_TAG: f"{_validated_at(context, newest):.3f}",
                    REQUESTED_AT_RUN_TAG: f"{time.time():.3f}",
                    "ml_platform/model": f"{name}:{version}",
                },
            )
        ],
        dynamic_partitions_requests=[model_versions.build_add_request([version])],
        cursor=version,
    )

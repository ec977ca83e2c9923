"""Deployment of one model: ``<model>/canary_deployment`` (one model version per partition) and the
model-version sensor that requests it.

The materialization records the whole rollout: the decision and its reason, the policy, the smoke
test, one markdown table per traffic step (health, error rate, p95 latency, live accuracy, with
samples and source, and stable's numbers beside them), and the time from validation to decision.
The same decision is written as MLflow model-version tags. The ``canary_verdict`` check fails when
the version was rejected. The asset depends on ``<model>/candidate_model``, so the lineage graph
draws the whole lifecycle.

``<model>_model_version_sensor`` requests one canary run per validated version of *this* model's
registered name: a version is *waiting* when it passed the training gates (tag
``validation_status=passed``), is newer than the ``champion`` and has no ``deployment_status`` yet.
While a deployment run of this model is queued or running nothing is requested (one rollout at a
time per model; other models roll out independently); otherwise the newest waiting version newer
than the cursor is requested (run key ``<registered name>:<version>``) and older waiting versions are
tagged ``deployment_status=superseded``.

Crash safety: before anything else, each tick reads the model's rollout record (the backend's
rollout-state store). A record whose driving process is gone (or, on another host, whose Dagster run
ended or whose heartbeat is stale) is a rollout left half-way: the dead run is marked failed in Dagster
and a resume run of the same version is requested (run key ``<name>:<version>:resume:<dead run>:<n>``), which
carries the rollout on by the documented resume rule (docs/canary.md) before any new version is deployed.

A rejected version's partition fails (the asset raises after recording the decision), so the
Partitions view shows rejections in red; its metadata and the ``canary_verdict`` check say why.
"""

import contextlib
import time
from typing import Any

import dagster as dg
from pydantic import Field

from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import MetricSourceResource, MlflowRegistryResource
from ml_platform.deployment.backend import Deployer
from ml_platform.deployment.metric_source import MetricSource

VALIDATED_AT_RUN_TAG = "ml_platform/validated_at"
REQUESTED_AT_RUN_TAG = "ml_platform/requested_at"
MODEL_VERSION_RUN_TAG = "ml_platform/model_version"
PIPELINE_TAG = "ml_platform/pipeline"
RESUME_OF_RUN_TAG = "ml_platform/resume_of"


class CanaryConfig(dg.Config):
    """Per-run overrides of the rollout policy (unset: the spec's ``rollout:`` section, then defaults)."""

    steps: list[int] | None = Field(default=None, description="canary traffic weights (%), e.g. [10, 25, 50]")
    step_pause_seconds: float | None = Field(default=None, description="minimum time on each step")
    analysis_interval_seconds: float | None = Field(default=None, description="time between analyses")
    window_seconds: float | None = Field(default=None, description="sliding window of error rate and latency")
    min_live_accuracy: float | None = Field(default=None, description="live accuracy threshold (feedback)")
    min_feedback_samples: int | None = Field(default=None, description="feedback needed to judge accuracy")
    max_error_rate: float | None = Field(default=None, description="5xx share of /predict allowed")
    max_p95_latency_ms: float | None = Field(default=None, description="p95 /predict latency allowed")
    min_requests: int | None = Field(default=None, description="requests per window needed to judge")
    failure_limit: int | None = Field(default=None, description="failed analyses before a rollback")
    inconclusive_limit: int | None = Field(default=None, description="held analyses before a rollback")
    startup_timeout_seconds: float | None = Field(default=None, description="serving start/swap timeout")
    error_limit: int | None = Field(default=None, description="measurement errors in a row before a rollback")
    progress_deadline_seconds: float | None = Field(default=None, description="no decision by then: rollback")
    max_attempts: int | None = Field(default=None, description="runs that may drive one rollout")


def _tag_time(tags: dict[str, str], key: str) -> dict[str, float]:
    try:
        return {key.split("/")[-1]: float(tags[key])} if tags.get(key) else {}
    except ValueError:
        return {}


def _metadata(result: Any, deployer: Deployer, metric_source: MetricSource, link: str | None) -> dict[str, Any]:
    durations = result.durations()
    metadata: dict[str, Any] = {
        "decision": result.decision,
        "reason": result.reason,
        "model_name": result.model_name,
        "model_version": dg.MetadataValue.int(int(result.version)),
        "champion_before": result.champion_before or "none",
        "champion_after": result.champion_after or "none",
        "deployer": deployer.describe(),
        "metric_source": metric_source.describe(),
        "policy": dg.MetadataValue.md(result.policy.markdown()),
        "steps_run": dg.MetadataValue.int(len(result.steps)),
        "analyses": dg.MetadataValue.int(sum(len(s.analyses) for s in result.steps)),
        "attempts": dg.MetadataValue.int(result.attempts),
    }
    if result.resumed_from:
        metadata["resumed_from"] = result.resumed_from
        metadata["analysis_history"] = dg.MetadataValue.md(result.history_table())
    if result.smoke is not None:
        metadata["smoke_test"] = f"{'passed' if result.smoke.passed else 'FAILED'}: {result.smoke.detail}"
    for name, table in result.step_tables().items():
        metadata[name] = dg.MetadataValue.md(table)
    for name, seconds in durations.items():
        metadata[name] = dg.MetadataValue.float(round(seconds, 3))
    if link:
        metadata["mlflow_model_version"] = dg.MetadataValue.url(link)
    return metadata


def _retraction_hint(client: Any, model: str, registered_name: str, version: str) -> dict[str, Any]:
    """What a rejected version trained on, and the one command that retracts it all (also tagged on the version)."""
    from ml_platform.ml.registry import training_batches

    try:
        keys = training_batches(client, registered_name, version)
    except Exception as exc:  # the record is a convenience: a registry hiccup must not hide the rejection
        return {"trained_on_batches": f"unknown: {type(exc).__name__}: {exc}"[:300]}
    if not keys:
        return {"trained_on_batches": "not recorded for this version"}
    command = f'python -m ml_platform.cli retract --model {model} --trained-into {version} --reason "..."'
    with contextlib.suppress(Exception):  # the metadata below still carries it
        client.set_model_version_tag(registered_name, version, "rejected_retract_command", command)
    listing = "\n".join(f"- `{key}`" for key in keys[:50])
    if len(keys) > 50:
        listing += f"\n- ... {len(keys) - 50} more"
    return {
        "trained_on_batches": dg.MetadataValue.md(listing),
        "trained_on_batch_count": dg.MetadataValue.int(len(keys)),
        "retract_command": dg.MetadataValue.text(command),
    }


DEFAULT_INTERVAL_SECONDS = 30
ENDED_STATUSES = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _validated_at(context: dg.SensorEvaluationContext, model: ModelContext, model_version: Any) -> float:
    """Best known time the version became validated: its tag, its snapshot's materialization, its creation."""
    from ml_platform.deployment.registry_ops import validated_at

    tagged = validated_at(model_version)
    if tagged is not None:
        return tagged
    event = context.instance.get_latest_materialization_event(model.key("reference_snapshot"))
    if event is not None and event.asset_materialization is not None:
        entry = event.asset_materialization.metadata.get("model_version")
        if entry is not None and str(entry.value) == str(model_version.version):
            return float(event.timestamp)
    return float(model_version.creation_timestamp) / 1000.0


def _reconcile(
    context: dg.SensorEvaluationContext, model: ModelContext, deployer: Deployer, job_name: str
) -> dg.SensorResult | None:
    """The rollout left half-way by a dead run, if any: a resume request (or a reason to wait). None: no record."""
    from ml_platform.deployment.policy import PolicyError, load_policy
    from ml_platform.deployment.rollout_state import RolloutStateError, store_for

    try:
        record = store_for(deployer.backend_for(model.name)).load(model.name)
    except RolloutStateError as exc:
        return dg.SensorResult(skip_reason=f"the rollout record of {model.name} is unreadable: {exc}")
    if record is None:
        return None
    run = context.instance.get_run_by_id(record.run_id) if record.run_id else None
    run_active = run is not None and run.status in ACTIVE_STATUSES
    try:
        policy = load_policy(model.spec)
        stale_after = max(120.0, policy.startup_timeout_seconds + 3 * policy.analysis_interval_seconds)
    except PolicyError:
        stale_after = 600.0
    alive = record.owner_alive()
    run_ended = run is not None and run.status in ENDED_STATUSES
    if not run_ended and (alive or (alive is None and not record.orphaned(stale_after))):
        return dg.SensorResult(skip_reason=f"rollout in progress: {record.describe()}", cursor=context.cursor)
    others = [
        r
        for r in context.instance.get_runs(
            filters=dg.RunsFilter(tags={**model.tags, PIPELINE_TAG: "deployment"}, statuses=ACTIVE_STATUSES), limit=5
        )
        if r.run_id != record.run_id
    ]
    if others:
        return dg.SensorResult(
            skip_reason=f"run {others[0].run_id} is taking over the rollout: {record.describe()}",
            cursor=context.cursor,
        )
    why = "its process is gone" if alive is False else "its run ended or its heartbeat is stale"
    earlier = context.instance.get_runs(filters=dg.RunsFilter(tags={RESUME_OF_RUN_TAG: record.run_id or "-"}))
    if run is not None and run_active:
        context.instance.report_run_failed(
            run, message=f"the process driving the rollout of v{record.version} died ({why}); the sensor resumes it"
        )
    context.log.info(f"resuming a rollout left half-way ({why}): {record.describe()}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                # unique per try: a resume run that died before claiming the record is followed by another
                run_key=f"{model.registered_name}:{record.version}:resume:{record.run_id or '-'}:{len(earlier)}",
                job_name=job_name,
                partition_key=record.version,
                tags={
                    REQUESTED_AT_RUN_TAG: f"{time.time():.3f}",
                    **model.tags,
                    MODEL_VERSION_RUN_TAG: record.version,
                    RESUME_OF_RUN_TAG: record.run_id or "-",
                },
            )
        ],
        cursor=context.cursor,
    )


def build_deployment_defs(model: ModelContext) -> dg.Definitions:
    """``<model>/canary_deployment`` and ``<model>_model_version_sensor``."""
    from ml_platform.deployment.policy import PolicyError, load_policy

    spec = model.spec
    job_name = model.job_name("canary_deployment_job")
    try:  # a malformed `rollout:` section fails the code location load, not the first canary weeks later
        load_policy(spec)
    except PolicyError as exc:
        raise dg.DagsterInvalidDefinitionError(f"model {model.name}: spec {spec.name}: {exc}") from exc

    @dg.asset(
        **model.asset_kwargs("canary_deployment"),
        partitions_def=model.model_versions,
        deps=[model.key("candidate_model")],
        kinds={"nginx", "kubernetes", "mlflow"},
        check_specs=[
            dg.AssetCheckSpec(
                "canary_verdict",
                asset=model.key("canary_deployment"),
                description="Fails when the canary of this version was rolled back (the version is tagged rejected).",
            )
        ],
        description=(
            f"Rolls one validated `{model.registered_name}` version out (partition = version): smoke test before "
            "traffic, canary traffic steps with pauses and live analysis (error rate, p95 latency, live accuracy "
            "from feedback), then promotion (`champion` moves, the old one becomes `previous_champion`) or "
            "rollback (the version is tagged rejected and loses `challenger`; the partition fails, so the "
            "Partitions view shows it). With no champion yet, the version goes straight to stable. Progress "
            "is persisted at every step: a run that dies is resumed by the next sensor tick. Metadata: one "
            "markdown table per step, the decision and the validation-to-decision time."
        ),
    )
    def canary_deployment(
        context: dg.AssetExecutionContext,
        config: CanaryConfig,
        deployer: dg.ResourceParam[Deployer],
        metric_source: MetricSourceResource,
        mlflow_registry: MlflowRegistryResource,
    ) -> dg.MaterializeResult:
        """Run the canary rollout of the partition's model version and record the decision."""
        from ml_platform.deployment.policy import load_policy
        from ml_platform.deployment.rollout import REJECTED, CanaryRollout

        version = context.partition_key
        client = mlflow_registry.client()
        policy = load_policy(spec, config.model_dump())
        tags = dict(context.run.tags)
        timings = {
            **_tag_time(tags, VALIDATED_AT_RUN_TAG),
            **_tag_time(tags, REQUESTED_AT_RUN_TAG),
        }
        if "validated_at" not in timings:
            from ml_platform.deployment.registry_ops import validated_at

            found = validated_at(client.get_model_version(spec.model.name, version))
            if found is not None:
                timings["validated_at"] = found
        context.log.info(
            f"{model.name}: rolling out {spec.model.name} v{version} with {deployer.describe()}; "
            f"policy {policy.as_dict()}"
        )
        rollout = CanaryRollout(
            spec=spec,
            version=version,
            backend=deployer.backend_for(model.name),
            metric_source=metric_source,
            client=client,
            policy=policy,
            run_id=context.run_id,
            log=context.log.info,
            timings=timings,
        )
        started = time.monotonic()
        result = rollout.run()
        context.log.info(f"{result.decision} after {time.monotonic() - started:.1f}s: {result.reason}")
        link = mlflow_registry.ui_link(model=spec.model.name, version=version)
        metadata = _metadata(result, deployer, metric_source, link)
        if result.decision == REJECTED:
            metadata.update(_retraction_hint(client, model.name, spec.model.name, version))
            context.log_event(
                dg.AssetCheckEvaluation(
                    asset_key=model.key("canary_deployment"),
                    check_name="canary_verdict",
                    passed=False,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=f"{result.decision}: {result.reason}",
                    metadata={"decision": result.decision},
                )
            )
            # A failed partition: the Partitions view shows the rejection in red (a materialization would be green).
            raise dg.Failure(
                description=f"{spec.model.name} v{version} rejected: {result.reason}",
                metadata=metadata,
                allow_retries=False,
            )
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name="canary_verdict",
                    passed=result.decision != REJECTED,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=f"{result.decision}: {result.reason}",
                    metadata={"decision": result.decision},
                )
            ],
        )

    @dg.sensor(
        name=model.sensor_name("model_version_sensor"),
        job_name=job_name,
        minimum_interval_seconds=DEFAULT_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Watches the MLflow registry for versions of `{model.registered_name}` that passed the training "
            "gates (validation_status=passed, including versions registered outside Dagster) and requests one "
            f"`{job_name}` run per version (run key <model>:<version>). Waits while a deployment of this model "
            "runs; of several waiting versions only the newest is deployed, the others are tagged superseded."
        ),
    )
    def model_version_sensor(
        context: dg.SensorEvaluationContext,
        mlflow_registry: MlflowRegistryResource,
        deployer: dg.ResourceParam[Deployer],
    ) -> dg.SensorResult:
        """Resume a rollout whose run died, else request a canary deployment of the newest waiting version."""
        from ml_platform.deployment.registry_ops import DEPLOYMENT_STATUS_TAG, set_tags, waiting_versions

        name = model.registered_name
        resumed = _reconcile(context, model, deployer, job_name)
        if resumed is not None:
            return resumed
        active = context.instance.get_runs(
            filters=dg.RunsFilter(tags={**model.tags, PIPELINE_TAG: "deployment"}, statuses=ACTIVE_STATUSES), limit=1
        )
        if active:
            return dg.SensorResult(
                skip_reason=f"deployment run {active[0].run_id} is still active", cursor=context.cursor
            )
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
        context.log.info(f"requesting {job_name}: the canary deployment of {name} v{version}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{name}:{version}",
                    partition_key=version,
                    tags={
                        VALIDATED_AT_RUN_TAG: f"{_validated_at(context, model, newest):.3f}",
                        REQUESTED_AT_RUN_TAG: f"{time.time():.3f}",
                        **model.tags,
                        MODEL_VERSION_RUN_TAG: version,
                    },
                )
            ],
            dynamic_partitions_requests=[model.model_versions.build_add_request([version])],
            cursor=version,
        )

    return dg.Definitions(assets=[canary_deployment], sensors=[model_version_sensor])

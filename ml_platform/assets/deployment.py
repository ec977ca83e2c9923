"""The ``canary_deployment`` asset: one model version (partition) rolled out, promoted or rolled back.

The materialization records the whole rollout: the decision and its reason,
the policy, the smoke test, one markdown table per traffic step (every
analysis: health, error rate, p95 latency, live accuracy, with samples and
source, and stable's numbers beside them), and the time from validation to
decision. The same decision is written as MLflow model-version tags. The
``canary_verdict`` check fails when the version was rejected.
"""

import time
from typing import Any

import dagster as dg
from pydantic import Field

from ml_platform.deployment.deployer import Deployer
from ml_platform.deployment.metric_source import MetricSource
from ml_platform.deployment.partitions import model_versions
from ml_platform.resources.mlflow_resources import MlflowRegistry

DEPLOYMENT_GROUP = "deployment"
VALIDATED_AT_RUN_TAG = "ml_platform/validated_at"
REQUESTED_AT_RUN_TAG = "ml_platform/requested_at"


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
    }
    if result.smoke is not None:
        metadata["smoke_test"] = f"{'passed' if result.smoke.passed else 'FAILED'}: {result.smoke.detail}"
    for name, table in result.step_tables().items():
        metadata[name] = dg.MetadataValue.md(table)
    for name, seconds in durations.items():
        metadata[name] = dg.MetadataValue.float(round(seconds, 3))
    if link:
        metadata["mlflow_model_version"] = dg.MetadataValue.url(link)
    return metadata


@dg.asset(
    partitions_def=model_versions,
    group_name=DEPLOYMENT_GROUP,
    kinds={"nginx", "kubernetes", "mlflow"},
    check_specs=[
        dg.AssetCheckSpec(
            "canary_verdict",
            asset="canary_deployment",
            description="Fails when the canary of this version was rolled back (the version is tagged rejected).",
        )
    ],
    description=(
        "Rolls one validated model version out (partition = version): smoke test before traffic, canary "
        "traffic steps with pauses and live analysis (error rate, p95 latency, live accuracy from feedback), "
        "then promotion (`champion` moves, the old one becomes `previous_champion`) or rollback (the version "
        "is tagged rejected). With no champion yet, the version goes straight to stable. Metadata: one "
        "markdown table per step, the decision and the validation-to-decision time."
    ),
)
def canary_deployment(
    context: dg.AssetExecutionContext,
    config: CanaryConfig,
    deployer: Deployer,
    metric_source: MetricSource,
    mlflow_registry: MlflowRegistry,
) -> dg.MaterializeResult:
    """Run the canary rollout of the partition's model version and record the decision."""
    from ml_platform.deployment.policy import load_policy
    from ml_platform.deployment.rollout import REJECTED, CanaryRollout
    from ml_platform.spec import load_spec

    spec = load_spec()
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
    context.log.info(f"rolling out {spec.model.name} v{version} with {deployer.describe()}; policy {policy.as_dict()}")
    rollout = CanaryRollout(
        spec=spec,
        version=version,
        backend=deployer.backend_for(spec.model.name),
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
    return dg.MaterializeResult(
        metadata=_metadata(result, deployer, metric_source, link),
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

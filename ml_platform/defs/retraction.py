"""Retraction from the UI: ``<model>_retract_batch_job`` takes accepted batches out of training.

Launch it from the job's launchpad with run config::

    ops:
      <model>_retract_batches:
        config:
          keys: ["iris.csv@<sha256>"]        # partition keys of <model>/raw_batch
          reason: "labels rotated by the export job"
          trained_into: ""                    # or a model version: every batch it trained on

The step retracts through the plain landing zone (:mod:`ml_platform.validation.retraction`, the
same code as ``python -m ml_platform.cli retract``) and records lineage: an asset observation on
each retracted ``<model>/raw_batch`` partition (``status=retracted``, reason, actor, where the
file went) and one on ``<model>/training_dataset`` naming what its next materialization leaves
out. ``training_dataset`` reads ``accepted/`` only, so its next data version changes by itself.
"""

from typing import Any

import dagster as dg
from pydantic import Field

from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.resources import LandingZoneResource, MlflowRegistryResource

RETRACT_JOB = "retract_batch_job"


class RetractConfig(dg.Config):
    """What to retract and why (the launchpad's run config)."""

    keys: list[str] = Field(default_factory=list, description="raw_batch partition keys `<file name>@<sha256>`")
    reason: str = Field(description="why the batches leave training (recorded beside each batch)")
    trained_into: str = Field(
        default="", description="a model version: also retract every batch it trained on (its training_batches.json)"
    )


def _actor(context: dg.OpExecutionContext) -> str:
    user = context.run.tags.get("dagster/user") or context.run.tags.get("user")
    return f"dagster:{user}" if user else f"dagster run {context.run_id}"


def build_retraction_defs(model: ModelContext) -> dg.Definitions:
    """``<model>_retract_batch_job``: retract batches of ``model`` with a reason, recorded as lineage."""
    raw_batch_key = model.key("raw_batch")
    dataset_key = model.key("training_dataset")

    @dg.op(
        name=f"{model.name}_retract_batches",
        tags=model.tags,
        description=(
            f"Move accepted {model.name} batches from accepted/ to retracted/ with a reason record, and record "
            f"`status=retracted` on their `{raw_batch_key.to_user_string()}` partitions."
        ),
    )
    def retract_batches_op(
        context: dg.OpExecutionContext,
        config: RetractConfig,
        landing_zone: LandingZoneResource,
        mlflow_registry: MlflowRegistryResource,
    ) -> list[str]:
        """Retract the configured batches (all checked first), then log one observation per batch."""
        from ml_platform.validation.retraction import RetractionError, retract_batches, tag_version, training_batches

        zone = landing_zone.for_model(model.name)
        keys = [k for k in config.keys if k]
        version = config.trained_into.strip() or None
        client = None
        try:
            if version:
                client = mlflow_registry.client()
                found = training_batches(client, model.registered_name, version)
                context.log.info(f"{model.registered_name} v{version} trained on {len(found)} batch(es): {found}")
                keys += found
            records = retract_batches(zone, keys, config.reason, actor=_actor(context), version=version)
        except (RetractionError, ValueError) as exc:
            raise dg.Failure(description=f"retraction refused, nothing moved: {exc}") from exc
        if version and client is not None:
            tag_version(client, model.registered_name, version, records)
        known = set(context.instance.get_dynamic_partitions(str(model.landed_files.name)))
        for record in records:
            metadata: dict[str, Any] = {
                "status": "retracted",
                "reason": record.reason,
                "actor": record.actor,
                "retracted_at": record.retracted_at,
                "retracted_path": dg.MetadataValue.path(record.path),
                "already_retracted": record.already_retracted,
            }
            if record.version:
                metadata["trained_into_version"] = record.version
            if record.key in known:  # an observation on an unknown partition would be refused
                context.log_event(dg.AssetObservation(asset_key=raw_batch_key, partition=record.key, metadata=metadata))
            verb = "was already retracted" if record.already_retracted else "retracted"
            context.log.info(f"{record.key} {verb}: {record.reason} ({record.path})")
        context.log_event(
            dg.AssetObservation(
                asset_key=dataset_key,
                metadata={
                    "retracted_batches": len(records),
                    "retracted": dg.MetadataValue.md("\n".join(f"- `{r.key}`: {r.reason}" for r in records)),
                    "note": "the next materialization leaves these batches out (new data version)",
                },
            )
        )
        return [r.key for r in records]

    @dg.job(
        name=model.job_name(RETRACT_JOB),
        tags=model.tags,
        description=(
            f"Retract accepted {model.name} batches: they leave accepted/ for retracted/ with the reason, the "
            f"`{raw_batch_key.to_user_string()}` partitions record `status=retracted`, and the next training "
            "dataset leaves them out (its data version changes). Run config: `keys` (partition keys), `reason`, "
            "optionally `trained_into` (a model version: all batches it trained on). Same as "
            f"`python -m ml_platform.cli retract --model {model.name} KEY... --reason TEXT`."
        ),
    )
    def retract_batch_job() -> None:
        retract_batches_op()

    return dg.Definitions(jobs=[retract_batch_job])

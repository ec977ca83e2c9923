"""Helpers for running the real training job against a real Dagster instance and MLflow store."""

from __future__ import annotations

import os
import time
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg

from ml_platform.catalog import ModelEntry, get_model
from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.pipeline import build_model_defs
from ml_platform.defs.resources import LandingZoneResource, platform_resources
from ml_platform.ml.mlflow_store import MlflowStore
from ml_platform.validation.landing_zone import ModelLandingZone

DEFAULT_MODEL = "iris"


@cache
def code_location() -> dg.Definitions:
    """The code location as ``dagster`` loads it (every model of the catalog)."""
    from ml_platform.definitions import build_defs

    return build_defs()


def defs_for_entry(entry: ModelEntry) -> dg.Definitions:
    """One model's definitions with the platform resources, e.g. for a spec written by a test."""
    return dg.Definitions.merge(
        build_model_defs(ModelContext(entry)),
        dg.Definitions(resources=platform_resources(), executor=dg.in_process_executor),
    )


def run_training(
    instance: dg.DagsterInstance,
    partition_key: str | None = None,
    *,
    model: str | None = None,
    defs: dg.Definitions | None = None,
) -> dg.ExecuteInProcessResult:
    """Execute a training job in process: ``training_job`` (the default model) or ``<model>_training_job``."""
    job_name = f"{model}_training_job" if model else "training_job"
    job = (defs or code_location()).resolve_job_def(job_name)
    return job.execute_in_process(instance=instance, partition_key=partition_key, raise_on_error=False)


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    """Check name -> passed, for every check evaluated in the run."""
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def materialized(result: dg.ExecuteInProcessResult, model: str = DEFAULT_MODEL) -> set[str]:
    """Names of ``model``'s assets materialized by the run (and nothing of another model was)."""
    keys = {e.asset_key for e in result.get_asset_materialization_events()}
    assert all(k.path[0] == model for k in keys), f"assets of another model materialized: {keys}"
    return {k.path[-1] for k in keys}


def registry_client() -> Any:
    return MlflowStore().client()


def model_versions(name: str) -> list[Any]:
    client = registry_client()
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def landing_resource(settle_seconds: float = 0) -> LandingZoneResource:
    """The ``landing_zone`` resource (every model) for sensor contexts and jobs."""
    return LandingZoneResource(settle_seconds=settle_seconds)


def landing_zone(model: str = DEFAULT_MODEL, settle_seconds: float = 0) -> ModelLandingZone:
    """One model's landing folders under the test's platform home."""
    return landing_resource(settle_seconds).for_model(model)


def incoming_sensor(model: str = DEFAULT_MODEL) -> dg.SensorDefinition:
    return code_location().resolve_sensor_def(f"{model}_incoming_data_sensor")


def spec_of(model: str = DEFAULT_MODEL) -> Any:
    return get_model(model).spec


def failure_messages(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's message (and the description of a dg.Failure), joined."""
    parts = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            parts.append(error.message)
            error = error.cause
    return "\n".join(parts)


def age(path: Path, seconds: float = 60) -> None:
    """Make an entry look settled (its own times: a link is not followed)."""
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)

"""Helpers for running the real training job against a real Dagster instance and MLflow store."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import dagster as dg

from ml_platform.definitions import build_defs
from ml_platform.resources.landing_zone import LandingZone
from ml_platform.resources.mlflow_resources import MlflowRegistry


def run_training(instance: dg.DagsterInstance, partition_key: str | None = None) -> dg.ExecuteInProcessResult:
    """Execute ``training_job`` in process (optionally for one landed-file partition)."""
    job = build_defs().resolve_job_def("training_job")
    return job.execute_in_process(instance=instance, partition_key=partition_key, raise_on_error=False)


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    """Check name -> passed, for every check evaluated in the run."""
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    """Asset keys materialized by the run."""
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def registry_client() -> Any:
    return MlflowRegistry().client()


def model_versions(name: str) -> list[Any]:
    client = registry_client()
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def landing_zone() -> LandingZone:
    return LandingZone(settle_seconds=0)


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

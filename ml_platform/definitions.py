"""``defs``: the Dagster code location of ml_platform.

Loading this module imports only Dagster and the platform's light modules;
great_expectations, mlflow, sklearn and friends load inside the steps that
use them.
"""

from __future__ import annotations

import dagster as dg

from ml_platform.assets.ingestion import landing_report, raw_batch, training_dataset
from ml_platform.assets.reference import reference_snapshot
from ml_platform.assets.training import candidate_model
from ml_platform.checks.batch_quality import batch_passes_expectation_suite, every_landed_file_accepted
from ml_platform.checks.model_quality import (
    meets_metric_thresholds,
    no_regression_against_champion,
    serving_smoke_test,
)
from ml_platform.deployment import definitions as deployment
from ml_platform.jobs import training_job
from ml_platform.monitoring import definitions as monitoring
from ml_platform.resources.json_io_manager import JsonIOManager
from ml_platform.resources.landing_zone import LandingZone
from ml_platform.resources.mlflow_resources import MlflowRegistry, mlflow_tracking
from ml_platform.sensors.incoming_data import incoming_data_sensor


def build_defs() -> dg.Definitions:
    """Assemble assets, checks, jobs, sensors and resources (configured from the environment)."""
    return dg.Definitions(
        assets=[
            raw_batch,
            training_dataset,
            candidate_model,
            reference_snapshot,
            landing_report,
            *monitoring.ASSETS,
            *deployment.ASSETS,
        ],
        asset_checks=[
            batch_passes_expectation_suite,
            every_landed_file_accepted,
            meets_metric_thresholds,
            no_regression_against_champion,
            serving_smoke_test,
            *monitoring.ASSET_CHECKS,
            *deployment.ASSET_CHECKS,
        ],
        jobs=[training_job, *monitoring.JOBS, *deployment.JOBS],
        sensors=[incoming_data_sensor, *monitoring.SENSORS, *deployment.SENSORS],
        schedules=monitoring.SCHEDULES,
        resources={
            "landing_zone": LandingZone(),
            "mlflow_registry": MlflowRegistry(),
            "mlflow": mlflow_tracking,
            "json_io_manager": JsonIOManager(),
            **monitoring.RESOURCES,
            **deployment.RESOURCES,
        },
        # One process per run: steps are cheap to chain and the code location loads once.
        executor=dg.in_process_executor,
    )


defs = build_defs()

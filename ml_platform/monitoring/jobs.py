"""``drift_job`` and its daily schedule.

The job materializes ``production_window`` and ``drift_report`` for one UTC
day (a partition) and runs the drift checks with them. A range of days is a
backfill: one run per day, from the UI (Materialize > select partitions) or
the command line, e.g.::

    dagster job backfill -m ml_platform -j drift_job --from 2026-11-20 --to 2026-11-23 --noprompt
    dagster job execute -m ml_platform -j drift_job --tags '{"dagster/partition": "2026-11-23"}'
"""

from datetime import timedelta

import dagster as dg

from ml_platform.assets.monitoring import drift_report, production_window

SCHEDULE_CRON = "30 0 * * *"

drift_job = dg.define_asset_job(
    name="drift_job",
    selection=dg.AssetSelection.assets(production_window, drift_report),
    description=(
        "One UTC day of production: read the prediction log into `production_window`, compare it with the "
        "reference snapshot of the serving model version in `drift_report` (Evidently HTML, scores as "
        "metadata, gauges pushed to the Pushgateway), and run the drift-share, prediction-PSI and "
        "live-accuracy checks. Partitioned by day; backfill a range for history."
    ),
    tags={"ml_platform/pipeline": "drift"},
)


@dg.schedule(
    job=drift_job,
    cron_schedule=SCHEDULE_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every day at 00:30 UTC, report on the day that just ended (yesterday's partition, complete by then)."
    ),
)
def drift_daily_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Request drift_job for the previous UTC day."""
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(
        run_key=f"drift-{day}", partition_key=day, tags={"ml_platform/trigger": "drift_daily_schedule"}
    )

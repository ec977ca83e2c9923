"""``incoming_data_sensor``: one training run per newly landed file."""

import json

import dagster as dg

from ml_platform.assets.ingestion import landed_files
from ml_platform.jobs import training_job
from ml_platform.resources.landing_zone import LandingZone
from ml_platform.spec import load_spec

DEFAULT_INTERVAL_SECONDS = 30


def _parse_cursor(cursor: str | None) -> set[str]:
    if not cursor:
        return set()
    try:
        return set(json.loads(cursor).get("in_flight", []))
    except (json.JSONDecodeError, AttributeError):
        return set()


@dg.sensor(
    job=training_job,
    minimum_interval_seconds=DEFAULT_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches the incoming/ folder. Each new, settled file becomes a `landed_files` partition and "
        "one `training_job` run (run key = partition key, so a file is never processed twice). The "
        "cursor remembers files already requested but not yet moved out of incoming/."
    ),
)
def incoming_data_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZone) -> dg.SensorResult:
    """Request a partitioned training run for every file that landed since the last tick."""
    spec = load_spec()
    bootstrapped = landing_zone.bootstrap(spec)
    if bootstrapped:
        context.log.info(f"fresh platform home: landed bundled data {bootstrapped.name}")
    pending = landing_zone.pending_files()
    seen = _parse_cursor(context.cursor)
    new = [f for f in pending if f.partition_key not in seen]
    keys = [f.partition_key for f in new]
    # Only files still in incoming/ need remembering: processed files have moved out of it.
    in_flight = sorted({f.partition_key for f in pending} & (seen | set(keys)))
    cursor = json.dumps({"in_flight": in_flight})
    if not keys:
        return dg.SensorResult(skip_reason=f"no new files in {landing_zone.incoming_dir}", cursor=cursor)
    context.log.info(f"requesting training runs for {keys}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=key, partition_key=key, tags={"ml_platform/landed_file": key}) for key in keys
        ],
        dynamic_partitions_requests=[landed_files.build_add_request(keys)],
        cursor=cursor,
    )

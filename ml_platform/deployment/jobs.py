"""``canary_deployment_job``: one run per model version partition."""

import dagster as dg

from ml_platform.assets.deployment import canary_deployment
from ml_platform.deployment.partitions import model_versions

canary_deployment_job = dg.define_asset_job(
    name="canary_deployment_job",
    selection=dg.AssetSelection.assets(canary_deployment),
    partitions_def=model_versions,
    description=(
        "Deploy one validated model version (partition = version): smoke test, canary traffic steps with "
        "live analysis, then promotion (alias `champion` moves) or rollback. Requested by "
        "`model_version_sensor`; run it by hand with a `model_versions` partition."
    ),
    tags={"ml_platform/pipeline": "deployment"},
)

"""``build_model_defs``: one model's whole lifecycle, merged from the per-domain factories."""

import dagster as dg

from ml_platform.defs.deployment import build_deployment_defs
from ml_platform.defs.evaluation import build_evaluation_defs
from ml_platform.defs.ingestion import build_ingestion_defs
from ml_platform.defs.jobs import build_jobs_defs
from ml_platform.defs.model_context import ModelContext
from ml_platform.defs.monitoring import build_monitoring_defs
from ml_platform.defs.reference import build_reference_defs
from ml_platform.defs.retraction import build_retraction_defs
from ml_platform.defs.training import build_training_defs


def build_model_defs(model: ModelContext) -> dg.Definitions:
    """One model's ingestion, evaluation set, training, reference, deployment, monitoring, jobs, retraction."""
    return dg.Definitions.merge(
        build_ingestion_defs(model),
        build_evaluation_defs(model),
        build_training_defs(model),
        build_reference_defs(model),
        build_deployment_defs(model),
        build_monitoring_defs(model),
        build_jobs_defs(model),
        build_retraction_defs(model),
    )

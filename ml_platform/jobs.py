"""Jobs of the code location. Asset checks of selected assets run with them."""

from __future__ import annotations

import dagster as dg

from ml_platform.assets.ingestion import landing_report, raw_batch, training_dataset
from ml_platform.assets.reference import reference_snapshot
from ml_platform.assets.training import candidate_model

training_job = dg.define_asset_job(
    name="training_job",
    selection=dg.AssetSelection.assets(
        raw_batch, training_dataset, candidate_model, reference_snapshot, landing_report
    ),
    description=(
        "Landed data to a gated, registered model: validate the batch (GX gate), combine accepted "
        "batches, train and register a challenger, run the model gates, write the reference snapshot. "
        "`landing_report` fails the run when any landed file was quarantined (after the good ones trained). "
        "Run with a `landed_files` partition for one file, or without one to sweep incoming/."
    ),
    tags={"ml_platform/pipeline": "training"},
)

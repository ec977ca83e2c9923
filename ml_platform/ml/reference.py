"""Where reference snapshots live: ``<REFERENCE_DATASET_URI or home/snapshots>/<registered model>/v<version>/``."""

from __future__ import annotations

import os

from ml_platform import settings
from ml_platform.spec import DatasetSpec

REFERENCE_FILENAME = "reference.parquet"


def reference_base_uri() -> str:
    """``REFERENCE_DATASET_URI`` (a folder URI: local path, file://, s3://, gs://...) or the platform home."""
    configured = os.environ.get("REFERENCE_DATASET_URI", "").strip()
    return configured or str(settings.platform_paths().snapshots_dir)


def reference_uri(model_name: str, version: str) -> str:
    """Where the snapshot of one registered model version lives."""
    return f"{reference_base_uri().rstrip('/')}/{model_name}/v{version}/{REFERENCE_FILENAME}"


def reference_max_rows(spec: DatasetSpec) -> int:
    """``REFERENCE_DATASET_MAX_ROWS`` or the spec's cap."""
    configured = os.environ.get("REFERENCE_DATASET_MAX_ROWS", "").strip()
    return int(configured) if configured else spec.reference_max_rows

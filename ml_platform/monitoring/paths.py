"""Where monitoring reads the prediction log and writes windows and reports.

Every location is a folder URI: a local path (default, under the platform
home) or an fsspec URI such as ``s3://bucket/prefix``, read and written through
universal-pathlib. Nothing heavy is imported here.
"""

from __future__ import annotations

import os

from ml_platform import settings

PREDICTION_LOG_DIR_ENV = "PREDICTION_LOG_DIR"
PRODUCTION_WINDOWS_URI_ENV = "PRODUCTION_WINDOWS_URI"
DRIFT_REPORTS_URI_ENV = "DRIFT_REPORTS_URI"
WINDOW_FILENAME = "window.parquet"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def prediction_log_root() -> str:
    """The prediction-log folder: ``PREDICTION_LOG_DIR``, else ``<home>/logs/predictions`` (as serving uses)."""
    return _env(PREDICTION_LOG_DIR_ENV) or str(settings.platform_paths().prediction_log_dir)


def windows_base_uri() -> str:
    """``PRODUCTION_WINDOWS_URI``, else ``<home>/monitoring/windows``."""
    return _env(PRODUCTION_WINDOWS_URI_ENV) or str(settings.platform_home() / "monitoring" / "windows")


def reports_base_uri() -> str:
    """``DRIFT_REPORTS_URI``, else ``<home>/reports/drift``."""
    return _env(DRIFT_REPORTS_URI_ENV) or str(settings.platform_paths().reports_dir / "drift")


def window_uri(dataset: str, day: str) -> str:
    """The joined production window of one day, as Parquet."""
    return f"{windows_base_uri().rstrip('/')}/{dataset}/date={day}/{WINDOW_FILENAME}"


def report_folder_uri(dataset: str, day: str) -> str:
    """The folder holding one day's drift reports (HTML per model version, JSON summary)."""
    return f"{reports_base_uri().rstrip('/')}/{dataset}/date={day}"


def is_remote(uri: str) -> bool:
    """True for fsspec URIs other than local files (``s3://``, ``gs://``, ``memory://`` ...)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme not in ("file", "local")


def link_for(uri: str) -> str:
    """A clickable URL for a report: ``file://`` for local paths, the URI itself otherwise."""
    if is_remote(uri) or uri.startswith("file://"):
        return uri
    from pathlib import Path

    return Path(uri).resolve().as_uri()

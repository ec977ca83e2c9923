"""Where monitoring reads the prediction log and writes windows and reports, per model.

Every location is a folder URI: a local path (default, under the platform
home) or an fsspec URI such as ``s3://bucket/prefix``, read and written through
universal-pathlib. Every per-model location ends in the platform model name
(``iris``, ``wine``), so no two models share a folder. Nothing heavy is
imported here.

``PREDICTION_LOG_ROOT`` is the folder holding every model's log folder
(``<root>/<model>/date=YYYY-MM-DD/``); serving's ``PREDICTION_LOG_DIR`` is one
model's folder (what the deployer passes to one model's servers).
"""

from __future__ import annotations

import os

from ml_platform import settings

PREDICTION_LOG_ROOT_ENV = "PREDICTION_LOG_ROOT"
PRODUCTION_WINDOWS_URI_ENV = "PRODUCTION_WINDOWS_URI"
DRIFT_REPORTS_URI_ENV = "DRIFT_REPORTS_URI"
WINDOW_FILENAME = "window.parquet"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def prediction_log_root() -> str:
    """The folder of every model's prediction log: ``PREDICTION_LOG_ROOT``, else ``<home>/logs/predictions``."""
    return _env(PREDICTION_LOG_ROOT_ENV) or str(settings.platform_paths().prediction_log_root)


def per_model(root: str, model: str) -> str:
    """One model's log folder below a log root (the model name is checked: it becomes a path segment)."""
    from ml_platform.catalog import check_model_name

    return f"{root.rstrip('/')}/{check_model_name(model)}"


def prediction_log_dir(model: str) -> str:
    """One model's prediction-log folder, ``<root>/<model>`` (what serving writes by default)."""
    return per_model(prediction_log_root(), model)


def windows_base_uri() -> str:
    """``PRODUCTION_WINDOWS_URI``, else ``<home>/monitoring/windows``."""
    return _env(PRODUCTION_WINDOWS_URI_ENV) or str(settings.platform_home() / "monitoring" / "windows")


def reports_base_uri() -> str:
    """``DRIFT_REPORTS_URI``, else ``<home>/reports/drift``."""
    return _env(DRIFT_REPORTS_URI_ENV) or str(settings.platform_paths().reports_dir / "drift")


def window_uri(model: str, day: str) -> str:
    """One model's joined production window of one day, as Parquet."""
    return f"{per_model(windows_base_uri(), model)}/date={day}/{WINDOW_FILENAME}"


def report_folder_uri(model: str, day: str) -> str:
    """The folder holding one model's drift reports of one day (HTML per model version, JSON summary)."""
    return f"{per_model(reports_base_uri(), model)}/date={day}"


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

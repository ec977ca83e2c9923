"""Build a day's drift report: each model version's rows against that version's reference snapshot.

A window served by several versions (a canary, a promotion during the day) is
split by ``model_version`` and every group is compared with its *own*
reference snapshot: a version is judged against what it was trained on. The
report's headline is the version with the most rows; checks, alerts and the
retrain sensor look at every judged version.

Per judged version:

* feature drift from :func:`ml_platform.drift.engine.compute_drift` on all rows
  (Evidently 0.7 ``DataDriftPreset`` methods and thresholds): per-feature method,
  score and decision, share of drifted features;
* prediction drift: PSI of the predicted classes against the snapshot's;
* live accuracy from the day's feedback, beside the version's training
  accuracy (the held-out ``accuracy`` of its MLflow run, else the snapshot's
  train-split accuracy);
* the Evidently HTML report, rendered on a bounded seeded sample
  (``DRIFT_REPORT_MAX_ROWS``, default 50,000 rows per side) so the asset stays
  fast at scale.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_platform.monitoring import decisions
from ml_platform.monitoring.decisions import INSUFFICIENT_DATA, JUDGED, NO_REFERENCE, DriftThresholds
from ml_platform.monitoring.paths import is_remote, link_for, report_folder_uri
from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

MAX_ROWS_ENV = "DRIFT_REPORT_MAX_ROWS"
DEFAULT_EVIDENTLY_MAX_ROWS = 50_000
REFERENCE_TAG = "reference_snapshot_uri"
SUMMARY_FILENAME = "drift_report.json"


def evidently_max_rows() -> int:
    raw = os.environ.get(MAX_ROWS_ENV, "").strip()
    return int(raw) if raw else DEFAULT_EVIDENTLY_MAX_ROWS


def html_filename(version: str) -> str:
    return f"drift_report-v{version}.html"


@dataclass
class ReferenceInfo:
    """Where a version's snapshot is and what accuracy it was trained to."""

    uri: str | None
    training_accuracy: float | None
    training_accuracy_source: str
    note: str = ""


def resolve_reference(client_factory: Callable[[], Any] | None, model_name: str, version: str) -> ReferenceInfo:
    """The ``reference_snapshot_uri`` tag of the version (else the default location) and its run accuracy."""
    from upath import UPath

    from ml_platform.ml.reference import reference_uri

    uri: str | None = None
    accuracy: float | None = None
    source = "none"
    note = ""
    if client_factory is not None:
        try:
            from ml_platform.ml.registry import version_metric

            client = client_factory()
            model_version = client.get_model_version(model_name, version)
            uri = (model_version.tags or {}).get(REFERENCE_TAG)
            accuracy = version_metric(client, model_version, "accuracy")
            if accuracy is not None:
                source = "mlflow_run_accuracy"
        except Exception as exc:  # registry down or version unknown: fall back to the default location
            note = f"registry lookup failed: {type(exc).__name__}: {exc}"[:300]
    if uri is None:
        candidate = reference_uri(model_name, version)
        uri = candidate if UPath(candidate).exists() else None
    elif not UPath(uri).exists():
        note = (note + "; " if note else "") + f"tagged snapshot {uri} does not exist"
        uri = None
    return ReferenceInfo(uri, accuracy, source, note)


def load_reference(uri: str) -> pd.DataFrame:
    import pandas as pd
    from upath import UPath

    with UPath(uri).open("rb") as handle:
        return pd.read_parquet(handle)


def _write_bytes(uri: str, data: bytes) -> None:
    from upath import UPath

    target = UPath(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as handle:
        handle.write(data)


def _evidently_html(
    reference: pd.DataFrame, current: pd.DataFrame, spec: DatasetSpec, target_uri: str, max_rows: int, share: float
) -> dict[str, Any]:
    """Render Evidently's report; write it straight for local targets, via a temp file for object storage."""
    from ml_platform.drift.evidently_report import build_evidently_report

    numeric, categorical = spec.numeric_features, spec.categorical_features
    if not is_remote(target_uri):
        summary = build_evidently_report(
            reference, current, numeric, categorical, Path(target_uri), max_rows, share_threshold=share
        )
    else:
        with tempfile.TemporaryDirectory(prefix="ml_platform_drift_") as tmp:
            local = Path(tmp) / "report.html"
            summary = build_evidently_report(
                reference, current, numeric, categorical, local, max_rows, share_threshold=share
            )
            _write_bytes(target_uri, local.read_bytes())
    summary["html_uri"] = target_uri
    summary["html_link"] = link_for(target_uri)
    summary.pop("html_path", None)
    return summary


def _class_psi(reference: pd.Series, current: pd.Series) -> float:
    from ml_platform.drift.psi import psi_categorical

    return psi_categorical(reference.astype(str), current.astype(str))


def analyse_version(
    spec: DatasetSpec,
    day: str,
    version: str,
    current: pd.DataFrame,
    feedback: tuple[int, int] | None,
    reference_info: ReferenceInfo,
    thresholds: DriftThresholds,
    *,
    model: str,
    render_html: bool = True,
    max_rows: int = DEFAULT_EVIDENTLY_MAX_ROWS,
) -> dict[str, Any]:
    """Judge one model version's rows of the window (see the module docstring)."""
    from ml_platform.drift.engine import compute_drift
    from ml_platform.drift.psi import psi_band

    correct, total = feedback or (0, 0)
    result: dict[str, Any] = {
        "model_version": version,
        "rows": len(current),
        "status": JUDGED,
        "reason": "",
        "reference_uri": reference_info.uri,
        "reference_rows": None,
        "reference_note": reference_info.note,
        "feedback_rows": total,
        "feedback_correct": correct,
        "live_accuracy": (correct / total) if total else None,
        "training_accuracy": reference_info.training_accuracy,
        "training_accuracy_source": reference_info.training_accuracy_source,
        "drift_share": None,
        "drifted_count": None,
        "drifted_features": [],
        "dataset_drift": None,
        "features": [],
        "prediction_psi": None,
        "prediction_psi_band": None,
        "evidently": None,
    }
    reference = load_reference(reference_info.uri) if reference_info.uri else None
    if reference is not None:
        result["reference_rows"] = len(reference)
        if result["training_accuracy"] is None and "prediction" in reference and spec.target.name in reference:
            result["training_accuracy"] = float((reference["prediction"] == reference[spec.target.name]).mean())
            result["training_accuracy_source"] = "reference_snapshot_train_split"

    if len(current) < thresholds.min_window_rows:
        result["status"] = INSUFFICIENT_DATA
        result["reason"] = (
            f"window too small to judge: {len(current)} rows < min_window_rows {thresholds.min_window_rows}"
        )
    elif reference is None:
        result["status"] = NO_REFERENCE
        result["reason"] = "no reference snapshot for this version" + (
            f" ({reference_info.note})" if reference_info.note else ""
        )
    if result["status"] != JUDGED:
        return _with_flags(result, thresholds)

    assert reference is not None
    drift = compute_drift(
        reference,
        current,
        spec.numeric_features,
        spec.categorical_features,
        share_threshold=thresholds.drift_share_threshold,
    )
    psi = _class_psi(reference["prediction"], current["prediction"])
    result.update(
        {
            "drift_share": drift.drift_share,
            "drifted_count": drift.drifted_count,
            "drifted_features": drift.drifted_features,
            "dataset_drift": drift.dataset_drift,
            "features": drift.to_dict()["features"],
            "prediction_psi": psi,
            "prediction_psi_band": psi_band(psi),
        }
    )
    if render_html:
        target = f"{report_folder_uri(model, day)}/{html_filename(version)}"
        result["evidently"] = _evidently_html(
            reference, current, spec, target, max_rows, thresholds.drift_share_threshold
        )
    return _with_flags(result, thresholds)


def _with_flags(result: dict[str, Any], thresholds: DriftThresholds) -> dict[str, Any]:
    result["drift_detected"] = decisions.drift_detected(result, thresholds)
    result["live_accuracy_low"] = decisions.live_accuracy_low(result, thresholds)
    return result


def build_report(
    spec: DatasetSpec,
    day: str,
    window: pd.DataFrame,
    feedback_counts: dict[str, tuple[int, int]],
    thresholds: DriftThresholds,
    *,
    model: str,
    client_factory: Callable[[], Any] | None,
    render_html: bool = True,
    max_rows: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One model's report of one day: per-version results, the headline version, and the report-level flags.

    ``model`` is the platform model name (``iris``): it names the report folder
    (``<reports>/<model>/date=<day>/``) and the report's ``model`` field, which
    labels and groups the pushed gauges. Writes the Evidently HTML of every
    judged version to the day's report folder; :func:`write_summary` saves the
    returned dict next to it.
    """
    max_rows = max_rows or evidently_max_rows()
    by_version = {str(v): g for v, g in window.groupby(window["model_version"].astype(str), sort=False)}
    versions = sorted(set(by_version) | set(feedback_counts), key=_version_key)
    results: dict[str, dict[str, Any]] = {}
    for version in versions:
        current = by_version.get(version)
        if current is None:
            current = window.iloc[0:0]
        info = resolve_reference(client_factory, spec.model.name, version)
        if log:
            log(f"v{version}: {len(current)} rows, reference {info.uri or 'missing'}")
        results[version] = analyse_version(
            spec,
            day,
            version,
            current,
            feedback_counts.get(version),
            info,
            thresholds,
            model=model,
            render_html=render_html,
            max_rows=max_rows,
        )

    headline = max(results.values(), key=lambda r: (r["rows"], _version_key(r["model_version"])), default=None)
    folder = report_folder_uri(model, day)
    report: dict[str, Any] = {
        "model": model,
        "dataset": spec.name,
        "model_name": spec.model.name,
        "date": day,
        "window_rows": len(window),
        "feedback_rows": sum(total for _, total in feedback_counts.values()),
        "thresholds": thresholds.to_dict(),
        "headline_version": headline["model_version"] if headline else None,
        "status": headline["status"] if headline and headline["rows"] else INSUFFICIENT_DATA,
        "reason": (
            headline["reason"]
            if headline and headline["rows"]
            else f"no predictions of {spec.model.name} logged on {day}"
        ),
        "versions": results,
        "drift_detected": any(r["drift_detected"] for r in results.values()),
        "live_accuracy_low": any(r["live_accuracy_low"] for r in results.values()),
        "report_folder": folder,
        "summary_uri": f"{folder}/{SUMMARY_FILENAME}",
    }
    return report


def write_summary(report: dict[str, Any]) -> None:
    """Save the report as ``drift_report.json`` in the day's report folder."""
    _write_bytes(report["summary_uri"], json.dumps(report, indent=2, default=str).encode())


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (-1, version)


def versions_markdown(report: dict[str, Any]) -> str:
    """One row per model version: rows, status, drift share, PSI, live vs training accuracy, report link."""
    lines = [
        "| version | rows | status | drift share | drifted | PSI (pred.) | feedback | live acc. | train acc. | HTML |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---|",
    ]

    def num(value: Any, fmt: str = ".3f") -> str:
        return "–" if value is None else format(float(value), fmt)

    for r in report["versions"].values():
        link = f"[html]({r['evidently']['html_link']})" if r.get("evidently") else "–"
        lines.append(
            f"| v{r['model_version']} | {r['rows']} | {r['status']} | {num(r['drift_share'], '.2f')} | "
            f"{', '.join(r['drifted_features']) or '–'} | {num(r['prediction_psi'])} | {r['feedback_rows']} | "
            f"{num(r['live_accuracy'])} | {num(r['training_accuracy'])} | {link} |"
        )
    return "\n".join(lines)


def features_markdown(version: dict[str, Any]) -> str:
    """Per-feature method, score, threshold and decision of one judged version."""
    lines = ["| feature | method | score | threshold | drifted |", "|---|---|---:|---:|---|"]
    for f in version["features"]:
        lines.append(
            f"| {f['feature']} | {f['method']} | {f['score']:.4g} | {f['threshold']:g} | "
            f"{'**yes**' if f['drifted'] else 'no'} |"
        )
    return "\n".join(lines)

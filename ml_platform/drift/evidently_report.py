"""Evidently 0.7 ``DataDriftPreset`` report for humans, on a bounded sample.

Evidently's preset needs minutes and gigabytes at a million rows (it builds plots,
correlations and several copies per column), so the report is rendered on a
seeded random sample of at most ``max_rows`` rows of each frame. Its numbers are
therefore *indicative*: the authoritative per-column decisions at full volume
come from :func:`ml_platform.drift.engine.compute_drift`, which applies the same
methods and thresholds to all rows. Whether the report was sampled is stated in
the returned dict (``sampled``, row counts and ``note``).

Note: sampling down to 1,000 reference rows or fewer switches Evidently to its
small-data methods (K-S / chi-square / Z-test instead of Wasserstein /
Jensen-Shannon); keep ``max_rows`` well above 1,000.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_MAX_ROWS = 50_000
DEFAULT_SEED = 0


def build_evidently_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    html_path: Path,
    max_rows: int = DEFAULT_MAX_ROWS,
    *,
    seed: int = DEFAULT_SEED,
    share_threshold: float = 0.5,
) -> dict[str, Any]:
    """Run Evidently's ``DataDriftPreset`` on (a sample of) the data and save its HTML.

    Args:
        reference: Reference data.
        current: Current data.
        numeric: Columns Evidently treats as numerical.
        categorical: Columns Evidently treats as categorical.
        html_path: Where to write the HTML report (parent folders are created).
        max_rows: Rows sampled at most from each frame (seeded, without replacement).
        seed: Sampling seed.
        share_threshold: Evidently's ``drift_share``.

    Returns:
        ``{"html_path", "sampled", "seed", "max_rows", "reference_rows",
        "current_rows", "reference_rows_used", "current_rows_used", "note",
        "evidently_version", "drift_share", "drifted_count", "dataset_drift",
        "share_threshold", "columns": {name: {"method", "score", "threshold",
        "drifted"}}}`` with Evidently's own per-column methods, scores and
        decisions on the rows it saw.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    if len(reference) == 0 or len(current) == 0:
        raise ValueError("reference and current must both have rows to build a drift report")
    columns = [*numeric, *categorical]
    ref_sample = _sample(reference, columns, max_rows, seed)
    cur_sample = _sample(current, columns, max_rows, seed + 1)
    snapshot, summary = _run_preset(ref_sample, cur_sample, numeric, categorical, share_threshold)

    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))

    sampled = len(ref_sample) < len(reference) or len(cur_sample) < len(current)
    note = (
        f"Evidently ran on a seeded sample ({len(ref_sample):,} of {len(reference):,} reference rows, "
        f"{len(cur_sample):,} of {len(current):,} current rows); the full-volume decisions come from "
        "ml_platform.drift.engine.compute_drift."
        if sampled
        else "Evidently ran on all rows."
    )
    return {
        "html_path": str(html_path),
        "sampled": sampled,
        "seed": seed,
        "max_rows": max_rows,
        "reference_rows": len(reference),
        "current_rows": len(current),
        "reference_rows_used": len(ref_sample),
        "current_rows_used": len(cur_sample),
        "note": note,
        **summary,
    }


def run_evidently_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    share_threshold: float = 0.5,
) -> dict[str, Any]:
    """Run Evidently's ``DataDriftPreset`` on all given rows and return its decisions (no HTML).

    Used to cross-check :func:`~ml_platform.drift.engine.compute_drift`. Returns the
    same summary keys as :func:`build_evidently_report` (``columns``,
    ``drifted_count``, ``drift_share``, ``dataset_drift``, ...).
    """
    columns = [*numeric, *categorical]
    _, summary = _run_preset(reference[columns], current[columns], numeric, categorical, share_threshold)
    return summary


def _sample(frame: pd.DataFrame, columns: list[str], max_rows: int, seed: int) -> pd.DataFrame:
    subset = frame[columns]
    if len(subset) <= max_rows:
        return subset
    return subset.sample(n=max_rows, random_state=seed)


def _run_preset(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    share_threshold: float,
) -> tuple[Any, dict[str, Any]]:
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=list(numeric), categorical_columns=list(categorical))
    report = Report([DataDriftPreset(drift_share=share_threshold)], include_tests=True)
    with warnings.catch_warnings():
        # Evidently's plots and tests divide by zero on constant columns or unseen values; the
        # results are still well defined (inf statistic, p-value 0), so keep the log readable.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    summary = parse_snapshot(snapshot.dict())
    summary["evidently_version"] = evidently.__version__
    summary["share_threshold"] = share_threshold
    return snapshot, summary


def parse_snapshot(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Extract per-column drift from an Evidently 0.7 ``DataDriftPreset`` snapshot dict.

    Per column: ``ValueDrift`` metric (method, threshold, score) and its test status
    (``FAIL`` means drift detected). Dataset: ``DriftedColumnsCount`` (count, share)
    and its test (``share < drift_share`` passes).
    """
    columns: dict[str, dict[str, Any]] = {}
    drifted_count: int | None = None
    drift_share: float | None = None
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        kind = config.get("type", "")
        if kind.endswith(":ValueDrift"):
            columns[config["column"]] = {
                "method": config.get("method"),
                "threshold": config.get("threshold"),
                "score": float(metric["value"]),
                "drifted": None,
            }
        elif kind.endswith(":DriftedColumnsCount"):
            drifted_count = int(metric["value"]["count"])
            drift_share = float(metric["value"]["share"])
    for test in snapshot.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith(":ValueDrift") and params.get("column") in columns:
            columns[params["column"]]["drifted"] = test.get("status") == "FAIL"
    if drift_share is None or drifted_count is None:
        raise ValueError("snapshot has no DriftedColumnsCount metric; is it a DataDriftPreset report?")
    dataset_drift = any(
        test.get("status") == "FAIL"
        for test in snapshot.get("tests", [])
        if test.get("metric_config", {}).get("params", {}).get("type", "").endswith(":DriftedColumnsCount")
    )
    return {
        "columns": columns,
        "drifted_count": drifted_count,
        "drift_share": drift_share,
        "dataset_drift": dataset_drift,
    }

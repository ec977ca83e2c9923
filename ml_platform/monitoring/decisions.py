"""The judgements on a drift report, in one place: checks, alerts and the retrain sensor all use these.

A report holds one entry per model version seen in the window (see
:mod:`ml_platform.monitoring.report`). Each entry has a ``status``:

* ``judged``: enough rows and a reference snapshot; drift was computed;
* ``insufficient_data``: fewer rows than ``min_window_rows``; nothing is
  concluded (neither drift nor no drift);
* ``no_reference``: no reference snapshot for that version; nothing is concluded.

Verdict outcomes: ``pass``; ``warn`` (moderate: PSI in the warning band);
``fail`` (beyond the threshold; reported with the configured severity);
``not_judged`` (too little data or no reference); ``no_data`` (no feedback at
all, for live accuracy: nothing to judge and nothing unusual).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ml_platform.spec import DatasetSpec, SpecError

JUDGED = "judged"
INSUFFICIENT_DATA = "insufficient_data"
NO_REFERENCE = "no_reference"
SEVERITY_ENV = "DRIFT_CHECK_SEVERITY"

Outcome = Literal["pass", "warn", "fail", "not_judged", "no_data"]
_RANK: dict[str, int] = {"no_data": 0, "not_judged": 1, "pass": 2, "warn": 3, "fail": 4}


@dataclass(frozen=True)
class DriftThresholds:
    """The spec's ``drift`` section, with ``DRIFT_CHECK_SEVERITY`` overriding the severity."""

    drift_share_threshold: float
    psi_warn: float
    psi_alert: float
    min_window_rows: int
    min_live_accuracy: float
    severity: Literal["WARN", "ERROR"]

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> DriftThresholds:
        drift = spec.drift
        severity = os.environ.get(SEVERITY_ENV, "").strip().upper() or drift.severity
        if severity not in ("WARN", "ERROR"):
            raise SpecError(f"{SEVERITY_ENV} must be WARN or ERROR, got {severity!r}")
        return cls(
            drift_share_threshold=drift.drift_share_threshold,
            psi_warn=drift.psi_warn,
            psi_alert=drift.psi_alert,
            min_window_rows=drift.min_window_rows,
            min_live_accuracy=drift.min_live_accuracy,
            severity=severity,  # type: ignore[arg-type]
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DriftThresholds:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """One judgement of one model version."""

    outcome: Outcome
    description: str


def _not_judged(version: Mapping[str, Any]) -> Verdict:
    return Verdict("not_judged", f"v{version['model_version']}: {version['reason']}")


def drift_share_verdict(version: Mapping[str, Any], thresholds: DriftThresholds) -> Verdict:
    """Share of drifted features against ``drift_share_threshold`` (at or above it: drift)."""
    if version["status"] != JUDGED:
        return _not_judged(version)
    share = float(version["drift_share"])
    limit = thresholds.drift_share_threshold
    drifted = ", ".join(version.get("drifted_features") or []) or "none"
    if share >= limit:
        return Verdict(
            "fail", f"v{version['model_version']}: drift share {share:.2f} >= {limit:.2f} (drifted: {drifted})"
        )
    return Verdict("pass", f"v{version['model_version']}: drift share {share:.2f} < {limit:.2f} (drifted: {drifted})")


def prediction_psi_verdict(version: Mapping[str, Any], thresholds: DriftThresholds) -> Verdict:
    """Prediction PSI in the conventional bands: < psi_warn pass, < psi_alert warn, else fail."""
    if version["status"] != JUDGED:
        return _not_judged(version)
    psi = float(version["prediction_psi"])
    label = f"v{version['model_version']}: prediction PSI {psi:.3f}"
    if psi >= thresholds.psi_alert:
        return Verdict("fail", f"{label} >= {thresholds.psi_alert:g} (significant shift)")
    if psi >= thresholds.psi_warn:
        return Verdict("warn", f"{label} >= {thresholds.psi_warn:g} (moderate shift)")
    return Verdict("pass", f"{label} < {thresholds.psi_warn:g}")


def live_accuracy_verdict(version: Mapping[str, Any], thresholds: DriftThresholds) -> Verdict:
    """Live accuracy (feedback correct / feedback rows) against ``min_live_accuracy``.

    Judged from ``min_window_rows`` feedback rows; no feedback at all is ``no_data``.
    """
    rows = int(version.get("feedback_rows") or 0)
    name = f"v{version['model_version']}"
    if rows == 0:
        return Verdict("no_data", f"{name}: no feedback")
    if rows < thresholds.min_window_rows:
        return Verdict(
            "not_judged",
            f"{name}: too little feedback to judge: {rows} rows < min_window_rows {thresholds.min_window_rows}",
        )
    live = float(version["live_accuracy"])
    training = version.get("training_accuracy")
    versus = f" (training {float(training):.3f})" if training is not None else ""
    if live < thresholds.min_live_accuracy:
        return Verdict("fail", f"{name}: live accuracy {live:.3f} < {thresholds.min_live_accuracy:.2f}{versus}")
    return Verdict("pass", f"{name}: live accuracy {live:.3f} >= {thresholds.min_live_accuracy:.2f}{versus}")


def rank(outcome: Outcome) -> int:
    """Order of outcomes from least to most severe: no_data, not_judged, pass, warn, fail."""
    return _RANK[outcome]


def overall(verdicts: list[Verdict]) -> Outcome:
    """The report-level outcome: the worst judged outcome; ``not_judged`` only when nothing was judged."""
    if not verdicts:
        return "not_judged"
    return max(verdicts, key=lambda v: _RANK[v.outcome]).outcome


def drift_detected(version: Mapping[str, Any], thresholds: DriftThresholds) -> bool:
    """Drift for alerting and retraining: the feature drift share or the prediction PSI is beyond its threshold."""
    return version["status"] == JUDGED and (
        drift_share_verdict(version, thresholds).outcome == "fail"
        or prediction_psi_verdict(version, thresholds).outcome == "fail"
    )


def live_accuracy_low(version: Mapping[str, Any], thresholds: DriftThresholds) -> bool:
    """Live accuracy judged and below ``min_live_accuracy``."""
    return live_accuracy_verdict(version, thresholds).outcome == "fail"

"""Data drift: a fast engine with Evidently 0.7 ``DataDriftPreset`` semantics, PSI, and Evidently HTML reports.

``compute_drift`` gives the authoritative per-column decisions at any volume;
``build_evidently_report`` renders Evidently's own report on a bounded sample for
humans; ``population_stability_index`` / ``psi_categorical`` score prediction and
feature shifts on the conventional PSI scale.
"""

from ml_platform.drift.engine import DriftResult, FeatureDrift, compute_drift
from ml_platform.drift.psi import population_stability_index, psi_band, psi_categorical

__all__ = [
    "DriftResult",
    "FeatureDrift",
    "compute_drift",
    "population_stability_index",
    "psi_band",
    "psi_categorical",
]

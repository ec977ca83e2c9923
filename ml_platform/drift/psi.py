"""Population Stability Index (PSI) for numeric values and for labels.

``PSI = sum_i (c_i - r_i) * ln(c_i / r_i)`` over bins ``i``, where ``r_i`` and
``c_i`` are the shares of reference and current values in bin ``i``. PSI is
symmetric in the two samples, 0 for identical binned distributions, and has
conventional bands:

* ``PSI < 0.1``: no significant change (``"stable"``);
* ``0.1 <= PSI < 0.25``: moderate change, worth watching (``"moderate"``);
* ``PSI >= 0.25``: significant change, act on it (``"significant"``).

Empty bins: a share of exactly 0 would make the logarithm infinite, so every
share is clipped from below at ``epsilon`` (default ``1e-4``, i.e. 0.01 %) before
the sum; shares are not renormalised afterwards. A category or bin present in
only one sample therefore contributes about ``share * ln(share / 1e-4)``, e.g.
0.05 * ln(500) = 0.31 for a new label holding 5 % of the current data.

Numeric binning: ``bins`` quantile bins of the *reference* (deciles by default),
so each bin holds about the same share of reference values; the outer bins are
open-ended, so current values beyond the reference range land in the first or
last bin. Bin edges that coincide (heavily repeated values) are merged, so a
column with few distinct values gets fewer bins. NaN and +/-inf are ignored.

This module is independent of the Evidently-compatible engine: Evidently's own
``psi`` stattest (not used by ``DataDriftPreset`` defaults) bins differently.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Literal

import numpy as np
import pandas as pd

PSI_MODERATE = 0.1
"""PSI from which the change is moderate."""
PSI_SIGNIFICANT = 0.25
"""PSI from which the change is significant."""
DEFAULT_EPSILON = 1e-4
"""Lower clip of bin shares, so empty bins contribute a finite amount."""

PsiBand = Literal["stable", "moderate", "significant"]


def population_stability_index(
    reference: Iterable[float] | np.ndarray | pd.Series,
    current: Iterable[float] | np.ndarray | pd.Series,
    bins: int = 10,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> float:
    """PSI of a numeric variable over quantile bins of the reference.

    Args:
        reference: Reference values (e.g. training-time predictions or a feature).
        current: Current values.
        bins: Number of reference quantile bins (at least 2).
        epsilon: Lower clip of bin shares (see module docstring).

    Returns:
        The PSI, >= 0.

    Raises:
        ValueError: if either sample has no finite value, or ``bins < 2``.
    """
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    ref = _finite(reference, "reference")
    cur = _finite(current, "current")
    quantiles = np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges = np.unique(quantiles)  # inner edges; outer bins are open-ended
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    return _psi(ref_share, cur_share, epsilon)


def psi_categorical(
    reference_labels: Iterable[Hashable] | np.ndarray | pd.Series,
    current_labels: Iterable[Hashable] | np.ndarray | pd.Series,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> float:
    """PSI of a categorical variable (e.g. predicted class labels), one bin per label.

    Labels seen in only one sample get share 0 in the other, clipped at ``epsilon``.
    Missing labels (NaN/None) are ignored.

    Raises:
        ValueError: if either sample has no non-missing label.
    """
    ref_counts = _label_counts(reference_labels, "reference")
    cur_counts = _label_counts(current_labels, "current")
    labels = list(dict.fromkeys([*ref_counts.index.tolist(), *cur_counts.index.tolist()]))
    ref = ref_counts.reindex(labels, fill_value=0).to_numpy(dtype=np.float64)
    cur = cur_counts.reindex(labels, fill_value=0).to_numpy(dtype=np.float64)
    return _psi(ref / ref.sum(), cur / cur.sum(), epsilon)


def psi_band(value: float) -> PsiBand:
    """Conventional reading of a PSI value: ``stable`` (< 0.1), ``moderate`` (< 0.25), ``significant``."""
    if value < PSI_MODERATE:
        return "stable"
    if value < PSI_SIGNIFICANT:
        return "moderate"
    return "significant"


def _psi(ref_share: np.ndarray, cur_share: np.ndarray, epsilon: float) -> float:
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    r = np.maximum(ref_share, epsilon)
    c = np.maximum(cur_share, epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def _finite(values: Iterable[float] | np.ndarray | pd.Series, role: str) -> np.ndarray:
    if isinstance(values, pd.Series):
        array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    elif isinstance(values, np.ndarray):
        array = values.astype(np.float64, copy=False)
    else:
        array = np.asarray(list(values), dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        raise ValueError(f"the {role} sample has no finite value; PSI cannot be computed")
    return array


def _label_counts(labels: Iterable[Hashable] | np.ndarray | pd.Series, role: str) -> pd.Series:
    if isinstance(labels, pd.Series):
        series = labels
    elif isinstance(labels, np.ndarray):
        series = pd.Series(labels)
    else:
        series = pd.Series(list(labels), dtype=object)
    counts = series.value_counts(dropna=True, sort=False)
    counts = counts[counts > 0]
    if counts.empty:
        raise ValueError(f"the {role} sample has no non-missing label; PSI cannot be computed")
    counts.index = counts.index.astype(object)
    return counts

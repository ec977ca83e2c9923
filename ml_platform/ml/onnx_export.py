"""Convert a fitted scikit-learn model to ONNX and prove it predicts identically.

The serving fast path runs the ONNX graph with onnxruntime (~400x faster than
sklearn for one row of a 100-tree forest). A conversion is only kept when its
predicted labels equal sklearn's on every row of the data it is checked on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ONNX_FILENAME = "model.onnx"


@dataclass
class OnnxExport:
    """Outcome of an ONNX conversion attempt."""

    path: Path | None
    verified: bool
    rows_checked: int
    mismatches: int
    reason: str = ""


def convert_to_onnx(model: Any, spec: DatasetSpec, check_frame: pd.DataFrame, out_dir: Path) -> OnnxExport:
    """Convert ``model`` (numeric features only) and verify it on ``check_frame``.

    Returns an export with ``path=None`` and a reason when the estimator or the
    feature types are not supported, or when predictions differ.
    """
    if spec.categorical_features:
        return OnnxExport(None, False, 0, 0, "categorical features are served by sklearn")
    try:
        import numpy as np
        import onnxruntime as ort
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as exc:  # pragma: no cover - both are project dependencies
        return OnnxExport(None, False, 0, 0, f"onnx tooling unavailable: {exc}")

    inputs = [("input", FloatTensorType([None, len(spec.feature_names)]))]
    try:
        onnx_model = to_onnx(model, initial_types=inputs, options={"zipmap": False}, target_opset=17)
    except Exception as exc:  # skl2onnx raises many types for unsupported estimators
        log.warning("ONNX conversion not supported for %s: %s", type(model).__name__, exc)
        return OnnxExport(None, False, 0, 0, f"conversion unsupported: {type(exc).__name__}: {exc}"[:300])

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_FILENAME
    path.write_bytes(onnx_model.SerializeToString())

    matrix = check_frame[spec.feature_names].to_numpy(dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_labels = session.run(None, {"input": matrix})[0]
    sklearn_labels = model.predict(check_frame[spec.feature_names])
    mismatches = int(np.sum(np.asarray(onnx_labels).astype(str) != np.asarray(sklearn_labels).astype(str)))
    if mismatches:
        path.unlink()
        return OnnxExport(None, False, len(matrix), mismatches, f"{mismatches} of {len(matrix)} predictions differ")
    return OnnxExport(path, True, len(matrix), 0)

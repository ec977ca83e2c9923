"""Arrow schemas of the prediction log, derived from the dataset spec, and value coercion.

Serving writes one line per ``/predict`` request (rows as columns) and one line
per labelled row of feedback; see docs/serving.md. Readers explode requests
into :func:`prediction_schema` rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml_platform.ml.training import class_label
from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pyarrow as pa

# "model" is the platform model (iris, wine); "model_name" the registered MLflow model. Lines written before
# logs were namespaced by model have no "model" (null when read).
ROW_KEYS = ("model", "request_id", "row", "timestamp", "model_name", "model_version", "track")
REQUEST_KEYS = ("model", "request_id", "timestamp", "model_name", "model_version", "track")


def class_labels(spec: DatasetSpec) -> list[str]:
    """Readable class names in spec order (what serving uses as probability keys)."""
    return [class_label(spec, c) for c in spec.target.classes]


def class_type(spec: DatasetSpec) -> pa.DataType:
    """The Arrow type of the spec's class values."""
    import pyarrow as pa

    classes = list(spec.target.classes)
    if all(isinstance(c, bool) for c in classes):
        return pa.bool_()
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return pa.int64()
    if all(isinstance(c, int | float) and not isinstance(c, bool) for c in classes):
        return pa.float64()
    return pa.string()


def feature_type(numeric: bool) -> pa.DataType:
    import pyarrow as pa

    return pa.float64() if numeric else pa.string()


def request_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of a prediction line: one request, its rows as columns."""
    import pyarrow as pa

    features = pa.struct([pa.field(f.name, pa.list_(feature_type(f.is_numeric))) for f in spec.features])
    probabilities = pa.struct([pa.field(label, pa.list_(pa.float64())) for label in class_labels(spec)])
    return pa.schema(
        [
            ("event", pa.string()),
            *[(key, pa.string()) for key in REQUEST_KEYS],
            ("rows", pa.int64()),
            ("features", features),
            ("predictions", pa.list_(class_type(spec))),
            ("probabilities", probabilities),
            ("latency_ms", pa.float64()),
            ("traffic", pa.string()),  # "smoke" on the platform's own requests, absent (null) otherwise
        ]
    )


def prediction_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of the flat prediction rows a day's read yields: one row per predicted row."""
    import pyarrow as pa

    return pa.schema(
        [
            *[(key, pa.int64() if key == "row" else pa.string()) for key in ROW_KEYS],
            *[(f.name, feature_type(f.is_numeric)) for f in spec.features],
            ("prediction", class_type(spec)),
            *[(f"proba_{label}", pa.float64()) for label in class_labels(spec)],
            ("latency_ms", pa.float64()),
        ]
    )


def feedback_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of a feedback line."""
    import pyarrow as pa

    cls = class_type(spec)
    return pa.schema(
        [
            ("event", pa.string()),
            ("model", pa.string()),
            ("request_id", pa.string()),
            ("row", pa.int64()),
            ("timestamp", pa.string()),
            ("label", cls),
            ("prediction", cls),
            ("correct", pa.bool_()),
            ("model_version", pa.string()),
            ("track", pa.string()),
        ]
    )


def coerce(value: Any, kind: pa.DataType) -> Any:
    """Best-effort conversion of one JSON value to an Arrow field type (None when impossible)."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_struct(kind):
        if not isinstance(value, dict):
            return None
        return {f.name: coerce(value.get(f.name), f.type) for f in kind}
    try:
        if pa.types.is_string(kind):
            return value if isinstance(value, str) else str(value)
        if pa.types.is_boolean(kind):
            return value if isinstance(value, bool) else None
        if pa.types.is_integer(kind):
            return int(value) if not isinstance(value, bool) and float(value) == int(value) else None
        if pa.types.is_floating(kind):
            return None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value

"""Prediction-log requests to prediction rows: whole files in Arrow, or one line at a time.

Serving logs one line per ``/predict`` request with its rows as columns
(``rows``, ``features.<name>[]``, ``predictions[]``, ``probabilities.<label>[]``).
Drift and accuracy work on rows, so readers explode each request into
``rows`` rows numbered ``row`` = 0..rows-1, which is the key feedback joins on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml_platform.monitoring.log_schema import REQUEST_KEYS, ROW_KEYS, class_labels, coerce
from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pyarrow as pa

REQUIRED_ROW_FIELDS = ("request_id", "row", "model_version")


def explode_requests(table: pa.Table, spec: DatasetSpec, schema: pa.Schema) -> tuple[pa.Table, int]:
    """The rows of the prediction requests in ``table``, and how many request lines were unusable.

    ``table`` is read with :func:`~ml_platform.monitoring.log_schema.request_schema`;
    the result has ``schema`` (:func:`~ml_platform.monitoring.log_schema.prediction_schema`).
    Lines of other events are left out without counting. A request is unusable
    when it lacks its id, model version or row count, or when a column's length
    differs from its row count; a request without probabilities gives null
    probabilities.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.combine_chunks()
    table = table.filter(pc.fill_null(pc.equal(table.column("event"), "prediction"), True))
    rows = table.column("rows")

    def has_rows(column: Any) -> Any:
        return pc.fill_null(pc.equal(pc.list_value_length(column), rows), False)

    usable = pc.and_(pc.is_valid(table.column("request_id")), pc.is_valid(table.column("model_version")))
    usable = pc.and_(usable, pc.fill_null(pc.greater(rows, 0), False))
    features, probabilities = table.column("features"), table.column("probabilities")
    for name in spec.feature_names:
        usable = pc.and_(usable, has_rows(pc.struct_field(features, name)))
    usable = pc.and_(usable, has_rows(table.column("predictions")))
    labels = class_labels(spec)
    for label in labels:
        column = pc.struct_field(probabilities, label)
        usable = pc.and_(usable, pc.or_(pc.is_null(column), has_rows(column)))
    skipped = len(table) - pc.sum(usable).as_py() if len(table) else 0
    if skipped:
        table = table.filter(usable)
        features, probabilities = table.column("features"), table.column("probabilities")

    lengths = table.column("rows").to_numpy()
    total = int(lengths.sum())
    parent = pa.array(np.repeat(np.arange(len(table)), lengths))
    starts = np.cumsum(lengths) - lengths
    columns: dict[str, Any] = {key: table.column(key).take(parent) for key in REQUEST_KEYS}
    columns["row"] = pa.array(np.arange(total) - np.repeat(starts, lengths))
    for name in spec.feature_names:
        columns[name] = pc.list_flatten(pc.struct_field(features, name))
    columns["prediction"] = pc.list_flatten(table.column("predictions"))
    for label in labels:
        column = pc.struct_field(probabilities, label)
        present = pc.is_valid(column).to_numpy(zero_copy_only=False)
        if present.all():
            columns[f"proba_{label}"] = pc.list_flatten(column)
        else:  # requests without probabilities: nulls of the right length, not missing rows
            values = np.full(total, np.nan)
            values[np.repeat(present, lengths)] = pc.list_flatten(column.filter(present)).to_numpy(zero_copy_only=False)
            columns[f"proba_{label}"] = pa.array(values, from_pandas=True)
    columns["latency_ms"] = table.column("latency_ms").take(parent)
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema), skipped


def _is_column(value: Any, rows: int) -> bool:
    return isinstance(value, list) and len(value) == rows


def _request_rows(obj: dict[str, Any], spec: DatasetSpec) -> list[dict[str, Any]] | None:
    rows = obj.get("rows")
    features, probabilities = obj.get("features"), obj.get("probabilities")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1 or not isinstance(features, dict):
        return None
    columns: dict[str, list[Any]] = {}
    for name in spec.feature_names:
        columns[name] = features.get(name)  # type: ignore[assignment]
    columns["prediction"] = obj.get("predictions")  # type: ignore[assignment]
    for label in class_labels(spec):
        values = probabilities.get(label) if isinstance(probabilities, dict) else None
        columns[f"proba_{label}"] = [None] * rows if values is None else values
    if not all(_is_column(values, rows) for values in columns.values()):
        return None
    base = {key: obj.get(key) for key in REQUEST_KEYS} | {"latency_ms": obj.get("latency_ms")}
    return [base | {"row": i} | {key: values[i] for key, values in columns.items()} for i in range(rows)]


def _legacy_row(obj: dict[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    """A line of the earlier one-line-per-row format."""
    features = obj.get("features") if isinstance(obj.get("features"), dict) else {}
    probabilities = obj.get("probabilities") if isinstance(obj.get("probabilities"), dict) else {}
    return (
        {key: obj.get(key) for key in ROW_KEYS}
        | {name: features.get(name) for name in spec.feature_names}  # type: ignore[union-attr]
        | {"prediction": obj.get("prediction"), "latency_ms": obj.get("latency_ms")}
        | {f"proba_{label}": probabilities.get(label) for label in class_labels(spec)}  # type: ignore[union-attr]
    )


def rows_from_line(obj: Any, spec: DatasetSpec, schema: pa.Schema) -> list[dict[str, Any]] | None:
    """The prediction rows of one parsed line ([] for other events, None when unusable).

    Reads request lines and lines of the earlier one-line-per-row format.
    """
    if not isinstance(obj, dict):
        return None
    if obj.get("event") not in (None, "prediction"):
        return []
    candidates = _request_rows(obj, spec) if "rows" in obj or "predictions" in obj else [_legacy_row(obj, spec)]
    if candidates is None:
        return None
    records = [{f.name: coerce(record.get(f.name), f.type) for f in schema} for record in candidates]
    if any(record[name] is None for record in records for name in REQUIRED_ROW_FIELDS):
        return None
    return records

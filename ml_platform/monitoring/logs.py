"""Read one day of the serving prediction log and join it with the day's feedback.

The log format is serving's (see docs/serving.md and :mod:`serving.predlog`)::

    <root>/date=YYYY-MM-DD/predictions-<track>-<pid>.jsonl   one JSON object per predicted row
    <root>/date=YYYY-MM-DD/feedback-<track>-<pid>.jsonl      one JSON object per labelled row

Reading a day lists only that day's ``date=YYYY-MM-DD/`` folder, so the cost of
a window does not grow with the history kept. Files are parsed with pyarrow's
JSON reader against a schema derived from the dataset spec (fast at millions
of rows); a file that does not parse that way (a malformed line, an unexpected
type) is re-read line by line, skipping and counting the lines it cannot use.
A trailing line without its newline is a write in progress and is ignored.

Feedback is joined to predictions on ``(request_id, row)``. Only the same
day's feedback is read: labels that arrive on a later day count towards that
later day's live accuracy (which is computed from feedback events, per the
model version each one names), but are not joined to the earlier predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

PREDICTION_GLOB = "predictions-*.jsonl"
FEEDBACK_GLOB = "feedback-*.jsonl"
JOIN_KEYS = ["request_id", "row"]


def class_labels(spec: DatasetSpec) -> list[str]:
    """Readable class names in spec order (what serving uses as probability keys)."""
    labels = list(spec.target.labels)
    return [labels[i] if i < len(labels) else str(c) for i, c in enumerate(spec.target.classes)]


def day_folder_name(day: str) -> str:
    return f"date={day}"


@dataclass
class ReadStats:
    """What reading one kind of log file found."""

    files: list[str] = field(default_factory=list)
    bytes_read: int = 0
    rows: int = 0
    skipped_lines: int = 0
    partial_tail_bytes: int = 0


@dataclass
class DayLog:
    """One day's predictions and feedback, as flat frames."""

    day: str
    root: str
    predictions: pd.DataFrame
    feedback: pd.DataFrame
    prediction_stats: ReadStats
    feedback_stats: ReadStats


def _class_type(spec: DatasetSpec) -> pa.DataType:
    import pyarrow as pa

    classes = list(spec.target.classes)
    if all(isinstance(c, bool) for c in classes):
        return pa.bool_()
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return pa.int64()
    if all(isinstance(c, int | float) and not isinstance(c, bool) for c in classes):
        return pa.float64()
    return pa.string()


def prediction_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of a prediction line (nested ``features`` and ``probabilities``)."""
    import pyarrow as pa

    features = pa.struct([pa.field(f.name, pa.float64() if f.is_numeric else pa.string()) for f in spec.features])
    probabilities = pa.struct([pa.field(label, pa.float64()) for label in class_labels(spec)])
    return pa.schema(
        [
            ("event", pa.string()),
            ("request_id", pa.string()),
            ("row", pa.int64()),
            ("timestamp", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("track", pa.string()),
            ("features", features),
            ("prediction", _class_type(spec)),
            ("probabilities", probabilities),
            ("latency_ms", pa.float64()),
        ]
    )


def feedback_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of a feedback line."""
    import pyarrow as pa

    cls = _class_type(spec)
    return pa.schema(
        [
            ("event", pa.string()),
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


def _complete_lines(data: bytes) -> tuple[bytes, int]:
    """The bytes up to the last newline, and how many bytes were cut (a line still being written)."""
    end = data.rfind(b"\n")
    if end < 0:
        return b"", len(data)
    return data[: end + 1], len(data) - end - 1


def _read_fast(data: bytes, schema: pa.Schema) -> pa.Table:
    import pyarrow as pa
    import pyarrow.json as pj

    return pj.read_json(
        pa.BufferReader(pa.py_buffer(data)),
        parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        read_options=pj.ReadOptions(block_size=1 << 24),
    )


def _coerce(value: Any, kind: pa.DataType) -> Any:
    """Best-effort conversion of one JSON value to an Arrow field type (None when impossible)."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_struct(kind):
        if not isinstance(value, dict):
            return None
        return {f.name: _coerce(value.get(f.name), f.type) for f in kind}
    try:
        if pa.types.is_string(kind):
            return value if isinstance(value, str) else str(value)
        if pa.types.is_boolean(kind):
            return value if isinstance(value, bool) else None
        if pa.types.is_integer(kind):
            return int(value) if not isinstance(value, bool) and float(value) == int(value) else None
        if pa.types.is_floating(kind):
            return None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None
    return value


def _read_slow(data: bytes, schema: pa.Schema, required: Sequence[str]) -> tuple[pa.Table, int]:
    """Line-by-line parse; lines that are not JSON objects or miss a required field are skipped."""
    import orjson
    import pyarrow as pa

    records, skipped = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(obj, dict) or any(obj.get(name) is None for name in required):
            skipped += 1
            continue
        records.append({f.name: _coerce(obj.get(f.name), f.type) for f in schema})
    return pa.Table.from_pylist(records, schema=schema), skipped


def _read_files(paths: list[Any], schema: pa.Schema, required: Sequence[str], stats: ReadStats) -> pa.Table:
    import pyarrow as pa
    import pyarrow.compute as pc

    tables = []
    for path in paths:
        raw = path.read_bytes()
        stats.files.append(str(path))
        stats.bytes_read += len(raw)
        data, cut = _complete_lines(raw)
        stats.partial_tail_bytes += cut
        if not data.strip():
            continue
        try:
            table = _read_fast(data, schema)
            # The fast reader fills absent fields with nulls; rows missing a key field are unusable.
            mask = None
            for name in required:
                valid = table.column(name).is_valid()
                mask = valid if mask is None else pc.and_(mask, valid)
            if mask is not None and not pc.all(mask).as_py():
                stats.skipped_lines += len(table) - pc.sum(mask).as_py()
                table = table.filter(mask)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            table, skipped = _read_slow(data, schema, required)
            stats.skipped_lines += skipped
        tables.append(table)
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def _list_files(folder: Any, pattern: str) -> list[Any]:
    if not folder.exists():
        return []
    return sorted((p for p in folder.glob(pattern) if p.is_file()), key=str)


def read_day(root: str, day: str, spec: DatasetSpec) -> DayLog:
    """Read the predictions and feedback logged on ``day`` (UTC), and nothing else.

    Args:
        root: The prediction-log folder (local path or fsspec URI).
        day: ``YYYY-MM-DD``.
        spec: The dataset spec (feature names and types, classes).
    """
    from upath import UPath

    folder = UPath(root) / day_folder_name(day)
    pred_stats, fb_stats = ReadStats(), ReadStats()
    predictions = _read_files(
        _list_files(folder, PREDICTION_GLOB),
        prediction_schema(spec),
        ["request_id", "row", "model_version"],
        pred_stats,
    )
    feedback = _read_files(
        _list_files(folder, FEEDBACK_GLOB), feedback_schema(spec), ["request_id", "row", "model_version"], fb_stats
    )
    pred_frame = _flatten_predictions(predictions, spec)
    fb_frame = feedback.to_pandas()
    if "event" in fb_frame:
        fb_frame = fb_frame[fb_frame["event"].isna() | (fb_frame["event"] == "feedback")]
    pred_stats.rows, fb_stats.rows = len(pred_frame), len(fb_frame)
    return DayLog(day, str(root), pred_frame, fb_frame.reset_index(drop=True), pred_stats, fb_stats)


def _flatten_predictions(table: pa.Table, spec: DatasetSpec) -> pd.DataFrame:
    """Prediction rows with one column per feature and ``proba_<label>`` per class.

    Done in Arrow before converting: other events are filtered out, and the
    low-cardinality strings (model name and version, track) become pandas
    categoricals, which keeps the conversion fast at millions of rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows:
        event = table.column("event")
        keep = pc.or_kleene(pc.is_null(event), pc.equal(event, "prediction"))
        if not pc.all(keep).as_py():
            table = table.filter(keep)
    flat = table.flatten()
    sources = {name: name for name in ("request_id", "row", "timestamp", "model_name", "model_version", "track")}
    sources |= {name: f"features.{name}" for name in spec.feature_names}
    sources["prediction"] = "prediction"
    sources |= {f"proba_{label}": f"probabilities.{label}" for label in class_labels(spec)}
    sources["latency_ms"] = "latency_ms"
    columns = []
    for name, source in sources.items():
        column = flat.column(source)
        if name in ("model_name", "model_version", "track"):
            column = column.dictionary_encode()
        columns.append(column)
    frame = pa.table(columns, names=list(sources)).to_pandas()
    for name in spec.categorical_features:
        frame[name] = frame[name].astype(object)
    return frame


@dataclass
class Window:
    """A day's predictions joined with feedback, and counts for the asset's metadata."""

    frame: pd.DataFrame
    feedback: pd.DataFrame
    other_model_rows: int
    feedback_joined: int
    feedback_unmatched: int


def join_window(day_log: DayLog, spec: DatasetSpec) -> Window:
    """Keep the spec's model, attach each row's feedback (``label``, ``correct``), count what matched.

    Feedback is de-duplicated on ``(request_id, row)`` keeping the last event;
    when a request id was reused, feedback attaches to its last prediction.
    """
    import pandas as pd

    predictions = day_log.predictions
    mine = predictions["model_name"].isna() | (predictions["model_name"] == spec.model.name)
    other_model_rows = int((~mine).sum())
    predictions = predictions[mine]
    feedback = day_log.feedback.drop_duplicates(JOIN_KEYS, keep="last")
    labels = feedback[[*JOIN_KEYS, "label", "correct", "timestamp"]].rename(columns={"timestamp": "feedback_timestamp"})
    frame = predictions.merge(labels, on=JOIN_KEYS, how="left", validate="many_to_one")
    superseded = frame.duplicated(JOIN_KEYS, keep="last")
    if superseded.any():
        frame.loc[superseded, ["label", "correct", "feedback_timestamp"]] = None
    frame["correct"] = frame["correct"].astype("boolean")
    if all(isinstance(c, int) and not isinstance(c, bool) for c in spec.target.classes):
        frame["label"] = frame["label"].astype("Int64")
    joined = int(frame["correct"].notna().sum())
    keys = pd.MultiIndex.from_frame(predictions[JOIN_KEYS])
    unmatched = int((~pd.MultiIndex.from_frame(feedback[JOIN_KEYS]).isin(keys)).sum()) if len(feedback) else 0
    return Window(
        frame=frame.reset_index(drop=True),
        feedback=feedback.reset_index(drop=True),
        other_model_rows=other_model_rows,
        feedback_joined=joined,
        feedback_unmatched=unmatched,
    )


def rows_by_version(frame: pd.DataFrame) -> dict[str, int]:
    """Prediction rows per model version, most rows first."""
    counts = frame["model_version"].astype(str).value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def feedback_by_version(feedback: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{version: (correct, total)}`` over the day's feedback events (de-duplicated)."""
    if feedback.empty:
        return {}
    usable = feedback[feedback["correct"].notna()]
    grouped = usable.groupby(usable["model_version"].astype(str))["correct"]
    return {str(v): (int(g.astype(bool).sum()), len(g)) for v, g in grouped}

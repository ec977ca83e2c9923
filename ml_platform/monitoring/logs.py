"""Read one day of one model's serving prediction log and join it with the day's feedback.

The log format is serving's (see docs/serving.md and :mod:`serving.predlog`)::

    <root>/<model>/date=YYYY-MM-DD/predictions-<track>-<pid>.jsonl   one JSON object per request, rows as columns
    <root>/<model>/date=YYYY-MM-DD/feedback-<track>-<pid>.jsonl      one JSON object per labelled row

Reading is namespaced by model twice: only the model's own folder is listed,
and every line names its platform model (``"model": "iris"``), so a line of
another model that ends up in the folder is ignored and counted
(``other_model_lines``), never mixed in. Lines written before logs carried a
model (no ``model`` field) are accepted only for the default model and counted
(``legacy_lines``); for any other model they are ignored and counted
(``unattributed_lines``). The default model also reads the single-model
layout of earlier versions, ``<root>/date=YYYY-MM-DD/``, so an existing
platform home keeps its history.

Reading a day lists only that day's ``date=YYYY-MM-DD/`` folder, so the cost of
a window does not grow with the history kept. Files are parsed with pyarrow's
JSON reader against a schema derived from the dataset spec (fast at millions
of rows) and prediction requests are exploded into one row per predicted row
in Arrow; a file that does not parse that way (a malformed line, an unexpected
type) is re-read line by line, skipping and counting the lines it cannot use.
That slow path also reads the one-line-per-row format written before serving
switched to one line per request. A trailing line without its newline is a
write in progress and is ignored.

The platform's own smoke-test requests (``"traffic": "smoke"``, see
:mod:`ml_platform.monitoring.traffic`) are not production traffic: they are left
out by default and counted (``smoke_lines``), so they never reach a production
window, drift or live accuracy.

Feedback is joined to predictions on ``(request_id, row)``. Only the same
day's feedback is read: labels that arrive on a later day count towards that
later day's live accuracy (which is computed from feedback events, per the
model version each one names), but are not joined to the earlier predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ml_platform.monitoring.log_schema import (
    coerce,
    feedback_schema,
    prediction_schema,
    request_schema,
)
from ml_platform.monitoring.prediction_requests import explode_requests, rows_from_line
from ml_platform.monitoring.traffic import SMOKE, TRAFFIC_FIELD
from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

PREDICTION_GLOB = "predictions-*.jsonl"
FEEDBACK_GLOB = "feedback-*.jsonl"
JOIN_KEYS = ["request_id", "row"]


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
    other_model_lines: int = 0  # lines naming another model: ignored
    legacy_lines: int = 0  # lines without a model (older format), accepted: this is the default model
    unattributed_lines: int = 0  # lines without a model, ignored: this is not the default model
    smoke_lines: int = 0  # the platform's own smoke-test requests: left out unless asked for


@dataclass
class DayLog:
    """One model's predictions and feedback of one day, as flat frames."""

    day: str
    root: str
    model: str
    folder: str  # the model's folder of that day
    predictions: pd.DataFrame
    feedback: pd.DataFrame
    prediction_stats: ReadStats
    feedback_stats: ReadStats


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


ParseFn = Callable[[bytes], tuple["pa.Table", int]]  # a whole file -> (table, lines skipped)
RecordsFn = Callable[[Any], "list[dict[str, Any]] | None"]  # one parsed line -> its records, None when unusable


class _ModelGate:
    """Keeps the lines of one model (and model-less legacy lines only when it is the default), counting the rest."""

    def __init__(self, model: str, accept_legacy: bool, stats: ReadStats, include_smoke: bool = True) -> None:
        self.model = model
        self.accept_legacy = accept_legacy
        self.stats = stats
        self.include_smoke = include_smoke

    def production(self, table: pa.Table) -> pa.Table:
        """``table`` without the platform's smoke-test lines (counted), unless they were asked for."""
        import pyarrow.compute as pc

        if self.include_smoke or TRAFFIC_FIELD not in table.column_names or len(table) == 0:
            return table
        smoke = pc.fill_null(pc.equal(table.column(TRAFFIC_FIELD), SMOKE), False)
        count = int(pc.sum(smoke).as_py() or 0)
        if not count:
            return table
        self.stats.smoke_lines += count
        return table.filter(pc.invert(smoke))

    def _count(self, other: int, legacy: int) -> None:
        self.stats.other_model_lines += other
        if self.accept_legacy:
            self.stats.legacy_lines += legacy
        else:
            self.stats.unattributed_lines += legacy

    def table(self, table: pa.Table) -> pa.Table:
        """The rows of ``table`` (one per line) this model reads."""
        import pyarrow.compute as pc

        column = table.column("model")
        unnamed = pc.is_null(column)
        mine = pc.fill_null(pc.equal(column, self.model), False)
        legacy = int(pc.sum(unnamed).as_py() or 0)
        other = len(table) - legacy - int(pc.sum(mine).as_py() or 0)
        self._count(other, legacy)
        if other == 0 and (legacy == 0 or self.accept_legacy):
            return table
        return table.filter(pc.or_(mine, unnamed) if self.accept_legacy else mine)

    def line(self, obj: Any) -> bool:
        """True when this parsed line is the model's (non-objects pass: the parser refuses them itself)."""
        if not isinstance(obj, dict):
            return True
        named = obj.get("model")
        if named is None:
            self._count(0, 1)
            if not self.accept_legacy:
                return False
        elif named != self.model:
            self._count(1, 0)
            return False
        if not self.include_smoke and obj.get(TRAFFIC_FIELD) == SMOKE:
            self.stats.smoke_lines += 1
            return False
        return True


def _read_lines(data: bytes, schema: pa.Schema, records_of: RecordsFn) -> tuple[pa.Table, int]:
    """Line-by-line parse; a line that is not JSON, or whose ``records_of`` is None, is skipped and counted."""
    import orjson
    import pyarrow as pa

    records: list[dict[str, Any]] = []
    skipped = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            found = records_of(orjson.loads(line))
        except orjson.JSONDecodeError:
            found = None
        if found is None:
            skipped += 1
        else:
            records += found
    return pa.Table.from_pylist(records, schema=schema), skipped


def _feedback_record(obj: Any, schema: pa.Schema, required: Sequence[str]) -> list[dict[str, Any]] | None:
    """A feedback line as one record, or None when it is not an object or misses a required field."""
    if not isinstance(obj, dict) or any(obj.get(name) is None for name in required):
        return None
    return [{f.name: coerce(obj.get(f.name), f.type) for f in schema}]


def _read_feedback_fast(table: pa.Table, required: Sequence[str]) -> tuple[pa.Table, int]:
    """Feedback lines parsed by pyarrow; rows missing a key field (absent fields come back null) are unusable."""
    import pyarrow.compute as pc

    if len(table) == 0:  # e.g. every line was another model's
        return table, 0
    mask = None
    for name in required:
        valid = table.column(name).is_valid()
        mask = valid if mask is None else pc.and_(mask, valid)
    if mask is None or pc.all(mask).as_py():
        return table, 0
    return table.filter(mask), len(table) - pc.sum(mask).as_py()


def _read_files(
    paths: list[Any], fast: ParseFn, records_of: RecordsFn, schema: pa.Schema, stats: ReadStats
) -> pa.Table:
    """Every file parsed with ``fast``, or line by line with ``records_of`` when ``fast`` cannot parse it."""
    import pyarrow as pa

    tables = []
    for path in paths:
        raw = path.read_bytes()
        stats.files.append(str(path))
        stats.bytes_read += len(raw)
        data, cut = _complete_lines(raw)
        stats.partial_tail_bytes += cut
        if not data.strip():
            continue
        counted = (stats.other_model_lines, stats.legacy_lines, stats.unattributed_lines, stats.smoke_lines)
        try:
            table, skipped = fast(data)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # counted again below
            stats.other_model_lines, stats.legacy_lines, stats.unattributed_lines, stats.smoke_lines = counted
            table, skipped = _read_lines(data, schema, records_of)
        stats.skipped_lines += skipped
        tables.append(table)
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def _list_files(folder: Any, pattern: str) -> list[Any]:
    if not folder.exists():
        return []
    return sorted((p for p in folder.glob(pattern) if p.is_file()), key=str)


def _day_files(root: str, model: str, day: str, pattern: str, legacy_layout: bool) -> list[Any]:
    """The model's files of the day; for the default model also those of the single-model layout."""
    from upath import UPath

    files = _list_files(UPath(model_folder(root, model, day)), pattern)
    if legacy_layout:
        files += _list_files(UPath(root) / day_folder_name(day), pattern)
    return files


def model_folder(root: str, model: str, day: str) -> str:
    """``<root>/<model>/date=<day>``: one model's log folder of one day."""
    from ml_platform.monitoring.paths import per_model

    return f"{per_model(root, model)}/{day_folder_name(day)}"


def read_day(
    root: str,
    day: str,
    spec: DatasetSpec,
    *,
    model: str,
    accept_legacy: bool | None = None,
    include_smoke: bool = False,
) -> DayLog:
    """Read one model's predictions and feedback logged on ``day`` (UTC), and nothing else.

    Args:
        root: The folder of every model's log (local path or fsspec URI): ``<root>/<model>/date=<day>/``.
        day: ``YYYY-MM-DD``.
        spec: The model's dataset spec (feature names and types, classes).
        model: The platform model name (``iris``): its folder is read, and lines naming another model are
            ignored and counted.
        accept_legacy: Whether lines without a model field (and the single-model layout ``<root>/date=<day>/``)
            count as this model's; default: only for the catalog's default model.
        include_smoke: Whether the platform's own smoke-test requests (``"traffic": "smoke"``) are kept;
            by default they are left out (production windows and drift) and counted in ``smoke_lines``.
    """
    if accept_legacy is None:
        from ml_platform.catalog import default_model_name

        accept_legacy = model == default_model_name()
    pred_stats, fb_stats = ReadStats(), ReadStats()
    pred_gate = _ModelGate(model, accept_legacy, pred_stats, include_smoke)
    fb_gate = _ModelGate(model, accept_legacy, fb_stats)
    requests, rows = request_schema(spec), prediction_schema(spec)
    predictions = _read_files(
        _day_files(root, model, day, PREDICTION_GLOB, accept_legacy),
        lambda data: explode_requests(pred_gate.production(pred_gate.table(_read_fast(data, requests))), spec, rows),
        lambda obj: rows_from_line(obj, spec, rows) if pred_gate.line(obj) else [],
        rows,
        pred_stats,
    )
    feedback_rows = feedback_schema(spec)
    required = ["request_id", "row", "model_version"]
    feedback = _read_files(
        _day_files(root, model, day, FEEDBACK_GLOB, accept_legacy),
        lambda data: _read_feedback_fast(fb_gate.table(_read_fast(data, feedback_rows)), required),
        lambda obj: _feedback_record(obj, feedback_rows, required) if fb_gate.line(obj) else [],
        feedback_rows,
        fb_stats,
    )
    pred_frame = _predictions_frame(predictions, spec)
    fb_frame = feedback.to_pandas()
    if "event" in fb_frame:
        fb_frame = fb_frame[fb_frame["event"].isna() | (fb_frame["event"] == "feedback")]
    pred_stats.rows, fb_stats.rows = len(pred_frame), len(fb_frame)
    return DayLog(
        day,
        str(root),
        model,
        model_folder(root, model, day),
        pred_frame,
        fb_frame.reset_index(drop=True),
        pred_stats,
        fb_stats,
    )


def _predictions_frame(table: pa.Table, spec: DatasetSpec) -> pd.DataFrame:
    """Prediction rows as pandas; model name and version and track become categoricals (fast at millions of rows)."""
    import pyarrow as pa

    columns = [
        column.dictionary_encode() if name in ("model", "model_name", "model_version", "track") else column
        for name, column in zip(table.column_names, table.columns, strict=True)
    ]
    frame = pa.table(columns, names=table.column_names).to_pandas()
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

"""One plain sentence per problem a landed file has, as a reviewer would say it.

The GX results carry the evidence; these sentences say what is wrong in the
data's own terms ("missing column X", "non-numeric value 'abc' in column Y at
row 6"). Rows are data rows counted from 1 after the header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ml_platform.spec import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

    from ml_platform.validation.expectations import ExpectationOutcome


def _more(count: int, where: str) -> str:
    return f" ({count - 1} more in {where})" if count > 1 else ""


def _value(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def class_label(spec: DatasetSpec, value: Any) -> str:
    """The class's label from the spec (``setosa``), or the raw value when it has none."""
    for index, known in enumerate(spec.target.classes):
        try:
            same = known == value or (isinstance(value, float) and float(known) == value)
        except (TypeError, ValueError):
            same = False
        if same:
            return spec.target.labels[index] if index < len(spec.target.labels) else str(known)
    return _value(value)


def class_count_sentence(spec: DatasetSpec, present: list[Any]) -> str:
    """``only one class (setosa); at least 2 required``."""
    needed = spec.validation.min_classes
    labels = ", ".join(class_label(spec, v) for v in present)
    if not present:
        return f"no class labels in column {spec.target.name}; at least {needed} classes required"
    if len(present) == 1:
        return f"only one class ({labels}); at least {needed} required"
    return f"only {len(present)} classes ({labels}); at least {needed} required"


def _first(mask: pd.Series, column: pd.Series) -> tuple[Any, int, int]:
    bad = column[mask]
    position = int(mask.to_numpy().nonzero()[0][0])
    return bad.iloc[0], position + 1, len(bad)


def column_sentence(outcome: ExpectationOutcome, frame: pd.DataFrame, spec: DatasetSpec) -> str | None:
    """The sentence for a failed column-level expectation, located at its first bad row."""
    import pandas as pd

    name = outcome.column
    if name is None or name not in frame.columns:
        return None
    column = frame[name]
    kind = outcome.expectation
    if kind == "expect_column_values_to_not_be_null":
        mask = column.isna()
        if mask.any():
            _, row, count = _first(mask, column)
            return f"missing value in column {name} at row {row}{_more(count, 'this column')}"
    if kind == "expect_column_values_to_be_in_type_list":
        numeric = pd.to_numeric(column, errors="coerce")
        mask = column.notna() & numeric.isna()
        if mask.any():
            value, row, count = _first(mask, column)
            return f"non-numeric value {_value(value)} in column {name} at row {row}{_more(count, 'this column')}"
        fractional = numeric.notna() & (numeric % 1 != 0)
        if fractional.any():
            value, row, count = _first(fractional, column)
            return f"non-integer value {_value(value)} in column {name} at row {row}{_more(count, 'this column')}"
        if column.isna().any():
            return ""  # integers with gaps read as floats: the missing values are the problem, said already
    if kind == "expect_column_values_to_be_between":
        feature = spec.feature(name) if name in spec.feature_names else None
        low = feature.min if feature else None
        high = feature.max if feature else None
        numeric = pd.to_numeric(column, errors="coerce")
        mask = pd.Series(False, index=column.index)
        if low is not None:
            mask |= numeric < low
        if high is not None:
            mask |= numeric > high
        if mask.any():
            value, row, count = _first(mask, column)
            return (
                f"value {_value(value)} in column {name} at row {row} is outside {_value(low)}..{_value(high)}"
                f"{_more(count, 'this column')}"
            )
    if kind == "expect_column_values_to_be_in_set":
        if name == spec.target.name:
            allowed = list(spec.target.classes)
            what = "class"
        else:
            allowed = list(spec.feature(name).categories)
            what = "category"
        mask = column.notna() & ~column.isin(allowed)
        if mask.dtype == bool and mask.any():
            value, row, count = _first(mask, column)
            return (
                f"unknown {what} {_value(value)} in column {name} at row {row}; expected one of {allowed}"
                f"{_more(count, 'this column')}"
            )
    if kind == "expect_column_unique_value_count_to_be_between":
        present = sorted(column.dropna().unique().tolist(), key=str)
        return class_count_sentence(spec, present)
    return None


def parse_error_sentence(message: str) -> str:
    """pandas' tokenizer messages, said in terms of the file's lines."""
    import re

    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if fields:
        expected, line, seen = fields.groups()
        return f"line {line} has {seen} fields; the header has {expected}"
    quote = re.search(r"EOF inside string starting at row (\d+)", message)
    if quote:
        return f"a quote opened on line {int(quote.group(1)) + 1} is never closed"
    return f"not a well-formed CSV file: {message.strip()[:200]}"


def fallback_sentence(outcome: ExpectationOutcome) -> str:
    """A sentence for an outcome no rule above explains (never a bare exception text)."""
    where = f" on column {outcome.column}" if outcome.column else ""
    readable = outcome.expectation.removeprefix("expect_").replace("_", " ")
    if outcome.error:
        return f"the check '{readable}'{where} could not be evaluated ({outcome.error[:160]})"
    return f"the check '{readable}'{where} failed: expected {outcome.expected}, observed {outcome.observed}"


def row_count_sentence(rows: int, spec: DatasetSpec) -> str:
    low, high = spec.validation.min_rows, spec.validation.max_rows
    if rows < low:
        return f"only {rows} row(s); at least {low} required"
    return f"{rows} rows; at most {high} allowed"

"""The GX 1.x expectation suite generated from a dataset spec, and its report.

great_expectations is imported inside the functions: it takes seconds to
import and the code location must load fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ml_platform.spec import DatasetSpec
from ml_platform.validation.reader import BatchRead

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_ROWS = 5
_NUMERIC_TYPES = ["float64", "float32", "int64", "int32", "int16", "int8", "Float64", "Int64"]
_INTEGER_TYPES = ["int64", "int32", "int16", "int8", "Int64"]


@dataclass
class ExpectationOutcome:
    """One expectation's result, reduced to what a reviewer reads."""

    expectation: str
    column: str | None
    success: bool
    expected: str
    observed: Any = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample_values: list[Any] = field(default_factory=list)
    sample_rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class ValidationReport:
    """Everything known about one file's trip through the gate."""

    file: str
    sha256: str
    size_bytes: int
    rows: int
    success: bool
    parse_error: str | None
    hints: list[str]
    outcomes: list[ExpectationOutcome]
    suite: str

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def failing_rows(self) -> int:
        return sum(o.unexpected_count or 0 for o in self.failed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def summary(self) -> str:
        """One line: why the file was rejected (or that it passed)."""
        if self.success:
            return f"{self.file}: passed {len(self.outcomes)} expectations on {self.rows} rows"
        if self.parse_error:
            return f"{self.file}: rejected, {self.parse_error}"
        failed = sorted(self.failed, key=lambda o: o.column is not None)  # table-level first
        reasons = "; ".join(_describe(o) for o in failed[:3])
        more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
        hints = f" Hint: {'; '.join(self.hints)}." if self.hints else ""
        return f"{self.file}: rejected, {len(failed)} expectation(s) failed: {reasons}{more}.{hints}"

    def to_markdown(self) -> str:
        """The report as a markdown document (also used as Dagster metadata)."""
        lines = [
            f"### Validation of `{self.file}`: {'PASSED' if self.success else 'REJECTED'}",
            "",
            f"- suite: `{self.suite}`; rows: {self.rows}; bytes: {self.size_bytes}; sha256: `{self.sha256[:16]}`",
        ]
        if self.parse_error:
            lines.append(f"- **parse error**: {self.parse_error}")
        lines.extend(f"- hint: {hint}" for hint in self.hints)
        if self.outcomes:
            lines += [
                "",
                "| expectation | column | result | expected | observed / unexpected | sample |",
                "|---|---|---|---|---|---|",
            ]
            for o in self.outcomes:
                observed = (
                    f"{o.unexpected_count} rows ({(o.unexpected_percent or 0):.1f}%)"
                    if o.unexpected_count is not None
                    else _short(o.observed)
                )
                if o.error:
                    observed = f"error: {_short(o.error)}"
                sample = _short(o.sample_values) if o.sample_values else ""
                status = "pass" if o.success else "**FAIL**"
                lines.append(
                    f"| {o.expectation} | {o.column or ''} | {status} | {o.expected} | {observed} | {sample} |"
                )
        rows = [r for o in self.failed for r in o.sample_rows][:SAMPLE_ROWS]
        if rows:
            columns = list(rows[0].keys())
            lines += ["", "Sample failing rows:", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
            lines += ["| " + " | ".join(_short(r.get(c)) for c in columns) + " |" for r in rows]
        return "\n".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(outcome: ExpectationOutcome) -> str:
    where = f" on {outcome.column}" if outcome.column else ""
    if outcome.error:
        return f"{outcome.expectation}{where}: {_short(outcome.error, 120)}"
    if outcome.unexpected_count:
        examples = outcome.sample_values[:3]
        return f"{outcome.expectation}{where}: {outcome.unexpected_count} unexpected value(s), e.g. {examples}"
    return f"{outcome.expectation}{where}: expected {outcome.expected}, observed {_short(outcome.observed)}"


def suite_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_batch_suite"


def build_expectations(spec: DatasetSpec) -> list[tuple[Any, str]]:
    """GX expectation objects derived from the spec, each with a readable 'expected' text."""
    import great_expectations.expectations as gxe

    expectations: list[tuple[Any, str]] = [
        (
            gxe.ExpectTableColumnsToMatchSet(
                column_set=spec.columns, exact_match=not spec.validation.allow_extra_columns
            ),
            f"columns {spec.columns}",
        ),
        (
            gxe.ExpectTableRowCountToBeBetween(min_value=spec.validation.min_rows, max_value=spec.validation.max_rows),
            f"{spec.validation.min_rows}..{spec.validation.max_rows} rows",
        ),
    ]
    for feature in spec.features:
        expectations.append((gxe.ExpectColumnValuesToNotBeNull(column=feature.name), "no nulls"))
        if feature.is_numeric:
            types = _INTEGER_TYPES if feature.type == "int" else _NUMERIC_TYPES
            expectations.append(
                (gxe.ExpectColumnValuesToBeInTypeList(column=feature.name, type_list=types), f"{feature.type} values")
            )
            if feature.min is not None or feature.max is not None:
                expectations.append(
                    (
                        gxe.ExpectColumnValuesToBeBetween(
                            column=feature.name, min_value=feature.min, max_value=feature.max
                        ),
                        f"between {feature.min} and {feature.max}",
                    )
                )
        else:
            expectations.append(
                (
                    gxe.ExpectColumnValuesToBeInSet(column=feature.name, value_set=list(feature.categories)),
                    f"one of {list(feature.categories)}",
                )
            )
    target = spec.target
    expectations.append((gxe.ExpectColumnValuesToNotBeNull(column=target.name), "no nulls"))
    if all(isinstance(c, int) for c in target.classes):
        expectations.append(
            (gxe.ExpectColumnValuesToBeInTypeList(column=target.name, type_list=_INTEGER_TYPES), "integer class labels")
        )
    expectations.append(
        (
            gxe.ExpectColumnValuesToBeInSet(column=target.name, value_set=list(target.classes)),
            f"one of {list(target.classes)}",
        )
    )
    return expectations


def _run_suite(frame: pd.DataFrame, spec: DatasetSpec) -> list[ExpectationOutcome]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("landed")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name=suite_name(spec))
    expected_text: dict[tuple[str, str | None], str] = {}
    for expectation, expected in build_expectations(spec):
        suite.add_expectation(expectation)
        expected_text[(expectation.expectation_type, getattr(expectation, "column", None))] = expected
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS})
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        if config is None:  # GX always attaches it to suite results; guard for the type checker
            continue
        payload = item.result or {}
        column = config.kwargs.get("column")
        indexes = list(payload.get("partial_unexpected_index_list") or [])[:SAMPLE_ROWS]
        sample_rows = (
            json.loads(frame.loc[[i for i in indexes if i in frame.index]].to_json(orient="records")) if indexes else []
        )
        error = _exception_message(item.exception_info)
        outcomes.append(
            ExpectationOutcome(
                expectation=config.type,
                column=column,
                success=bool(item.success),
                expected=expected_text.get((config.type, column), ""),
                observed=payload.get("observed_value"),
                unexpected_count=payload.get("unexpected_count"),
                unexpected_percent=payload.get("unexpected_percent"),
                sample_values=list(payload.get("partial_unexpected_list") or [])[:SAMPLE_ROWS],
                sample_rows=sample_rows,
                error=error,
            )
        )
    return outcomes


def _exception_message(info: Any) -> str | None:
    """GX reports errors flat or nested per metric; return the first message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "expectation raised an exception")
    for nested in info.values():
        if isinstance(nested, dict) and nested.get("raised_exception"):
            return str(nested.get("exception_message") or "expectation raised an exception")
    return None


def validate_batch(batch: BatchRead, spec: DatasetSpec) -> ValidationReport:
    """Run the spec's suite on a read batch; a parse failure is a failed report."""
    outcomes: list[ExpectationOutcome] = []
    if batch.frame is not None:
        outcomes = _run_suite(batch.frame, spec)
    success = batch.error is None and all(o.success for o in outcomes)
    return ValidationReport(
        file=batch.path.name,
        sha256=batch.sha256,
        size_bytes=batch.size_bytes,
        rows=batch.rows,
        success=success,
        parse_error=batch.error,
        hints=batch.hints,
        outcomes=outcomes,
        suite=suite_name(spec),
    )

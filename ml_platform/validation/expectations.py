"""The GX 1.x expectation suite generated from a dataset spec, and its report.

great_expectations is imported inside the functions: it takes seconds to
import and the code location must load fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ml_platform.numeric_limits import numeric_bounds
from ml_platform.spec import DatasetSpec
from ml_platform.validation.problems import class_label, column_sentence, fallback_sentence, row_count_sentence
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
    """Everything known about one file's trip through the gate.

    ``problems`` leads: one plain sentence per problem ("missing column X"); the expectation
    outcomes below it are the detail.
    """

    file: str
    problems: list[str]
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
        return asdict(self)  # field order: file, problems, then the detail

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def summary(self) -> str:
        """One line: why the file was rejected (or that it passed)."""
        if self.success:
            return f"{self.file}: passed {len(self.outcomes)} expectations on {self.rows} rows"
        reasons = "; ".join(self.problems[:5])
        more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        hints = f" Hint: {'; '.join(self.hints)}." if self.hints else ""
        return f"{self.file}: rejected: {reasons}{more}.{hints}"

    def to_markdown(self) -> str:
        """The report as a markdown document (also used as Dagster metadata)."""
        lines = [f"### Validation of `{_short(self.file, 200)}`: {'PASSED' if self.success else 'REJECTED'}", ""]
        if self.problems:
            lines += [f"- **{_short(problem, 300)}**" for problem in self.problems] + [""]
        lines.append(
            f"- suite: `{self.suite}`; rows: {self.rows}; bytes: {self.size_bytes}; sha256: `{self.sha256[:16]}`"
        )
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


def suite_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_batch_suite"


def build_expectations(spec: DatasetSpec, present: list[str] | None = None) -> list[tuple[Any, str]]:
    """GX expectation objects derived from the spec, each with a readable 'expected' text.

    With ``present`` (the columns a file has), column expectations of missing columns are left
    out: their absence is already one "missing column" problem, not an error inside GX.
    """
    import great_expectations.expectations as gxe

    def has(column: str) -> bool:
        return present is None or column in present

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
        if not has(feature.name):
            continue
        expectations.append((gxe.ExpectColumnValuesToNotBeNull(column=feature.name), "no nulls"))
        if feature.is_numeric:
            types = _INTEGER_TYPES if feature.type == "int" else _NUMERIC_TYPES
            expectations.append(
                (gxe.ExpectColumnValuesToBeInTypeList(column=feature.name, type_list=types), f"{feature.type} values")
            )
            low, high = numeric_bounds(feature)  # the spec's range, never wider than float32 (or infinite)
            expectations.append(
                (
                    gxe.ExpectColumnValuesToBeBetween(column=feature.name, min_value=low, max_value=high),
                    f"between {feature.min} and {feature.max}"
                    if feature.min is not None and feature.max is not None
                    else f"between {low:g} and {high:g}",
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
    if not has(target.name):
        return expectations
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
    if spec.validation.min_classes > 1:
        expectations.append(
            (
                gxe.ExpectColumnUniqueValueCountToBeBetween(column=target.name, min_value=spec.validation.min_classes),
                f"at least {spec.validation.min_classes} classes",
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
    for expectation, expected in build_expectations(spec, present=list(frame.columns)):
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


def _rows_per_class(frame: pd.DataFrame, spec: DatasetSpec) -> ExpectationOutcome | None:
    """The per-class row minimum (``validation.min_rows_per_class``), a platform rule beside GX."""
    needed = spec.validation.min_rows_per_class
    if needed <= 1 or spec.target.name not in frame.columns:
        return None
    counts = frame[spec.target.name].dropna().value_counts()
    short = {class_label(spec, value): int(count) for value, count in counts.items() if count < needed}
    return ExpectationOutcome(
        expectation="min_rows_per_class",
        column=spec.target.name,
        success=not short,
        expected=f"at least {needed} rows of every class present",
        observed={class_label(spec, value): int(count) for value, count in counts.items()},
    )


def problem_sentences(batch: BatchRead, outcomes: list[ExpectationOutcome], spec: DatasetSpec) -> list[str]:
    """One plain sentence per problem, structural ones (parse errors, header) first."""
    problems = [batch.error] if batch.error else []
    problems += batch.header_problems
    frame = batch.frame
    explained = {o.column for o in outcomes if not o.success and not o.error and o.column}
    for outcome in outcomes:
        if outcome.success:
            continue
        if outcome.error and outcome.column in explained:
            continue  # e.g. a range check that cannot run on a non-numeric column: said once, above
        if outcome.expectation == "expect_table_columns_to_match_set" and batch.header_problems:
            continue  # already said column by column
        if outcome.expectation == "expect_table_row_count_to_be_between":
            problems.append(row_count_sentence(batch.rows, spec))
            continue
        if outcome.expectation == "min_rows_per_class":
            needed = spec.validation.min_rows_per_class
            problems += [
                f"class {label} has only {count} row(s); at least {needed} required"
                for label, count in (outcome.observed or {}).items()
                if count < needed
            ]
            continue
        sentence = None
        if frame is not None and not outcome.error:
            try:
                sentence = column_sentence(outcome, frame, spec)
            except (KeyError, TypeError, ValueError):
                sentence = None
        if sentence != "":
            problems.append(sentence or fallback_sentence(outcome))
    return list(dict.fromkeys(problems))


def validate_batch(batch: BatchRead, spec: DatasetSpec) -> ValidationReport:
    """Run the spec's suite on a read batch; a parse failure is a failed report."""
    outcomes: list[ExpectationOutcome] = []
    if batch.frame is not None:
        outcomes = _run_suite(batch.frame, spec)
        per_class = _rows_per_class(batch.frame, spec)
        if per_class is not None:
            outcomes.append(per_class)
    problems = problem_sentences(batch, outcomes, spec)
    if batch.frame is None and not problems:
        problems = ["the file could not be read as a table"]
    success = not problems and all(o.success for o in outcomes)
    return ValidationReport(
        file=batch.file_name,
        problems=problems,
        sha256=batch.sha256,
        size_bytes=batch.size_bytes,
        rows=batch.rows,
        success=success,
        parse_error=batch.error,
        hints=batch.hints,
        outcomes=outcomes,
        suite=suite_name(spec),
    )


def rejection_report(
    file: str, problems: list[str], spec: DatasetSpec, sha256: str = "", size_bytes: int = 0
) -> ValidationReport:
    """A report for an entry the gate refuses without reading it (a link, a FIFO, a bad name)."""
    return ValidationReport(
        file=file,
        problems=problems,
        sha256=sha256,
        size_bytes=size_bytes,
        rows=0,
        success=False,
        parse_error=None,
        hints=[],
        outcomes=[],
        suite=suite_name(spec),
    )
